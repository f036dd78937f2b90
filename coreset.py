"""Coreset baselines (docs/methods.md §6): a distilled-set file of N real training pairs (S = I),
evaluated like every other method.

    python coreset.py --config configs/tuxpaint/buffer.yaml --method herding --budget 50 --out runs/tuxpaint/herding_50.safetensors

- random: N pairs drawn with --seed (the same draw as distillation's initial set);
- herding, k-center, k-means: on the joint (image, text) embeddings of an expert snapshot (--expert, --expert-epoch);
- forgetting: replays expert 0's training (buffer.* recipe and seed), counting per pair how often it was
  forgotten, and keeps the N forgotten most often (methods/coresets.py).
"""
from pathlib import Path

from artefacts.distilled import save_distilled
from artefacts.pairs import real_pairs
from common.cli import run
from common.config import parse_args
from common.io import check_output
from data.annotations import annotation_files
from methods import method_keys
from methods.coresets import CORESETS, select
from training.context import RunContext


def _flags(parser):
    parser.add_argument("--method", choices=CORESETS, default="random")
    parser.add_argument("--budget", type=int, required=True, help="number of real pairs")
    parser.add_argument("--seed", type=int, default=0, help="random draw, k-center's first pick, forgetting's ties")
    parser.add_argument("--expert", type=Path,
                        help="expert file whose embeddings herding/k-center/k-means use (default: expert 0 of buffer.out_dir)")
    parser.add_argument("--expert-epoch", type=int, help="its snapshot (default: the last)")
    parser.add_argument("--out", type=Path, required=True, help="distilled-set file to write (a new one)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def main(argv=None):
    cfg, args = parse_args(argv, description=__doc__, extra=_flags, reads=("data", "model", "buffer"),
                           method_keys=method_keys())
    check_output(args.out, [cfg["buffer"]["out_dir"], *[args.expert] * bool(args.expert), *annotation_files(cfg["data"])],
                 overwrite=args.overwrite)
    ctx = RunContext(cfg, splits=("train",))
    picks, provenance = select(ctx, args.method, args.budget, args.seed, args.expert, args.expert_epoch)
    meta = {**ctx.artefact_identity(), "method": args.method, "loss": "infonce", "budget": args.budget,
            "seed": args.seed, **provenance, "config": cfg}
    save_distilled(args.out, real_pairs(ctx.splits["train"], ctx.features["train"], ctx.test_transform, picks, meta))
    print(f"{args.method} coreset of {args.budget} pairs written to {args.out}")


if __name__ == "__main__":
    run(main)
