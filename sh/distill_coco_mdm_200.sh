#!/usr/bin/env bash
# MDM, COCO, budget 200, published settings (docs/methods.md §4b). Needs the experts of sh/buffer_coco.sh.
# Extra arguments are overrides, e.g. --distill.iterations 100.
exec "$(dirname "$0")/launch.sh" distill.py configs/coco/mdm_200.yaml "$@"
