#!/usr/bin/env bash
# CovMatch, Flickr30K, budget 200, published settings (docs/methods.md §4b). No experts.
# Extra arguments are overrides, e.g. --distill.iterations 100.
exec "$(dirname "$0")/launch.sh" distill.py configs/flickr30k/covmatch_200.yaml "$@"
