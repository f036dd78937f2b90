#!/usr/bin/env bash
# docs/methods.md §8's COCO table: every method and budget (sh/table.sh). Needs a GPU and the dataset.
exec "$(dirname "$0")/table.sh" coco "$@"
