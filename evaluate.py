"""Retrieval evaluation (METHOD §7) of distilled sets, of the full training split, or of expert snapshots.

    python evaluate.py --config configs/tuxpaint/lors.yaml --distilled runs/tuxpaint/lors_50/distilled.safetensors runs/tuxpaint/random_50.safetensors
    python evaluate.py --config configs/tuxpaint/buffer.yaml --distilled runs/tuxpaint/exported/   # images/ + dataset.json
    python evaluate.py --config configs/tuxpaint/buffer.yaml --full-data
    python evaluate.py --config configs/tuxpaint/lors.yaml --distilled SET --student-image-encoder nf_resnet50
    python evaluate.py --config configs/tuxpaint/buffer.yaml --expert runs/tuxpaint/buffer/expert_000.safetensors --epochs 0 4
    torchrun --nproc-per-node G evaluate.py --config … --distilled …   # each set's students spread over G processes

A distilled set (an artefact of distill.py / coreset.py, or a folder of PNGs + captions) gets
`evaluate.students` fresh students; each is scored on val and test every `evaluate.checkpoint_every` epochs,
and the test recall is reported under three protocols (utils/evaluation.py). Writes JSON (--out), a markdown
table and a PNG of recall against student epochs beside it. Under torchrun, rank 0 gathers the curves and writes
them (the same as one process's); --full-data and --expert train one student each, on rank 0.
"""
import os
import time
from contextlib import nullcontext
from pathlib import Path

from data.distilled import IDENTITY_KEYS, load_distilled, read_folder, renormalised
from utils.cli import run
from utils.config import parse_args
from utils.context import RunContext
from utils.distributed import processes, rank_zero_first, world_size
from utils.evaluation import PROTOCOLS, needs_lr_choice, scorer, student_curves, summarise, val_chosen_lr
from utils.experts import expert_students, fit_expert
from utils.io import atomic_write_json, atomic_write_text, hash_strings
from utils.metrics import format_table
from utils.tensorboard import log_curves, tensorboard_dir
from utils.visuals import save_curves

CROSS_ARCHITECTURE_KEYS = ("text_encoder", "text_weights", "image_size")


def _flags(parser):
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--distilled", type=Path, nargs="+",
                        help="distilled-set files (distill.py, coreset.py) or export folders (images/ + dataset.json, "
                             "or a Hugging Face imagefolder: python -m data.distilled --format imagefolder)")
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


def load_set(ctx, path, cross_architecture=False):
    """A distilled-set file or a folder, checked against (and converted for) this run's student."""
    if Path(path).is_dir():
        return read_folder(path, ctx.text_encoder, ctx.test_transform, ctx.artefact_identity())
    keys = CROSS_ARCHITECTURE_KEYS if cross_architecture else IDENTITY_KEYS
    return renormalised(load_distilled(path, ctx.identity(), keys=keys, text_dim=ctx.text_encoder.hidden_size),
                        ctx.mean, ctx.std)


def describe(dset, path):
    """What the results table needs to know about a set besides its recall."""
    method, metagrad = dset.meta.get("method", "?"), dset.meta.get("metagrad")
    name = f"{method} · {metagrad}" if metagrad else method
    if ((dset.meta.get("config") or {}).get("distill") or {}).get("precision") == "bf16":  # not fp32: say so
        name += ", bf16"
    if dset.meta.get("iteration") == 0:  # a distillation's starting point: a control, not a distilled set
        name, metagrad = f"{method} at iteration 0", "iteration 0"
    return {"model": f"{name} ({len(dset)} pairs)", "method": method, "metagrad": metagrad,
            "budget": dset.meta.get("budget", len(dset)), "pairs": len(dset), "source": str(path)}


def evaluate_distilled(ctx, paths, cross_architecture=False, log=print):
    sets = [(path, load_set(ctx, path, cross_architecture)) for path in paths]  # every set checked before training
    entries, ecfg = [], ctx.cfg["evaluate"]
    for path, dset in sets:
        start = time.time()
        entry = describe(dset, path)
        if ecfg.get("lr_grid") and needs_lr_choice(dset):
            lr, curves, scores = val_chosen_lr(ctx, dset, ecfg, log=log)
            entry.update(model=f"{entry['model']}, lr {lr} chosen on val", lr=lr,
                         lr_grid={k: round(v, 2) for k, v in scores.items()})
        else:
            curves = student_curves(ctx, dset, ecfg, log=log)
        seconds = (time.time() - start) * world_size() / len(curves)  # process-seconds, whatever the processes
        entries.append({**entry, "students": len(curves), **summarise(curves),
                        "seconds_per_student": round(seconds, 1), "curves": curves})
    return entries


def evaluate_full_data(ctx):
    """The upper bound: one student trained on the whole training split with the expert recipe."""
    seed = ctx.cfg["buffer"].get("seed", 0)
    start = time.time()
    curve, record = scorer(ctx, ("val", "test"))
    fit_expert(ctx, seed, lambda epoch, student, _loss: record(epoch, student), name="full data")
    pairs = len(ctx.splits["train"].captions)
    heads = ", heads only" if ctx.trainable == "heads" else ""
    return [{"model": f"full data ({pairs} pairs{heads})", "method": "full data", "metagrad": None, "budget": None,
             "pairs": pairs, "source": ctx.cfg["data"]["annotations"], "students": 1, **summarise([curve]),
             "seconds_per_student": round(time.time() - start, 1), "curves": [curve]}]


