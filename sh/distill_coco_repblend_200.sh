#!/usr/bin/env bash
# RepBlend, COCO, budget 200 (199 pairs + the low-rank S), as published. Needs the experts of sh/buffer_heads_coco.sh.
# Extra arguments are overrides, e.g. --distill.metagrad exact --distill.iterations 100.
exec "$(dirname "$0")/launch.sh" distill.py configs/coco/repblend_200.yaml "$@"
