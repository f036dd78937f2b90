#!/usr/bin/env bash
# Expert trajectories for coco (docs/methods.md §3): 20 experts × 10 epochs, NFNet-l0 + BERT-base, 224 px.
# GPUS=4 sh/buffer_coco.sh spreads the experts over 4 GPUs; extra arguments are overrides (--buffer.epochs 3).
exec "$(dirname "$0")/launch.sh" buffer.py configs/coco/buffer.yaml "$@"
