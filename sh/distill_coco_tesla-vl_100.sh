#!/usr/bin/env bash
# TESLA-VL, COCO, 100 pairs: MTT-VL with the TESLA constant-memory surrogate gradient. Needs the experts of sh/buffer_coco.sh.
# Extra arguments are overrides, e.g. --distill.metagrad exact --distill.iterations 100.
exec "$(dirname "$0")/launch.sh" distill.py configs/coco/tesla-vl_100.yaml "$@"
