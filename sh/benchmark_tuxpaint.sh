#!/usr/bin/env bash
# The Tux Paint benchmark (README, "Tux Paint benchmark"): random, herding, k-center and forgetting coresets,
# MTT-VL, TESLA-VL, LoRS with `tesla` and with `exact` meta-gradients, at each budget of BUDGETS (default "10 50"),
# 3 students each; full data once; each method's undistilled starting point as a control; then one table per
# budget. CPU only, about 80 min on 2 cores (nothing else running: two jobs on 2 cores slow each other ~10x).
# Needs the demo data (`make data`); the experts of configs/tuxpaint/buffer.yaml are trained if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/tuxpaint/bench}
BUDGETS=${BUDGETS:-"10 50"}
export HF_HUB_OFFLINE=1
base=configs/tuxpaint/buffer.yaml
distill() {  # name config budget [overrides…]
  local name=$1 config=$2 budget=$3
  shift 3
  $PY distill.py --config "configs/tuxpaint/$config" --distill.budget "$budget" --distill.out_dir "$OUT/${name}_$budget" "$@"
}
$PY buffer.py --config $base
$PY evaluate.py --config $base --full-data --out "$OUT/full_data.json"
for budget in $BUDGETS; do
  sets=()
  for method in random herding k-center forgetting; do
    $PY coreset.py --config $base --method $method --budget "$budget" --out "$OUT/${method}_$budget.safetensors"
    sets+=("$OUT/${method}_$budget.safetensors")
  done
  distill mtt-vl mtt-vl.yaml "$budget"
  distill tesla-vl tesla-vl.yaml "$budget"
  distill lors-tesla lors.yaml "$budget" --distill.metagrad tesla
  distill lors-exact lors.yaml "$budget" --distill.metagrad exact
  for name in mtt-vl tesla-vl lors-tesla lors-exact; do
    sets+=("$OUT/${name}_$budget/distilled.safetensors")
  done
  $PY evaluate.py --config configs/tuxpaint/lors.yaml --distilled "${sets[@]}" --out "$OUT/budget_$budget.json"
  # controls: each method's starting point (its random real pairs, trained with its own loss and initial lr)
  distill lors-start lors.yaml "$budget" --distill.iterations 0
  distill mtt-vl-start mtt-vl.yaml "$budget" --distill.iterations 0
  $PY evaluate.py --config configs/tuxpaint/lors.yaml --out "$OUT/controls_$budget.json" \
    --distilled "$OUT/lors-start_$budget/distilled.safetensors" "$OUT/mtt-vl-start_$budget/distilled.safetensors"
done
$PY -m utils.report "$OUT"/*.json --out "$OUT/report.md"
