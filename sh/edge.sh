#!/usr/bin/env bash
# EDGE end to end for one dataset and budget: sh/edge.sh flickr30k|coco|tuxpaint BUDGET [overrides…].
# Fine-tuning (GPUS=N: torchrun DDP) is shared by every budget of OUT and resumes; sampling keeps finished images.
set -euo pipefail
cd "$(dirname "$0")/.."
dataset=$1 budget=$2
shift 2
PY=${PYTHON:-python}
OUT=${OUT:-runs/$dataset/edge}
config=configs/$dataset/edge.yaml
sh/launch.sh generate.py "$config" finetune --edge.out_dir "$OUT" "$@"
for step in sample caption export; do
  $PY generate.py "$step" --config "$config" --edge.out_dir "$OUT" --edge.budget "$budget" "$@"
done
if [ "${EVALUATE:-1}" = 1 ]; then  # sh/table.sh evaluates the set with the other methods of its budget instead
  $PY evaluate.py --config "$config" --distilled "$OUT/budget_$budget/distilled.safetensors" \
    --out "$OUT/budget_$budget/results.json" "$@"
fi
