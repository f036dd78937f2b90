#!/usr/bin/env bash
# The GPU rows of the benchmarks: bench/gpu.sh [metagrad|students|edge|trajectory-free|all] [OUT_DIR]  (one H100 or H200)
# Each table is printed and saved to OUT_DIR (default runs/bench-gpu). Random-init NFNet-l0, BERT-base and SD-1.5
# have the true shapes, so no weights or data are needed, except by `students` (the Flickr30K images and BERT) and
# `edge` (the MiniLM package's tokenizer). Each part fits in one 10-minute device call.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
part=${1:-all}
out=${2:-runs/bench-gpu}
mkdir -p "$out"
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
if [ "$part" = metagrad ] || [ "$part" = all ]; then  # tesla / exact × checkpointing off / on, fp32 and bf16
  for budget in 100 500; do
    for precision in fp32 bf16; do
      $PY bench/metagrad.py --config "configs/flickr30k/lors_$budget.yaml" --steps 8 --modes tesla exact \
        --iterations 3 --warmup 1 --checkpointing off on --distill.precision "$precision" \
        | tee "$out/metagrad_lors_${budget}_$precision.txt"
    done
  done
fi
if [ "$part" = students ] || [ "$part" = all ]; then  # does evaluate.together pay off on a GPU?
  $PY bench/students.py --config configs/flickr30k/buffer.yaml --pairs 100 --students 5 | tee "$out/students.txt"
fi
if [ "$part" = edge ] || [ "$part" = all ]; then
  $PY bench/edge.py --sd15 --batch 1 --steps 3 --images 1 | tee "$out/edge_sd15.txt"
fi
if [ "$part" = trajectory-free ] || [ "$part" = all ]; then  # CovMatch and MDM at the published Flickr30K shapes
  for config in covmatch_100 mdm_100 covmatch_500 mdm_500; do
    $PY bench/trajectory_free.py --config "configs/flickr30k/$config.yaml" --iterations 5 --warmup 2 \
      | tee "$out/trajectory_free_$config.txt"
  done
fi
