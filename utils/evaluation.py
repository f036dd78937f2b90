"""Evaluating a distilled set (METHOD §7): train fresh students on it, measure retrieval on real data.

A student: pretrained image tower, fresh text head; SGD momentum 0.9, weight decay 5e-4, the set's
learned lr per tower (or the config's for sets without one), batch 128 (the whole set when smaller),
lr × 0.1 after half the epochs, the set's own loss with its similarity as targets. No augmentation.

Every `checkpoint_every` epochs (and at the start and end) the student is scored on val and test, which
gives the three reported protocols without storing any weights:
- "last epoch": test recall after the last epoch (MTT-VL's protocol);
- "val-selected": test recall at the checkpoint with the best val mean recall (ours, the honest one);
- "as published": the best test recall over the checkpoints (LoRS's public code; for comparison only).
"""
import math
import statistics

import torch
from tqdm import tqdm

from utils.losses import get_loss
from utils.training import evaluate_retrieval, student_optimizer

PROTOCOLS = ("last epoch", "val-selected", "as published")


def checkpoint_epochs(epochs, every):
    """Epochs at which a student is scored: 0, every, 2·every, …, and the last one."""
    return sorted(set(range(0, epochs + 1, every or max(epochs, 1))) | {epochs})


def train_student(ctx, dset, ecfg, seed, on_checkpoint=None, desc="student"):
    """A fresh student trained on `dset` with the evaluation recipe `ecfg` (the config's `evaluate`);
    `on_checkpoint(epoch, student)` runs at each of `checkpoint_epochs`."""
    student = ctx.new_student(seed).train()
    lrs = dset.lrs or {"image": ecfg["lr_image"], "text": ecfg["lr_text"]}
    optimizer = student_optimizer(student, lrs["image"], lrs["text"], ecfg["momentum"], ecfg["weight_decay"])
    epochs = ecfg["epochs"]
    checkpoints = checkpoint_epochs(epochs, ecfg.get("checkpoint_every", 10)) if on_checkpoint else []
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [epochs // 2], 0.1)
    loss_fn = get_loss(dset.meta.get("loss", "infonce"))
    images, texts = dset.images.to(ctx.device), dset.text_features.to(ctx.device)
    sim = dset.similarity.to(ctx.device)
    generator = torch.Generator().manual_seed(seed)
    batch = min(ecfg["batch_size"], len(dset))
    for epoch in tqdm(range(epochs + 1), desc=desc, leave=False):
        if epoch in checkpoints:
            on_checkpoint(epoch, student)
            student.train()
        if epoch == epochs:
            break
        for idx in torch.randperm(len(dset), generator=generator).split(batch):
            idx = idx.to(ctx.device)
            with torch.no_grad():
                targets = sim.block(idx)
            loss = loss_fn(student(images[idx], texts[idx]), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{desc}: training loss became {loss.item()} at epoch {epoch + 1} "
                                     f"(learning rates {lrs})")
    return student


def recall_curve(ctx, splits, run):
    """Score a student on `splits` at each checkpoint of `run(on_checkpoint)`:
    {"epochs": [e, …], split: [recall dict per checkpoint], …}."""
    curve = {"epochs": [], **{split: [] for split in splits}}

    def record(epoch, student):
        curve["epochs"].append(epoch)
        for split in splits:
            curve[split].append(evaluate_retrieval(student, ctx.splits[split], ctx.features[split],
                                                   ctx.test_transform, ctx.device))
    run(record)
    return curve


def student_curves(ctx, dset, ecfg, splits=("val", "test"), log=tqdm.write):
    """One recall curve per student (seeds 0 … students-1) trained on `dset`."""
    curves = []
    for seed in range(ecfg["students"]):
        curves.append(recall_curve(ctx, splits, lambda record: train_student(
            ctx, dset, ecfg, seed, record, desc=f"student {seed}")))
        log(f"student {seed}: " + ", ".join(f"{s} mean recall {curves[-1][s][-1]['mean']:.2f}" for s in splits)
            + f" after {ecfg['epochs']} epochs")
    return curves


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
