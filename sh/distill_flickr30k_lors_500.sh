#!/usr/bin/env bash
# LoRS, Flickr30K, budget 500 (499 pairs), the published settings. Needs the experts of sh/buffer_flickr30k.sh.
# Extra arguments are overrides, e.g. --distill.metagrad exact --distill.iterations 100.
exec "$(dirname "$0")/launch.sh" distill.py configs/flickr30k/lors_500.yaml "$@"
