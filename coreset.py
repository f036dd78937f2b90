"""Coreset baselines (METHOD §6): a distilled-set file of N real training pairs (S = I), evaluated like
every other method.

    python coreset.py --config configs/tuxpaint/buffer.yaml --method herding --budget 50 --out runs/tuxpaint/herding_50.safetensors

- random: N pairs drawn with --seed (the same draw as distillation's initial set);
- herding, k-center: on the joint (image, text) embeddings of an expert snapshot (--expert, --expert-epoch);
- forgetting: replays expert 0's training (buffer.* recipe and seed), counting per pair how often it was
  forgotten (utils/selection.py), and keeps the N forgotten most often.
"""
import math
from pathlib import Path

import torch

from data.distilled import random_pairs, real_pairs, save_distilled
from utils.cli import run
from utils.config import parse_args
from utils.context import RunContext
from utils.experts import expert_seed, expert_students, fit_expert
from utils.selection import ForgettingCounter, herding, k_center, pairs_right
from utils.trajectories import expert_path
from utils.training import encode_split

METHODS = ("random", "herding", "k-center", "forgetting")


def _flags(parser):
    parser.add_argument("--method", choices=METHODS, default="random")
    parser.add_argument("--budget", type=int, required=True, help="number of real pairs")
    parser.add_argument("--seed", type=int, default=0, help="random draw, k-center's first pick, forgetting's ties")
    parser.add_argument("--expert", type=Path,
                        help="expert file whose embeddings herding/k-center use (default: expert 0 of buffer.out_dir)")
    parser.add_argument("--expert-epoch", type=int, help="its snapshot (default: the last)")
    parser.add_argument("--out", type=Path, required=True, help="distilled-set file to write")


def joint_embeddings(ctx, student):
    """One row per training pair (caption): its image's and its caption's normalised embeddings, side by side."""
    train = ctx.splits["train"]
    images, texts = encode_split(student, train, ctx.features["train"], ctx.test_transform, ctx.device,
                                 image_cache=ctx.image_cache)
    return torch.cat([images[torch.as_tensor(train.caption_image)], texts], dim=1).cpu() / math.sqrt(2)


def forgetting_counts(ctx):
    """Forgetting events of every training pair over a replay of expert 0's training."""
    counter = ForgettingCounter(len(ctx.splits["train"].captions))
    seed = expert_seed(ctx.cfg["buffer"].get("seed", 0), 0)
    fit_expert(ctx, seed, lambda *_: None, name="forgetting run",
               on_batch=lambda captions, logits: counter.update(captions, pairs_right(logits)))
    return counter


def select(ctx, method, budget, seed, expert=None, expert_epoch=None):
    """(caption indices of the chosen pairs, what to record about the choice)."""
    available = len(ctx.splits["train"].captions)
    if not 1 <= budget <= available:
        raise SystemExit(f"--budget {budget}: the training split has {available} pairs; choose 1 to {available}")
    if method == "random":
        return random_pairs(ctx.splits["train"], budget, seed), {}
    if method == "forgetting":
        return forgetting_counts(ctx).most_forgotten(budget, seed), {"expert_seed": expert_seed(
            ctx.cfg["buffer"].get("seed", 0), 0)}
    expert = expert or expert_path(ctx.cfg["buffer"]["out_dir"], 0)
    students, meta = expert_students(ctx, expert, None if expert_epoch is None else [expert_epoch])
    epoch, student = students[-1]
    features = joint_embeddings(ctx, student)
    picks = herding(features, budget) if method == "herding" else k_center(features, budget, seed)
    return picks, {"expert": str(expert), "expert_epoch": epoch}


def main(argv=None):
    cfg, args = parse_args(argv, description=__doc__, extra=_flags)
    ctx = RunContext(cfg, splits=("train",))
    picks, provenance = select(ctx, args.method, args.budget, args.seed, args.expert, args.expert_epoch)
    meta = {**ctx.artefact_identity(), "method": args.method, "loss": "infonce", "budget": args.budget,
            "seed": args.seed, **provenance, "config": cfg}
    save_distilled(args.out, real_pairs(ctx.splits["train"], ctx.features["train"], ctx.test_transform, picks, meta))
    print(f"{args.method} coreset of {args.budget} pairs written to {args.out}")


if __name__ == "__main__":
    run(main)
