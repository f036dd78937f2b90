#!/usr/bin/env bash
# Expert trajectories for flickr30k (METHOD §3). GPUS=4 sh/buffer_flickr30k.sh spreads the experts over 4 GPUs.
# Extra arguments are config overrides, e.g. --buffer.epochs 3.
set -euo pipefail
cd "$(dirname "$0")/.."
GPUS=${GPUS:-1}
if [ "$GPUS" -gt 1 ]; then
  exec torchrun --nproc-per-node "$GPUS" buffer.py --config configs/flickr30k/buffer.yaml "$@"
fi
exec python buffer.py --config configs/flickr30k/buffer.yaml "$@"
