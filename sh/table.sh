#!/usr/bin/env bash
# Reproduce docs/methods.md §8's table for one dataset: sh/table.sh flickr30k|coco (or sh/table_flickr30k.sh, sh/table_coco.sh).
# First `python -m data.prepare DATASET` checks the download (PREPARE_ARGS="--full-decode" to decode every image).
# Experts, the four coresets, MTT-VL, TESLA-VL, LoRS, CovMatch and MDM at each budget of BUDGETS (default "100 200 500 1000"), full
# data, then one table per budget with the published numbers alongside. Needs a GPU and the dataset (docs/data.md).
# MTT-VL and TESLA-VL use their published 100-pair settings at every budget; LoRS uses configs/<dataset>/lors_<budget>.yaml
# (lors_1000 is our extrapolation). EDGE=1 adds EDGE (sh/edge.sh; one fine-tuning for all budgets). Finished experts,
# distillations, fine-tuning and sampled images are kept when rerun. GPUS=N runs the experts, the distillations and the
# students of each budget's evaluation on N processes (torchrun; set distill.segments_per_iteration to a multiple of N
# in the configs, or pass it through DISTILL_ARGS, e.g. DISTILL_ARGS="--distill.segments_per_iteration 4").
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=$1
PY=${PYTHON:-python}
OUT=${OUT:-runs/$dataset/table}
BUDGETS=${BUDGETS:-"100 200 500 1000"}
configs=configs/$dataset
$PY -m data.prepare "$dataset" ${PREPARE_ARGS:-}  # the download checked before any compute (exit 1: fix it first)
sh/launch.sh buffer.py "$configs/buffer.yaml"
$PY evaluate.py --config "$configs/buffer.yaml" --full-data --out "$OUT/full_data.json"  # one student: one process
for budget in $BUDGETS; do
  sets=()
  for method in random herding k-center forgetting; do
    $PY coreset.py --config "$configs/buffer.yaml" --method $method --budget "$budget" --out "$OUT/${method}_$budget.safetensors"
    sets+=("$OUT/${method}_$budget.safetensors")
  done
  for method in mtt-vl tesla-vl; do
    sh/launch.sh distill.py "$configs/${method}_100.yaml" --distill.budget "$budget" --distill.out_dir "$OUT/${method}_$budget" \
      ${DISTILL_ARGS:-}
    sets+=("$OUT/${method}_$budget/distilled.safetensors")
  done
  sh/launch.sh distill.py "$configs/lors_$budget.yaml" --distill.out_dir "$OUT/lors_$budget" ${DISTILL_ARGS:-}
  sets+=("$OUT/lors_$budget/distilled.safetensors")
  for method in covmatch mdm; do  # trajectory-free: published settings at 100/200/500, the 500 ones beyond
    config=$configs/${method}_$budget.yaml
    [ -f "$config" ] || config=$configs/${method}_500.yaml
    sh/launch.sh distill.py "$config" --distill.budget "$budget" --distill.out_dir "$OUT/${method}_$budget" ${DISTILL_ARGS:-}
    sets+=("$OUT/${method}_$budget/distilled.safetensors")
  done
  if [ "${EDGE:-0}" = 1 ]; then  # needs Stable Diffusion v1.5, CLIP and LLaVA-1.5 locally (docs/edge.md)
    OUT=$OUT/edge EVALUATE=0 sh/edge.sh "$dataset" "$budget"
    sets+=("$OUT/edge/budget_$budget/distilled.safetensors")
  fi
  sh/launch.sh evaluate.py "$configs/buffer.yaml" --distilled "${sets[@]}" --out "$OUT/budget_$budget.json"
done
$PY report.py "$OUT"/*.json --protocol all --out "$OUT/report.md"
