#!/usr/bin/env bash
# EDGE, COCO, budget 500 (250 images × 2 captions): finetune → sample → caption → export → evaluate (sh/edge.sh).
exec "$(dirname "$0")/edge.sh" coco 500 "$@"
