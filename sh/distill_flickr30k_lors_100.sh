#!/usr/bin/env bash
# LoRS, Flickr30K, budget 100 (99 pairs + the low-rank S), as published (docs/methods.md §4 table). Needs the experts of sh/buffer_flickr30k.sh.
# Extra arguments are overrides, e.g. --distill.metagrad exact --distill.iterations 100.
exec "$(dirname "$0")/launch.sh" distill.py configs/flickr30k/lors_100.yaml "$@"
