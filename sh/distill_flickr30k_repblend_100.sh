#!/usr/bin/env bash
# RepBlend, Flickr30K, budget 100 (99 pairs + the low-rank S), as published. Needs the experts of sh/buffer_heads_flickr30k.sh.
# Extra arguments are overrides, e.g. --distill.metagrad exact --distill.iterations 100.
exec "$(dirname "$0")/launch.sh" distill.py configs/flickr30k/repblend_100.yaml "$@"
