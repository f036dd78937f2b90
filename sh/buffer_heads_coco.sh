#!/usr/bin/env bash
# RepBlend's experts for coco: frozen NFNet-l0 backbone, image + text projection heads, 20 experts × 10 epochs, 224 px.
# GPUS=4 sh/buffer_heads_coco.sh spreads the experts over 4 GPUs; extra arguments are overrides (--buffer.epochs 4).
exec "$(dirname "$0")/launch.sh" buffer.py configs/coco/buffer_heads.yaml "$@"
