#!/usr/bin/env bash
# EDGE, Flickr30K, budget 100 (50 images × 2 captions): finetune → sample → caption → export → evaluate (sh/edge.sh).
exec "$(dirname "$0")/edge.sh" flickr30k 100 "$@"
