#!/usr/bin/env bash
# TESLA-VL, Flickr30K, 100 pairs: MTT-VL with the TESLA constant-memory surrogate gradient. Needs the experts of sh/buffer_flickr30k.sh.
# Extra arguments are overrides, e.g. --distill.metagrad exact --distill.iterations 100.
exec "$(dirname "$0")/launch.sh" distill.py configs/flickr30k/tesla-vl_100.yaml "$@"
