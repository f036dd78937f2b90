"""Where the trajectory-free methods' model comes from, each iteration (docs/methods.md §4b).

- `online` (CovMatch): a student that takes one real-data symmetric-InfoNCE SGD step per iteration, reset every
  `reset_every` iterations to the pretrained image tower and a fresh text head;
- `merged` (MDM): a frozen teacher redrawn every iteration by merging two checkpoints of one expert of buffer.py
  around that expert's epoch 0 (`merge`);
- `fixed`: one θ (the pretrained tower and a head from the seed). Its real features could be computed once for the
  whole split; they are still computed per batch, as for the others.

The model never gets a gradient from the matching loss: the synthetic features are differentiated with respect to
the synthetic tensors only.
"""
import torch
import torch.nn.functional as F

from methods.statistics.losses import Features
from training.fit import tower_lrs
from training.losses import infonce


def merge(theta0, theta1, theta2, sizes, alpha):
    """MDM's angle merge of one tower's flat θ, parameter tensor by parameter tensor (`sizes`): Δ_k = θ_k − θ_0,
    c = cos(Δ_1, Δ_2), r = clamp(2c/(1 + c), 0, 1), θ* = θ_0 + α·r·(½(θ_1 + θ_2) − θ_0). The clamp is ours: without
    it r explodes as c → −1 (docs/differences.md)."""
    parts = []
    for t0, t1, t2 in zip(*(torch.split(t, sizes) for t in (theta0, theta1, theta2))):
        d1, d2 = t1 - t0, t2 - t0
        cosine = (d1 @ d2) / (d1.norm() * d2.norm()).clamp_min(1e-12)
        ratio = (2 * cosine / (1 + cosine)).nan_to_num(nan=0.0, neginf=0.0).clamp(0, 1)
        parts.append(t0 + alpha * ratio * ((t1 + t2) / 2 - t0))
    return torch.cat(parts)


def features(student, images, texts, thetas=None):
    """Features of a batch under `student` (run from `thetas`, {tower: flat θ}, when given)."""
    thetas = thetas or {}
    h_v = student.image(images) if "image" not in thetas else student.flat["image"](thetas["image"], images)
    z_t = student.text(texts) if "text" not in thetas else student.flat["text"](thetas["text"], texts)
    return Features(h_v, texts, F.normalize(h_v, dim=-1), F.normalize(z_t, dim=-1))


class OnlineModel:
    def __init__(self, ctx, d, real):
        self.ctx, self.d, self.real = ctx, d, real
        self.student = None

    def advance(self, iteration, draw):
        """Reset at the start of every cycle, then one SGD step of symmetric InfoNCE on the drawn real batch,
        its dropout seeded by the draw."""
        if iteration % self.d["reset_every"] == 0 or self.student is None:
            self.student = self.ctx.new_student(self.d["seed"] + iteration // self.d["reset_every"])
        images, texts = self.real.batch(draw["online"])
        lrs = tower_lrs(self.d["online_lr"], "distill.online_lr")
        self.student.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(draw["online_seed"])
            loss = infonce(self.student(images, texts))
        params = {t: [p for p in getattr(self.student, t).parameters() if p.requires_grad] for t in lrs}
        grads = torch.autograd.grad(loss, [p for t in lrs for p in params[t]])
        with torch.no_grad():
            flat = iter(grads)
            for t in lrs:
                for p in params[t]:
                    p -= lrs[t] * next(flat)
        self.student.eval()

    def teacher(self, draw):
        return self.student, None

    def state(self):
        return {f"online_{t}": v for t, v in self.student.flatten().items()} if self.student is not None else {}

    def load_state(self, tensors, iteration):
        if "online_image" in tensors:
            self.student = self.ctx.new_student(self.d["seed"] + (iteration - 1) // self.d["reset_every"])
            self.student.load_flat({t: tensors[f"online_{t}"] for t in ("image", "text")})
            self.student.eval()


class MergedModel:
    def __init__(self, ctx, d, pool):
        self.d, self.pool, self.device = d, pool, ctx.device
        self.student = ctx.new_student(d["seed"]).eval()
        self.sizes = {t: self.student.flat[t].sizes for t in self.student.towers}

    def advance(self, iteration, draw):
        pass

    def teacher(self, draw):
        expert, first, second = draw["merge"]
        start, one, two = self.pool.snapshots(expert, [0, first, second], self.device)
        return self.student, {t: merge(start[t], one[t], two[t], self.sizes[t], self.d["merge_alpha"]) for t in start}

    def state(self):
        return {}

    def load_state(self, tensors, iteration):
        pass


class FixedModel:
    def __init__(self, ctx, d):
        self.student = ctx.new_student(d["seed"]).eval()

    def advance(self, iteration, draw):
        pass

    def teacher(self, draw):
        return self.student, None

    def state(self):
        return {}

    def load_state(self, tensors, iteration):
        pass
