"""Coreset baselines (METHOD §6): a distilled-set file of N real training pairs, S = I.

    python coreset.py --config configs/tuxpaint/buffer.yaml --method random --budget 49 --out runs/tuxpaint/random_49.safetensors
"""
from pathlib import Path

from data.distilled import random_pairs, real_pairs, save_distilled
from utils.config import parse_args
from utils.context import RunContext

METHODS = ("random",)


def _flags(parser):
    parser.add_argument("--method", choices=METHODS, default="random")
    parser.add_argument("--budget", type=int, required=True, help="number of real pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="distilled-set file to write")


def select_random(ctx, budget, seed):
    available = len(ctx.splits["train"].captions)
    if not 1 <= budget <= available:
        raise SystemExit(f"--budget {budget}: the training split has {available} pairs")
    return random_pairs(ctx.splits["train"], budget, seed)


def main(argv=None):
    cfg, args = parse_args(argv, description=__doc__, extra=_flags)
    ctx = RunContext(cfg, splits=("train",))
    picks = select_random(ctx, args.budget, args.seed)
    meta = {**ctx.artefact_identity(), "method": args.method, "loss": "infonce", "budget": args.budget,
            "seed": args.seed, "config": cfg}
    save_distilled(args.out, real_pairs(ctx.splits["train"], ctx.features["train"], ctx.test_transform, picks, meta))
    print(f"{args.method} coreset of {args.budget} pairs written to {args.out}")


if __name__ == "__main__":
    main()