def evaluate_expert(ctx, path, epochs):
    """[(label, test recall)] for the requested snapshots of one expert file."""
    students, meta = expert_students(ctx, path, epochs)
    return [(f"expert {meta['expert']}, epoch {epoch}" + (" (start)" if epoch == 0 else ""),
             ctx.recall(student, "test"))
            for epoch, student in students]


def markdown(ctx, entries):
    """The papers' layout (IR@1/5/10, TR@1/5/10, mean), one table per protocol."""
    test = ctx.splits["test"]
    lines = [f"# {ctx.cfg['data']['name']}: test retrieval (%, {len(test.image_paths)} images, "
             f"{len(test.captions)} captions), mean ± std over students"]
    for protocol in PROTOCOLS:
        rows = [(f"{e['model']}, {e['students']} student{'s' * (e['students'] > 1)}", e["protocols"][protocol])
                for e in entries if protocol in e["protocols"]]
        note = " (checkpoint chosen on test: for comparison with the LoRS tables only)" \
            if protocol == "as published" else ""
        lines += ["", f"## {protocol}{note}", "", format_table(rows)]
    return "\n".join(lines) + "\n"


def write_results(out, ctx, entries):
    """JSON (everything, config included), markdown and the recall-against-epochs PNG."""
    atomic_write_json(out, {"dataset": ctx.cfg["data"]["name"], "split": "test", "results": entries,
                            "config": ctx.cfg})
    atomic_write_text(out.with_suffix(".md"), markdown(ctx, entries))
    series = []
    for e in entries:
        mean_over = lambda split: [sum(c[split][i]["mean"] for c in e["curves"]) / len(e["curves"])  # noqa: E731
                                   for i in range(len(e["curves"][0]["epochs"]))]
        series.append((e["model"], e["curves"][0]["epochs"], {s: mean_over(s) for s in ("val", "test")}))
    save_curves(out.with_suffix(".png"), series, f"{ctx.cfg['data']['name']}: students' mean recall")


def _default_out(cfg, args):
    """runs/<dataset>/eval/<name of the first set>-<hash of all the sets' paths>.json: evaluations of different sets
    never share a file, even when their folders have the same name."""
    if args.full_data:
        name, sources = "full_data", [cfg["data"]["annotations"]]
    else:
        first = args.distilled[0]
        name, sources = (first.parent.name if first.stem == "distilled" else first.stem), args.distilled
    key = hash_strings(*(Path(p).resolve() for p in sources), args.student_image_encoder)[:8]
    return Path("runs") / cfg["data"]["name"] / "eval" / f"{name}-{key}.json"


def writable(out):
    """Stop before any training when the results cannot be written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise PermissionError(f"--out {out}: cannot write there; choose another path")
    return out


def main(argv=None):
    cfg, args = parse_args(argv, description=__doc__, extra=_flags)
    tensorboard_dir(cfg)  # log.tensorboard without the package: stop before any compute
    if args.student_image_encoder:
        cfg["model"].update(image_encoder=args.student_image_encoder, image_weights=args.student_image_weights)
    for path in args.distilled or [args.expert] * bool(args.expert):
        if not path.exists():
            raise FileNotFoundError(f"{path} not found (--{'distilled' if args.distilled else 'expert'})")
    splits = ("test",) if args.expert else ("train", "val", "test") if args.full_data else ("val", "test")
    with processes(cfg.get("device", "auto")) as (rank, _, device):
        spread = bool(args.distilled)  # --expert and --full-data train one student each: rank 0's alone
        if not spread and rank > 0:
            return None
        with rank_zero_first() if spread else nullcontext():  # rank 0 checks --out, builds the caches first
            out = writable(args.out or _default_out(cfg, args)) if rank == 0 and (not args.expert or args.out) else None
            ctx = RunContext(cfg, splits=splits, device=device)
        return _evaluate(ctx, args, out, rank)


def _evaluate(ctx, args, out, rank):
    cfg, test = ctx.cfg, ctx.splits["test"]
    if args.expert:
        rows = evaluate_expert(ctx, args.expert, args.epochs)
        print(f"\n{cfg['data']['name']} test retrieval (%, {len(test.image_paths)} images)\n{format_table(rows)}")
        if out:
            atomic_write_json(out, {"split": "test", "results": [{"model": m, **r} for m, r in rows], "config": cfg})
        return rows
    if args.full_data:
        entries = evaluate_full_data(ctx)
    else:
        entries = evaluate_distilled(ctx, args.distilled, bool(args.student_image_encoder),
                                     log=print if rank == 0 else lambda _msg: None)
        if rank > 0:
            return entries
    if args.student_image_encoder:
        for entry in entries:
            entry.update(model=f"{entry['model']} → {args.student_image_encoder} student",
                         student_image_encoder=args.student_image_encoder)
    write_results(out, ctx, entries)
    log_curves(cfg, f"eval/{out.stem}", entries, rank)
    print("\n" + markdown(ctx, entries) + f"\nwritten: {out} (+ .md, .png)")
    return entries


if __name__ == "__main__":
    run(main)
