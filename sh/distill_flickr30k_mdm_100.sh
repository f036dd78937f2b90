#!/usr/bin/env bash
# MDM, Flickr30K, budget 100, published settings (docs/methods.md §4b). Needs the experts of sh/buffer_flickr30k.sh.
# Extra arguments are overrides, e.g. --distill.iterations 100.
exec "$(dirname "$0")/launch.sh" distill.py configs/flickr30k/mdm_100.yaml "$@"
