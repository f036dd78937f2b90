#!/usr/bin/env bash
# The Tux Paint benchmark (docs/tuxpaint.md, "Tux Paint benchmark"): random, herding, k-center and forgetting coresets,
# MTT-VL, TESLA-VL, LoRS (`exact`) and RepBlend (projection heads), CovMatch and MDM (statistics matching; each also
# timed: OUT/<method>_<budget>.time) at each budget of BUDGETS (default "10 50"),
# STUDENTS students each (default 5); each distillation's starting point as a control; full data (both student
# kinds, FULL_EPOCHS epochs, checkpoint chosen on val); then one table per budget (OUT/report.md) and a plot of
# recall against budget (OUT/report.png).
# Coresets and controls carry no learned lr: theirs is chosen on val from GRID (evaluate.lr_grid); each control is
# also trained at the learned lrs of its distilled set.
# Every result is its own JSON in OUT and is kept when the script is rerun, so an interrupted run resumes, and
# parts can run side by side once the experts exist (`BUDGETS= sh/benchmark_tuxpaint.sh` trains them), e.g.
# `BUDGETS=10 sh/benchmark_tuxpaint.sh & BUDGETS=50 ROWS="lors repblend" sh/benchmark_tuxpaint.sh &`.
# Needs the demo data (`make data`) and GNU time (/usr/bin/time); the experts of configs/tuxpaint/buffer{,_heads}.yaml
# are trained if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/tuxpaint/bench}
BUDGETS=${BUDGETS-"10 50"}  # set and empty: only the experts and full data
STUDENTS=${STUDENTS:-5}
GRID=${GRID:-"[0.01, 0.03, 0.1]"}
ROWS=${ROWS:-"random herding k-center forgetting mtt-vl tesla-vl lors repblend covmatch mdm"}  # methods (and controls)
FULL_EPOCHS=${FULL_EPOCHS:-12}
export HF_HUB_OFFLINE=1
full=configs/tuxpaint/buffer.yaml
heads=configs/tuxpaint/buffer_heads.yaml
mkdir -p "$OUT"

evaluate() {  # result.json config [evaluate.py arguments…]; skipped when the result exists
  local out=$OUT/$1 config=$2
  shift 2
  [ -f "$out" ] || $PY evaluate.py --config "$config" --evaluate.students "$STUDENTS" --evaluate.lr_grid "$GRID" \
    --out "$out" "$@"
}
distill() {  # name config budget [overrides…]: the distilled set OUT/name_budget/distilled.safetensors
  local name=$1 config=$2 budget=$3
  shift 3
  $PY distill.py --config "configs/tuxpaint/$config" --distill.budget "$budget" --distill.out_dir "$OUT/${name}_$budget" "$@"
}

$PY buffer.py --config $full
$PY buffer.py --config $heads
evaluate full_data.json $full --full-data --buffer.epochs "$FULL_EPOCHS"
evaluate full_data_heads.json $heads --full-data --buffer.epochs "$FULL_EPOCHS"
for budget in $BUDGETS; do
  for method in random herding k-center forgetting; do
    case " $ROWS " in *" $method "*) ;; *) continue ;; esac
    set_=$OUT/${method}_$budget.safetensors
    [ -f "$set_" ] || $PY coreset.py --config $full --method $method --budget "$budget" --out "$set_"
    evaluate "${method}_$budget.json" $full --distilled "$set_"
  done
  # each distillation, then its starting point as a control (its random real pairs, loss and S; lr chosen on val)
  for method in mtt-vl tesla-vl lors repblend; do
    case " $ROWS " in *" $method "*) ;; *) continue ;; esac
    config=configs/tuxpaint/$method.yaml
    [ $method = repblend ] || config=configs/tuxpaint/lors.yaml  # full-tower students: one config for all
    if ! distill "$method" "$method.yaml" "$budget"; then  # e.g. a learned lr below zero: say so, go on
      echo "benchmark: $method at budget $budget stopped (its message is above); no row for it" >&2
      continue
    fi
    evaluate "${method}_$budget.json" $config --distilled "$OUT/${method}_$budget/distilled.safetensors"
    if [ $method = tesla-vl ]; then continue; fi  # its starting point is MTT-VL's (same pairs, InfoNCE, S = I)
    distill "$method-start" "$method.yaml" "$budget" --distill.iterations 0
    start=$OUT/${method}-start_$budget/distilled.safetensors
    evaluate "${method}-start_$budget.json" $config --distilled "$start"
    # and at the distilled set's learned lrs (per tower), so that a gain cannot come from the lrs alone
    learned=$($PY -c "from artefacts.distilled import load_distilled
lrs = load_distilled('$OUT/${method}_$budget/distilled.safetensors').lrs
print('[{image: %r, text: %r}]' % (lrs['image'], lrs['text']))")
    evaluate "${method}-start-learned-lr_$budget.json" $config --distilled "$start" --evaluate.lr_grid "$learned"
  done
  # statistics matching: no learned lr, so the set and its starting point (distill.init) both get theirs on val
  for method in covmatch mdm; do
    case " $ROWS " in *" $method "*) ;; *) continue ;; esac
    [ -f "$OUT/${method}_$budget/distilled.safetensors" ] || \
      { /usr/bin/time -f "%e s wall, %U+%S s CPU, %M KB peak" -o "$OUT/${method}_$budget.time" \
          $PY distill.py --config "configs/tuxpaint/$method.yaml" --distill.budget "$budget" \
          --distill.out_dir "$OUT/${method}_$budget"; }
    evaluate "${method}_$budget.json" configs/tuxpaint/$method.yaml --distilled "$OUT/${method}_$budget/distilled.safetensors"
    distill "$method-start" "$method.yaml" "$budget" --distill.iterations 0
    evaluate "${method}-start_$budget.json" configs/tuxpaint/$method.yaml \
      --distilled "$OUT/${method}-start_$budget/distilled.safetensors"
  done
done
$PY report.py "$OUT"/*.json --protocol all --out "$OUT/report.md" --plot "$OUT/report.png"
