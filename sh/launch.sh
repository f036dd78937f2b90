#!/usr/bin/env bash
# Shared by the sh/ scripts: run ENTRY.py with a config and overrides; GPUS=N runs it under torchrun on N processes.
set -euo pipefail
cd "$(dirname "$0")/.."
entry=$1 config=$2
shift 2
GPUS=${GPUS:-1}
if [ "$GPUS" -gt 1 ]; then
  exec torchrun --nproc-per-node "$GPUS" "$entry" --config "$config" "$@"
fi
exec "${PYTHON:-python}" "$entry" --config "$config" "$@"
