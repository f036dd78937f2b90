"""Evaluating a distilled set (docs/methods.md §7): train fresh students on it, measure retrieval on real data.

A student: pretrained image tower, fresh text head; SGD momentum 0.9, weight decay 5e-4, the set's
learned lr per tower (or the config's for sets without one), batch 128 (the whole set when smaller),
lr × 0.1 after half the epochs, the set's own loss with its similarity as targets. No augmentation.

Every `checkpoint_every` epochs (and at the start and end) the student is scored on val and test, which
gives the three reported protocols without storing any weights:
- "last epoch": test recall after the last epoch (MTT-VL's protocol);
- "val-selected": test recall at the checkpoint with the best val mean recall (ours, the honest one);
- "as published": the best test recall over the checkpoints (LoRS's public code; for comparison only).
"""
import statistics
from dataclasses import replace

import torch
from torch.func import grad_and_value, vmap
from tqdm import tqdm

from common.distributed import gather, share
from common.errors import DivergedError
from training.fit import tower_lrs, tower_optimizer
from training.losses import get_loss

PROTOCOLS = ("last epoch", "val-selected", "as published")


def checkpoint_epochs(epochs, every):
    """Epochs at which a student is scored: 0, every, 2·every, …, and the last one."""
    return sorted(set(range(0, epochs + 1, every or max(epochs, 1))) | {epochs})


