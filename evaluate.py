"""Retrieval evaluation (docs/methods.md §7) of distilled sets, of the full training split, or of expert snapshots.

    python evaluate.py --config configs/tuxpaint/lors.yaml --distilled runs/tuxpaint/lors_50/distilled.safetensors runs/tuxpaint/random_50.safetensors
    python evaluate.py --config configs/tuxpaint/buffer.yaml --distilled runs/tuxpaint/exported/   # images/ + dataset.json
    python evaluate.py --config configs/tuxpaint/buffer.yaml --full-data
    python evaluate.py --config configs/tuxpaint/lors.yaml --distilled SET --student-image-encoder nf_resnet50
    python evaluate.py --config configs/tuxpaint/buffer.yaml --expert runs/tuxpaint/buffer/expert_000.safetensors --epochs 0 4
    torchrun --nproc-per-node G evaluate.py --config … --distilled …   # each set's students spread over G processes

A distilled set (an artefact of distill.py / coreset.py, or a folder of PNGs + captions) gets
`evaluate.students` fresh students; each is scored on val and test every `evaluate.checkpoint_every` epochs,
and the test recall is reported under three protocols (evaluation/students.py). Writes JSON (--out), a markdown
table and a PNG of recall against student epochs beside it. Under torchrun, rank 0 gathers the curves and writes
them (the same as one process's); --full-data and --expert train one student each, on rank 0.
"""
from contextlib import nullcontext
from pathlib import Path

from common.cli import run
from common.config import parse_args
from common.distributed import processes, rank_zero_first
from common.errors import MissingError
from common.io import atomic_write_json, check_output
from common.tensorboard import log_curves, tensorboard_dir
from data.annotations import annotation_files
from data.chance import small_split_warning
from evaluation.entries import (default_out, evaluate_distilled, evaluate_expert, evaluate_full_data, results_markdown,
                                writable, write_results)
from evaluation.report import expert_table
from methods import method_keys
from training.context import RunContext


def _flags(parser):
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--distilled", type=Path, nargs="+",
                        help="distilled-set files (distill.py, coreset.py) or export folders (images/ + dataset.json, "
                             "or a Hugging Face imagefolder: python -m artefacts.export --format imagefolder)")
    source.add_argument("--expert", type=Path, help="expert trajectory file written by buffer.py")
    source.add_argument("--full-data", action="store_true",
                        help="train a student on the whole training split (expert recipe), then evaluate")
    parser.add_argument("--epochs", type=int, nargs="+",
                        help="snapshots of --expert to evaluate (default: first and last)")
    parser.add_argument("--student-image-encoder",
                        help="cross-architecture evaluation: train students with this timm image encoder")
    parser.add_argument("--student-image-weights", default="none",
                        help="its weights: none (random init), hub, or a local file (default: none)")
    parser.add_argument("--out", type=Path,
                        help="results JSON (default: runs/<dataset>/eval/<first source>-<hash of the sources>.json); .md and .png beside it")


def main(argv=None):
    cfg, args = parse_args(argv, description=__doc__, extra=_flags, reads=("data", "model", "evaluate", "log"),
                           method_keys=method_keys())
    tensorboard_dir(cfg)  # log.tensorboard without the package: stop before any compute
    if args.student_image_encoder:
        cfg["model"].update(image_encoder=args.student_image_encoder, image_weights=args.student_image_weights)
    for path in args.distilled or [args.expert] * bool(args.expert):
        if not path.exists():
            raise MissingError(f"{path} not found (--{'distilled' if args.distilled else 'expert'})")
    splits = ("test",) if args.expert else ("train", "val", "test") if args.full_data else ("val", "test")
    with processes(cfg["device"], cfg) as (rank, _, device):
        spread = bool(args.distilled)  # --expert and --full-data train one student each: rank 0's alone
        if not spread and rank > 0:
            return None
        with rank_zero_first() if spread else nullcontext():  # rank 0 checks --out, builds the caches first
            out = None
            if rank == 0 and (not args.expert or args.out):
                out = writable(check_output(args.out or default_out(cfg, args.distilled, args.full_data,
                                                                    args.student_image_encoder),
                                            [*(args.distilled or []), *[args.expert] * bool(args.expert),
                                             *annotation_files(cfg["data"])]))
            ctx = RunContext(cfg, splits=splits, device=device)
        return _evaluate(ctx, args, out, rank)


def _evaluate(ctx, args, out, rank):
    cfg, test = ctx.cfg, ctx.splits["test"]
    scored = [name for name in ctx.splits if name != "train"] if rank == 0 else []
    for warning in (small_split_warning(name, [len(c) for c in ctx.splits[name].image_captions]) for name in scored):
        if warning:
            print(warning)
    if args.expert:
        rows = evaluate_expert(ctx, args.expert, args.epochs)
        print(expert_table(cfg["data"]["name"], len(test.image_paths), rows))
        if out:
            atomic_write_json(out, {"split": "test", "results": [{"model": m, **r} for m, r in rows], "config": cfg})
        return rows
    if args.full_data:
        entries = evaluate_full_data(ctx)
    else:
        entries = evaluate_distilled(ctx, args.distilled, args.student_image_encoder,
                                     log=print if rank == 0 else lambda _msg: None)
        if rank > 0:
            return entries
    write_results(out, ctx, entries)
    log_curves(cfg, f"eval/{out.stem}", entries, rank)
    print("\n" + results_markdown(ctx, entries) + f"\nwritten: {out} (+ .md, .png)")
    return entries


if __name__ == "__main__":
    run(main)
