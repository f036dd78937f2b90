#!/usr/bin/env bash
# LoRS, COCO, budget 1000 (999 pairs). Needs the experts of sh/buffer_coco.sh.
# Extra arguments are overrides, e.g. --distill.metagrad exact --distill.iterations 100.
exec "$(dirname "$0")/launch.sh" distill.py configs/coco/lors_1000.yaml "$@"
