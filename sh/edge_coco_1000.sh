#!/usr/bin/env bash
# EDGE, COCO, budget 1000 (500 images × 2 captions): finetune → sample → caption → export → evaluate (sh/edge.sh).
exec "$(dirname "$0")/edge.sh" coco 1000 "$@"
