#!/usr/bin/env bash
# LoRS, COCO, budget 100 (99 pairs + the low-rank S), as published (docs/methods.md §4 table). Needs the experts of sh/buffer_coco.sh.
# Extra arguments are overrides, e.g. --distill.metagrad exact --distill.iterations 100.
exec "$(dirname "$0")/launch.sh" distill.py configs/coco/lors_100.yaml "$@"
