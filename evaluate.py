"""Retrieval evaluation (METHOD §7): of distilled sets (fresh students trained on each, mean ± std), of a
saved expert snapshot, or of a student trained on the full training split with the expert recipe.

    python evaluate.py --config configs/tuxpaint/lors.yaml --distilled runs/tuxpaint/lors_50/distilled.safetensors runs/tuxpaint/random_49.safetensors
    python evaluate.py --config configs/tuxpaint/buffer.yaml --expert runs/tuxpaint/buffer/expert_000.safetensors --epochs 0 5
    python evaluate.py --config configs/tuxpaint/buffer.yaml --full-data
"""
from pathlib import Path

from data.distilled import load_distilled
from utils.config import parse_args
from utils.context import RunContext
from utils.evaluation import evaluate_set, mean_std
from utils.experts import fit_expert
from utils.io import atomic_write_json
from utils.metrics import format_table
from utils.trajectories import load_expert
from utils.training import evaluate_retrieval


def _flags(parser):
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--distilled", type=Path, nargs="+", help="distilled-set files (distill.py, coreset.py)")
    source.add_argument("--expert", type=Path, help="expert trajectory file written by buffer.py")
    source.add_argument("--full-data", action="store_true",
                        help="train a student on the whole training split (expert recipe), then evaluate")
    parser.add_argument("--epochs", type=int, nargs="+",
                        help="snapshots of --expert to evaluate (default: first and last)")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")


def evaluate_expert(ctx, path, epochs, split):
    """[(label, recall)] for the requested snapshots of one expert file."""
    identity = {k: v for k, v in ctx.identity().items() if k != "dataset"}
    snapshots, meta = load_expert(path, identity, ctx.new_student(0).layouts())
    last = snapshots["image"].shape[0] - 1
    rows = []
    for epoch in epochs if epochs is not None else [0, last]:
        if not 0 <= epoch <= last:
            raise SystemExit(f"{path} holds epochs 0..{last}; epoch {epoch} does not exist")
        student = ctx.new_student(0)
        student.load_flat({tower: thetas[epoch] for tower, thetas in snapshots.items()})
        label = f"expert {meta['expert']}, epoch {epoch}" + (" (start)" if epoch == 0 else "")
        rows.append((label, _recall(ctx, student, split)))
    return rows


def evaluate_distilled(ctx, paths, split):
    """[(label, {metric: (mean, std)})]: `evaluate.students` fresh students per distilled set."""
    rows = []
    for path in paths:
        dset = load_distilled(path, ctx.identity())
        recall = mean_std(evaluate_set(ctx, dset, ctx.cfg["evaluate"], split))
        rows.append((f"{dset.meta['method']} ({len(dset)} pairs)", recall))
    return rows


def evaluate_full_data(ctx, split):
    seed = ctx.cfg["buffer"].get("seed", 0)
    student = fit_expert(ctx, seed, lambda *_: None, name="full data")
    return [(f"full data, {ctx.cfg['buffer']['epochs']} epochs", _recall(ctx, student, split))]


def _recall(ctx, student, split):
    return evaluate_retrieval(student, ctx.splits[split], ctx.features[split], ctx.test_transform, ctx.device)


def main(argv=None):
    cfg, args = parse_args(argv, description=__doc__, extra=_flags)
    splits = ("train", args.split) if args.full_data else (args.split,)
    ctx = RunContext(cfg, splits=splits)
    if args.full_data:
        rows = evaluate_full_data(ctx, args.split)
    elif args.distilled:
        rows = evaluate_distilled(ctx, args.distilled, args.split)
    else:
        rows = evaluate_expert(ctx, args.expert, args.epochs, args.split)
    students = f", mean ± std over {cfg['evaluate']['students']} students" if args.distilled else ""
    print(f"\n{cfg['data']['name']} {args.split} retrieval (%, {len(ctx.splits[args.split].image_paths)} images"
          f"{students})")
    print(format_table(rows))
    if args.out:
        atomic_write_json(args.out, {"split": args.split, "results": [{"model": m, **r} for m, r in rows],
                                     "config": cfg})
    return rows


if __name__ == "__main__":
    main()
