#!/usr/bin/env bash
# Short runs of every method and their content hashes (bench/fingerprint.py), to compare two versions of the code
# on one machine: run after `make demo` (it reuses the demo's experts), in each checkout, and diff the outputs.
#   OMP_NUM_THREADS=2 bench/fingerprints.sh > fingerprints.txt
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=runs/fingerprint
rm -rf "$OUT"
short="--distill.iterations 3 --distill.checkpoint_every 2"
for method in mtt-vl tesla-vl; do
  $PY distill.py --config configs/tuxpaint/$method.yaml $short --distill.out_dir $OUT/$method >/dev/null 2>&1
done
$PY buffer.py --config configs/tuxpaint/buffer_heads.yaml --buffer.num_experts 1 --buffer.epochs 3 \
  --buffer.eval_every 0 --buffer.out_dir $OUT/buffer_heads >/dev/null 2>&1
$PY distill.py --config configs/tuxpaint/repblend.yaml $short --buffer.out_dir $OUT/buffer_heads \
  --buffer.num_experts 1 --buffer.epochs 3 --buffer.eval_every 0 --distill.max_start_epoch 2 \
  --distill.out_dir $OUT/repblend >/dev/null 2>&1
$PY coreset.py --config configs/tuxpaint/buffer.yaml --method herding --budget 20 --out $OUT/herding_20.safetensors >/dev/null 2>&1
$PY evaluate.py --config configs/tuxpaint/lors.yaml --evaluate.students 1 --evaluate.epochs 4 \
  --evaluate.checkpoint_every 2 --distilled $OUT/mtt-vl/distilled.safetensors $OUT/herding_20.safetensors \
  --out $OUT/results.json >/dev/null 2>&1
[ -f runs/tuxpaint/tiny-edge/generator/unet/config.json ] || $PY -m networks.tiny runs/tuxpaint/tiny-edge >/dev/null 2>&1
edge="--edge.out_dir $OUT/edge --edge.budget 8 --edge.steps 2 --edge.batch_size 8 --edge.epochs 1 --edge.checkpoint_every 1000"
for step in finetune sample caption export; do
  $PY generate.py $step --config configs/tuxpaint/edge.yaml $edge >/dev/null 2>&1
done
$PY bench/fingerprint.py runs/tuxpaint/buffer/expert_000.safetensors runs/tuxpaint/lors_50/distilled.safetensors \
  runs/tuxpaint/random_50.safetensors runs/tuxpaint/demo_results.json $OUT/mtt-vl/distilled.safetensors \
  $OUT/mtt-vl/checkpoint.safetensors $OUT/tesla-vl/distilled.safetensors $OUT/buffer_heads/expert_000.safetensors \
  $OUT/repblend/distilled.safetensors $OUT/herding_20.safetensors $OUT/results.json $OUT/edge/budget_8/distilled.safetensors
