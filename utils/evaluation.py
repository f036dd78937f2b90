"""Evaluating a distilled set (METHOD §7): train fresh students on it, measure retrieval on real data.

A student: pretrained image tower, fresh text head; SGD momentum 0.9, weight decay 5e-4, the set's
learned lr per tower (or the config's for sets without one), batch 128 (the whole set when smaller),
lr × 0.1 after half the epochs, the set's own loss with its similarity as targets. No augmentation.
"""
import math
import statistics

import torch
from tqdm import tqdm

from utils.losses import get_loss
from utils.training import evaluate_retrieval, student_optimizer


def train_student(ctx, dset, ecfg, seed, desc="student"):
    """A fresh student trained on `dset` with the evaluation recipe `ecfg` (the config's `evaluate`)."""
    student = ctx.new_student(seed).train()
    lrs = dset.lrs or {"image": ecfg["lr_image"], "text": ecfg["lr_text"]}
    optimizer = student_optimizer(student, lrs["image"], lrs["text"], ecfg["momentum"], ecfg["weight_decay"])
    epochs = ecfg["epochs"]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, [epochs // 2], 0.1)
    loss_fn = get_loss(dset.meta.get("loss", "infonce"))
    images, texts = dset.images.to(ctx.device), dset.text_features.to(ctx.device)
    sim = dset.similarity.to(ctx.device)
    generator = torch.Generator().manual_seed(seed)
    batch = min(ecfg["batch_size"], len(dset))
    for _ in tqdm(range(epochs), desc=desc, leave=False):
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
        raise FloatingPointError(f"{desc}: training loss became {loss.item()} (learning rates {lrs})")
    return student


def evaluate_set(ctx, dset, ecfg, split="test", log=tqdm.write):
    """[recall dict] of `ecfg["students"]` students (seeds 0, 1, …) trained on `dset`."""
    recalls = []
    for seed in range(ecfg["students"]):
        student = train_student(ctx, dset, ecfg, seed, desc=f"student {seed}")
        recalls.append(evaluate_retrieval(student, ctx.splits[split], ctx.features[split], ctx.test_transform,
                                          ctx.device))
        log(f"student {seed}: {split} mean recall {recalls[-1]['mean']:.2f}")
    return recalls


def mean_std(recalls):
    """{metric: (mean, std)} over students (std 0 for one student)."""
    return {k: (statistics.fmean(r[k] for r in recalls),
                statistics.stdev(r[k] for r in recalls) if len(recalls) > 1 else 0.0) for k in recalls[0]}
