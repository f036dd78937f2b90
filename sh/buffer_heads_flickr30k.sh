#!/usr/bin/env bash
# RepBlend's experts for flickr30k: frozen NFNet-l0 backbone, image + text projection heads, 20 experts × 10 epochs, 224 px.
# GPUS=4 sh/buffer_heads_flickr30k.sh spreads the experts over 4 GPUs; extra arguments are overrides (--buffer.epochs 4).
exec "$(dirname "$0")/launch.sh" buffer.py configs/flickr30k/buffer_heads.yaml "$@"
