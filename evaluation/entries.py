"""What evaluate.py evaluates, as result entries (one per set: its label, budget, source, each protocol's recall
and the students' curves): distilled sets, the full training split, expert snapshots; and where the results go."""
import os
import time
from pathlib import Path

from artefacts.distilled import IDENTITY_KEYS, load_distilled, renormalised
from artefacts.export import read_folder
from common.distributed import world_size
from common.errors import OutputError
from common.io import atomic_write_json, atomic_write_text, hash_strings
from common.visuals import save_curves
from evaluation.report import CONTROL, run_tables
from evaluation.students import needs_lr_choice, scorer, student_curves, summarise, val_chosen_lr
from training.experts import expert_students, fit_expert

CROSS_ARCHITECTURE_KEYS = ("text_encoder", "text_weights", "image_size")


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
    if dset.meta.get("iteration") == 0:  # a distillation's starting point: a control, not a distilled set
        name, metagrad = f"{method} at {CONTROL}", CONTROL
    variant = ""  # what tells two sets of one method apart: their own line in the plot
    if dset.made_with("distill.precision") == "bf16":  # not fp32: say so
        variant += ", bf16"
    if dset.meta.get("chosen_on") == "val":  # distill.eval_every's best set: say which iteration, chosen how
        variant += f", iteration {dset.meta['iteration']} chosen on val"
    if dset.made_with("distill.init") in ("kmeans", "noise"):  # not from random real pairs: say so
        variant += f", {dset.made_with('distill.init')} init"
    return {"model": f"{name}{variant} ({len(dset)} pairs)", "method": method, "metagrad": metagrad,
            "variant": variant, "budget": dset.meta.get("budget", len(dset)), "pairs": len(dset),
            "source": str(path)}


def evaluate_distilled(ctx, paths, student_image_encoder=None, log=print):
    """One entry per set of `paths`; `student_image_encoder`: the students' image tower when it is not the one the
    sets were made with (cross-architecture evaluation, labelled as such)."""
    sets = [(path, load_set(ctx, path, bool(student_image_encoder))) for path in paths]  # all checked before training
    entries, ecfg = [], ctx.cfg["evaluate"]
    for path, dset in sets:
        start = time.time()
        entry = describe(dset, path)
        name = f" of {entry['model']}"  # in each logged line: which set
        if ecfg["lr_grid"] and needs_lr_choice(dset):
            lr, curves, scores = val_chosen_lr(ctx, dset, ecfg, log=log, name=name)
            entry.update(model=f"{entry['model']}, lr {lr} chosen on val", lr=lr,
                         lr_grid={k: round(v, 2) for k, v in scores.items()})
        else:
            if not dset.lrs:  # students at evaluate.lr_*: the row says at what
                entry.update(model=f"{entry['model']}, lr {ecfg['lr_image']:g} / {ecfg['lr_text']:g}")
            curves = student_curves(ctx, dset, ecfg, log=log, name=name)
        seconds = (time.time() - start) * world_size() / len(curves)  # process-seconds, whatever the processes
        entries.append({**entry, "students": len(curves), **summarise(curves),
                        "seconds_per_student": round(seconds, 1), "curves": curves})
        if student_image_encoder:
            entries[-1].update(model=f"{entry['model']} → {student_image_encoder} student",
                               variant=f"{entry['variant']} → {student_image_encoder} student",
                               student_image_encoder=student_image_encoder)
    return entries


def evaluate_full_data(ctx):
    """The upper bound: one student trained on the whole training split with the expert recipe."""
    seed = ctx.cfg["buffer"]["seed"]
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


def write_results(out, ctx, entries):
    """JSON (everything, config included), markdown and the recall-against-epochs PNG."""
    atomic_write_json(out, {"dataset": ctx.cfg["data"]["name"], "split": "test", "results": entries,
                            "config": ctx.cfg})
    atomic_write_text(out.with_suffix(".md"), results_markdown(ctx, entries))
    series = []
    for e in entries:
        mean_over = lambda split: [sum(c[split][i]["mean"] for c in e["curves"]) / len(e["curves"])  # noqa: E731
                                   for i in range(len(e["curves"][0]["epochs"]))]
        series.append((e["model"], e["curves"][0]["epochs"], {s: mean_over(s) for s in ("val", "test")}))
    save_curves(out.with_suffix(".png"), series, f"{ctx.cfg['data']['name']}: students' mean recall")


def results_markdown(ctx, entries):
    """The results of one evaluate.py run: one table per protocol (evaluation.report's renderer)."""
    test = ctx.splits["test"]
    return run_tables(ctx.cfg["data"]["name"], len(test.image_paths), len(test.captions), entries)


def default_out(cfg, distilled, full_data, student_image_encoder):
    """runs/<dataset>/eval/<name of the first set>-<hash of all the sets' paths>.json (OUT_ROOT/eval/… with
    out_root): evaluations of different sets never share a file, even when their folders have the same name."""
    if full_data:
        name, sources = "full_data", [cfg["data"]["annotations"]]
    else:
        first = distilled[0]
        name, sources = (first.parent.name if first.stem == "distilled" else first.stem), distilled
    key = hash_strings(*(Path(p).resolve() for p in sources), student_image_encoder)[:8]
    root = Path(cfg["out_root"]) if cfg.get("out_root") else Path("runs") / cfg["data"]["name"]
    return root / "eval" / f"{name}-{key}.json"


def writable(out):
    """Stop before any training when the results cannot be written."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"--out {out}: cannot make its folder ({err.strerror or err}); choose another path") from err
    if not os.access(out.parent, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise OutputError(f"--out {out}: cannot write there; choose another path")
    return out
