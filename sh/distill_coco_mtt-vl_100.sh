#!/usr/bin/env bash
# MTT-VL, COCO, 100 pairs: full unrolled meta-gradient, InfoNCE, S = I; the whole set in every step (published run). Needs the experts of sh/buffer_coco.sh.
# Extra arguments are overrides, e.g. --distill.metagrad exact --distill.iterations 100.
exec "$(dirname "$0")/launch.sh" distill.py configs/coco/mtt-vl_100.yaml "$@"
