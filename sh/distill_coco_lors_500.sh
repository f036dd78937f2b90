#!/usr/bin/env bash
# LoRS, COCO, budget 500 (499 pairs), as published. Needs the experts of sh/buffer_coco.sh.
# Extra arguments are overrides, e.g. --distill.metagrad exact --distill.iterations 100.
exec "$(dirname "$0")/launch.sh" distill.py configs/coco/lors_500.yaml "$@"
