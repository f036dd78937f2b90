#!/usr/bin/env bash
# Expert recipes on Tux Paint (docs/tuxpaint.md, "Expert recipes"): for each recipe, 3 experts × 8 epochs, the buffer
# diagnostic (python -m training.trajectories), one full-data student scored on val and test after every epoch; then
# LoRS / RepBlend distillations (budget 50, 3 students) on the two recipes the demo chose between, each beside its
# iteration-0 control. Results in OUT (default runs/recipes); finished steps are kept when rerun. About 1 h on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
OUT=${OUT:-runs/recipes}
export HF_HUB_OFFLINE=1
mkdir -p "$OUT"

recipe() {  # name config batch lr_image lr_text momentum augment image_size [more overrides…]
  local name=$1 config=$2
  local keys=(--buffer.epochs 8 --buffer.batch_size "$3" --buffer.lr_image "$4" --buffer.lr_text "$5"
              --buffer.momentum "$6" --buffer.augment "$7" --data.image_size "$8" "${@:9}")
  $PY buffer.py --config "$config" --buffer.out_dir "$OUT/$name" --buffer.eval_every 0 "${keys[@]}"
  $PY -m training.trajectories "$OUT/$name" --json "$OUT/$name.stats.json"
  [ -f "$OUT/$name.full.json" ] || $PY evaluate.py --config "$config" --full-data --out "$OUT/$name.full.json" "${keys[@]}"
}
full=configs/tuxpaint/buffer.yaml
recipe A_published_b32_crop $full 32 0.1 0.1 0 true 32
recipe B_b32_lri001 $full 32 0.01 0.1 0 false 32
recipe C_b128_lri001 $full 128 0.01 0.1 0 false 32
recipe D_fullbatch_lri001 $full 689 0.01 0.1 0 false 32
recipe E_b32_momentum $full 32 0.001 0.01 0.9 false 32
recipe F_64px_lri001 $full 32 0.01 0.1 0 false 64
recipe H_heads configs/tuxpaint/buffer_heads.yaml 32 0.1 0.1 0 false 32
# B with the public code's details (recipe: reference; docs/differences.md), one at a time, then all
recipe B_dropout_m1 $full 32 0.01 0.1 0 false 32 --buffer.text_encoder_dropout true --buffer.text_feature_samples 1
recipe B_dropout_m5 $full 32 0.01 0.1 0 false 32 --buffer.text_encoder_dropout true --buffer.text_feature_samples 5
recipe B_clip_stats $full 32 0.01 0.1 0 false 32 --data.pixel_stats clip
recipe B_reference $full 32 0.01 0.1 0 false 32 --recipe reference
recipe A_reference $full 32 0.1 0.1 0 true 32 --recipe reference   # published lrs, crops + RandomAugment

trial() {  # name config recipe [distill overrides…]: distil at budget 50 from that recipe's experts, 3 students
  local name=$1 config=$2 buffer=$3
  shift 3
  local keys=(--buffer.out_dir "$OUT/$buffer" --buffer.epochs 8 --distill.budget 50 --distill.out_dir "$OUT/trials/$name"
              --distill.expert_epochs 1 --distill.max_start_epoch 3 --evaluate.students 3)
  case $buffer in
    B_*) keys+=(--buffer.lr_image 0.01 --buffer.lr_text 0.1 --buffer.augment false) ;;
    H_*) keys+=(--buffer.lr_image 0.1 --buffer.lr_text 0.1 --buffer.augment false) ;;
  esac
  $PY distill.py --config "$config" "${keys[@]}" "$@"
  [ -f "$OUT/trials/$name.json" ] || $PY evaluate.py --config "$config" "${keys[@]}" "$@" \
    --distilled "$OUT/trials/$name/distilled.safetensors" --out "$OUT/trials/$name.json"
}
lors=configs/tuxpaint/lors.yaml
repblend=configs/tuxpaint/repblend.yaml
slow=(--distill.lr_image 3 --distill.lr_text 0.3 --distill.lr_lr 1e-5 --distill.iterations 50)
trial B_lors_start $lors B_b32_lri001 --distill.iterations 0
trial B_lors_slow $lors B_b32_lri001 "${slow[@]}"
trial B_lors_demo $lors B_b32_lri001   # the demo's lors.yaml: lr_image 30, lr_text 3, lr_lr 1e-4, 100 iterations
trial H_repblend_start $repblend H_heads --distill.iterations 0
trial H_repblend_slow $repblend H_heads "${slow[@]}"
trial H_repblend_demo $repblend H_heads  # repblend.yaml: lr_image 30, lr_text 3, 50 iterations
trial H_repblend_fast $repblend H_heads --distill.lr_teacher 0.1 --distill.lr_lr 1e-3 --distill.iterations 100