def train_students(ctx, dset, ecfg, seeds, on_checkpoint=None, desc="student"):
    """Fresh students, one per seed, trained on `dset` with the evaluation recipe `ecfg` (the config's
    `evaluate`); `on_checkpoint(k, epoch, student)` runs for student k at each of `checkpoint_epochs`.

    One seed: a plain module. Several: trained together, their flat parameters stacked and one vmapped
    forward and backward per step (each student keeps its own data order; SGD is elementwise, so one
    optimizer over the stack is each student's own).
    """
    students = [ctx.new_student(seed).train() for seed in seeds]
    lrs = dset.lrs or {"image": ecfg["lr_image"], "text": ecfg["lr_text"]}
    loss_fn = get_loss(dset.meta.get("loss", "infonce"), dset.meta.get("loss_options"))
    images, texts = dset.images.to(ctx.device), dset.text_features.to(ctx.device)
    sim = dset.similarity.to(ctx.device)
    if len(students) == 1:
        params, step, sync = *_module_step(students[0], loss_fn, images, texts, sim), lambda: None
    else:
        params, step, sync = _stacked_step(students, loss_fn, images, texts, sim)
    optimizer = tower_optimizer(*params, lrs["image"], lrs["text"], ecfg["momentum"], ecfg["weight_decay"])
    epochs = ecfg["epochs"]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [epochs // 2], 0.1)
    checkpoints = checkpoint_epochs(epochs, ecfg["checkpoint_every"]) if on_checkpoint else []
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    batch = min(ecfg["batch_size"], len(dset))
    for epoch in tqdm(range(epochs + 1), desc=desc, leave=False):
        if epoch == epochs or epoch in checkpoints:
            sync()
        if epoch in checkpoints:
            for k, student in enumerate(students):
                on_checkpoint(k, epoch, student)
                student.train()
        if epoch == epochs:
            break
        orders = [torch.randperm(len(dset), generator=g).split(batch) for g in generators]
        for batches in zip(*orders):
            optimizer.zero_grad(set_to_none=True)
            loss = step([idx.to(ctx.device) for idx in batches])
            optimizer.step()
        schedule.step()
        if not torch.isfinite(loss).all():
            raise DivergedError(f"{desc}: training loss became {loss.tolist()} at epoch {epoch + 1} "
                                     f"(learning rates {lrs})")
    return students


def _module_step(student, loss_fn, images, texts, sim):
    """(the optimizer's parameters per tower, a training step) of one student."""
    def step(batches):
        idx, = batches
        with torch.no_grad():
            targets = sim.block(idx)
        loss = loss_fn(student(images[idx], texts[idx]), targets)
        loss.backward()
        return loss.detach()
    return ([p for p in student.image.parameters() if p.requires_grad], list(student.text.parameters())), step


def _stacked_step(students, loss_fn, images, texts, sim):
    """(the stacked (students, P) parameters per tower, a vmapped training step of all students, a sync)."""
    thetas = [torch.stack([s.flatten()[tower] for s in students]).requires_grad_() for tower in ("image", "text")]
    model = students[0]
    one = lambda theta_i, theta_t, x, t, target: loss_fn(model(x, t, theta_i, theta_t), target)  # noqa: E731
    batched = vmap(grad_and_value(one, argnums=(0, 1)), randomness="different")

    def step(batches):
        idx = torch.stack(batches)
        with torch.no_grad():
            targets = torch.stack([sim.block(i) for i in batches])
        grads, loss = batched(*thetas, images[idx], texts[idx], targets)
        for theta, g in zip(thetas, grads):
            theta.grad = g
        return loss.detach()

    def sync():  # the stacked parameters into the student modules, to score or return them
        for k, student in enumerate(students):
            student.load_flat({tower: theta[k].detach() for tower, theta in zip(("image", "text"), thetas)})
    return ([thetas[0]], [thetas[1]]), step, sync


def scorer(ctx, splits):
    """(a recall curve, `record(epoch, student)` that scores a student on `splits` into it):
    the curve is {"epochs": [e, …], split: [recall dict per checkpoint], …}."""
    curve = {"epochs": [], **{split: [] for split in splits}}

    def record(epoch, student):
        curve["epochs"].append(epoch)
        for split in splits:
            curve[split].append(ctx.recall(student, split))
    return curve, record


def student_curves(ctx, dset, ecfg, splits=("val", "test"), log=tqdm.write, name=""):
    """One recall curve per student (seeds 0 … students-1) trained on `dset`, `evaluate.together` at a time; `name`
    tells the logged lines of one set (and lr) from another's.
    Under torchrun the groups of students are spread over the ranks (group g on rank g mod world size), and every
    rank returns all the curves: a student depends on its group only, so the curves are the single process's."""
    seeds = list(range(ecfg["students"]))
    size = max(1, ecfg["together"])
    mine = {}
    for group in share(seeds[i:i + size] for i in range(0, len(seeds), size)):
        scored = [scorer(ctx, splits) for _ in group]
        train_students(ctx, dset, ecfg, group, lambda k, epoch, student: scored[k][1](epoch, student),
                       desc="students " + ",".join(map(str, group)))
        for seed, (curve, _) in zip(group, scored):
            log(f"student {seed}{name}: " + ", ".join(f"{s} mean recall {curve[s][-1]['mean']:.2f}" for s in splits)
                + f" after {ecfg['epochs']} epochs")
            mine[seed] = curve
    everyone = {seed: curve for part in gather(mine) for seed, curve in part.items()}
    return [everyone[seed] for seed in seeds]


def needs_lr_choice(dset):
    """Sets whose student lr is not a learned result: real pairs without lrs, and distillations' starting
    points (their lr is the initial guess). `evaluate.lr_grid` chooses theirs on val, so no row wins by the lr."""
    return not dset.lrs or dset.meta.get("iteration") == 0


def val_chosen_lr(ctx, dset, ecfg, log=tqdm.write, name=""):
    """(label of the chosen lr, its curves, {label: val score}) over `ecfg["lr_grid"]`, whose entries are one lr
    for both towers or {image: .., text: ..}: the entry whose students reach the best val mean recall at their
    val-selected checkpoint, averaged over students (ties: the first)."""
    scores, curves = {}, {}
    for lr in ecfg["lr_grid"]:
        lrs = tower_lrs(lr, "each entry of evaluate.lr_grid")
        label = f"{lr:g}" if not isinstance(lr, dict) else f"{lrs['image']:g} / {lrs['text']:g}"
        curves[label] = student_curves(ctx, replace(dset, lrs=lrs), ecfg, log=log, name=f"{name}, lr {label}")
        scores[label] = statistics.fmean(max(r["mean"] for r in curve["val"]) for curve in curves[label])
    best = max(scores, key=scores.get)
    log(f"lr {best} chosen on val{name} (val mean recall per lr: "
        + ", ".join(f"{lr} {score:.2f}" for lr, score in scores.items()) + ")")
    return best, curves[best], scores


def select(curve):
    """{protocol: (epoch, test recall)} of one student's curve (ties: the earliest checkpoint)."""
    test, epochs = curve["test"], curve["epochs"]
    best = lambda scores: max(range(len(scores)), key=lambda i: (scores[i]["mean"], -i))  # noqa: E731
    picks = {"last epoch": len(test) - 1, "as published": best(test)}
    if curve.get("val"):
        picks["val-selected"] = best(curve["val"])
    return {p: (epochs[picks[p]], test[picks[p]]) for p in PROTOCOLS if p in picks}


def summarise(curves):
    """{"protocols": {protocol: {metric: (mean, std)}}, "epochs": {protocol: [chosen epoch per student]}}."""
    picks = [select(curve) for curve in curves]
    return {"protocols": {p: mean_std([s[p][1] for s in picks]) for p in picks[0]},
            "epochs": {p: [s[p][0] for s in picks] for p in picks[0]}}


def mean_std(recalls):
    """{metric: (mean, std)} over students (std 0 for one student)."""
    return {k: (statistics.fmean(r[k] for r in recalls),
                statistics.stdev(r[k] for r in recalls) if len(recalls) > 1 else 0.0) for k in recalls[0]}
