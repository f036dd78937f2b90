"""Trajectory-free distillation (docs/methods.md §4b): CovMatch and MDM on one statistics-matching engine.
No inner loop and no meta-gradient: each work item computes the features of a real batch and of a synthetic batch
under the iteration's model (`sources.py`: online, merged or fixed), a statistic loss between them (`losses.py`:
covmatch or gke), and the gradient of the synthetic images and text features only. The set is N = budget real-looking
pairs with S = I and no learned lr, so the evaluator chooses the students' lr on val, as for a coreset.

Work items are independent given the model, so `segments_per_iteration` P > 1 averages P real/synthetic batch pairs,
shared by torchrun processes like trajectory matching's segments (the online model takes its one step per iteration
on every rank alike).
"""
import torch

from common.errors import ConfigError
from common.schema import COUNT, FRACTION, POSITIVE, Key, nullable, number, one_of, per_tower, whole
from methods.init import initial_pairs, kmeans_teacher
from methods.loop import Method
from methods.registry import MethodSpec, register
from methods.statistics.losses import covmatch, gke
from methods.statistics.sources import FixedModel, MergedModel, OnlineModel, features
from training.experts import ExpertPool
from training.fit import split_images
from training.similarity import Similarity

SOURCES = ("online", "merged", "fixed")
LOSSES = ("covmatch", "gke")
KEYS = {
    "model_source": Key(None, nullable(one_of(*SOURCES)),
                        "the model each iteration: online (CovMatch), merged experts (MDM) or fixed"),
    "statistic": Key(None, nullable(one_of(*LOSSES)),
                     "what is matched: covmatch (cross-covariance + means) or gke (InfoNCE + geodesic-kernel MMD²)"),
    "real_batch": Key(256, COUNT, "real pairs per work item"),
    "syn_batch": Key(None, nullable(whole(2)),
                     "synthetic pairs per work item (null: the method's; at most the set)"),
    "rho": Key(1.0, POSITIVE, "covmatch: ρ, the real cross-covariance's scale"),
    "lam": Key(0.1, number(0), "covmatch: λ, the weight of the mean terms"),
    "reset_every": Key(50, COUNT, "online: T, iterations between resets of the model"),
    "online_lr": Key(0.1, per_tower(POSITIVE), "online: SGD lr of the model's real-data step (one, or per tower)"),
    "merge_alpha": Key(0.5, FRACTION, "merged: α of the angle merge"),
    "max_start_epoch": Key(2, COUNT, "merged: checkpoints drawn from epochs 1 … this (≥ 2)"),
    "sigma": Key(0.5, POSITIVE, "gke: σ of the geodesic Gaussian kernel"),
    "lam_u": Key(0.8, number(0), "gke: weight of the agreement MMD²"),
    "lam_g": Key(0.8, number(0), "gke: weight of the discrepancy MMD²"),
    "temperature": Key(0.07, POSITIVE, "gke: τ of the synthetic pairs' InfoNCE"),
    "grad_clip": Key(None, nullable(POSITIVE),
                     "joint gradient-norm clip of the synthetic tensors (null: none)"),
}
PRESETS = {
    "covmatch": ("CovMatch: cross-covariance + means against an online model, no experts",
                 {"model_source": "online", "statistic": "covmatch", "syn_batch": 10 ** 9}, False),
    "mdm": ("MDM: InfoNCE + geodesic-kernel MMD² against merged experts",
            {"model_source": "merged", "statistic": "gke", "syn_batch": 64, "grad_clip": 1.0}, True),
}


class RealPairs:
    """The training pairs a work item draws its real batch from: images through the test transform (decoded once and
    kept when they fit in `keep_bytes`), cached text features."""

    def __init__(self, ctx, keep_bytes=2 ** 30):
        train = ctx.splits["train"]
        self.images = split_images(train, ctx.test_transform, False, ctx.image_cache)
        self.caption_image = torch.as_tensor(train.caption_image)
        self.features, self.device = ctx.features["train"], ctx.device
        pixels = len(self.images) * 3 * ctx.image_size ** 2 * 4
        self.kept = torch.stack([self.images[i][0] for i in range(len(self.images))]) if pixels <= keep_bytes else None

    def __len__(self):
        return len(self.features)

    def batch(self, captions):
        """(images, text features) of the pairs `captions` (caption indices), on the device."""
        rows = self.caption_image[captions]
        images = self.kept[rows] if self.kept is not None else torch.stack([self.images[int(i)][0] for i in rows])
        return images.to(self.device), self.features[captions].to(self.device)


class StatisticsMatching(Method):
    """The model source, the loss, the real pairs and the one seeded stream of a run; a work item is one real batch
    (and, for `merged`, the expert checkpoints to merge) with one synthetic batch."""

    def __init__(self, d, source, real, dset, generator):
        self.d, self.source, self.real, self.initial_set, self.generator = d, source, real, dset, generator
        self.syn_batch = min(d["syn_batch"], len(dset))
        self.iteration = 0

    @classmethod
    def build(cls, ctx, cfg, d, log):
        if d["model_source"] == "merged" and d["max_start_epoch"] < 2:
            raise ConfigError("distill.max_start_epoch must be ≥ 2 for the merged model (two distinct checkpoints "
                              "from epochs 1 … max_start_epoch)")
        n, available = d["budget"], len(ctx.splits["train"].captions)
        if n > available:
            raise ConfigError(f"distill.budget {n} is larger than the {available} training pairs; choose a budget "
                              f"that fits")
        real = RealPairs(ctx)
        buffer = cfg["buffer"]["out_dir"] if d["model_source"] == "merged" else None
        if buffer:
            pool = ExpertPool(buffer, {**ctx.identity(), "train_captions": ctx.splits["train"].fingerprint},
                              ctx.new_student(d["seed"]).layouts(), d["max_start_epoch"], ctx.trainable,
                              needed_by=f"distill.method {d['method']} (model_source merged)")
            source = MergedModel(ctx, d, pool)
        else:
            source = OnlineModel(ctx, d, real) if d["model_source"] == "online" else FixedModel(ctx, d)
        teacher = kmeans_teacher(ctx, d, buffer, d["max_start_epoch"]) if d["init"] == "kmeans" else None
        dset = initial_pairs(ctx, d, n, teacher, log)
        dset.meta.update({"method": d["method"], "loss": "infonce", "model_source": d["model_source"],
                          "statistic": d["statistic"]})
        dset.similarity = Similarity("identity", n)
        return cls(d, source, real, dset, torch.Generator().manual_seed(d["seed"]))

    def groups(self, leaves):
        return [(["images"], self.d["lr_image"]), (["texts"], self.d["lr_text"])]

    def draw(self):
        """One work item's randomness: the real batch, the synthetic batch, and the model's own draws."""
        g, d = self.generator, self.d
        item = {"real": torch.randint(len(self.real), (d["real_batch"],), generator=g),
                "syn": torch.randperm(len(self.initial_set), generator=g)[:self.syn_batch]}
        if d["model_source"] == "merged":
            expert = int(torch.randint(len(self.source.pool.files), (1,), generator=g))
            first, second = (torch.randperm(d["max_start_epoch"], generator=g)[:2] + 1).tolist()
            item["merge"] = (expert, first, second)
        return item

    def advance(self, iteration):
        """Once per iteration, on every rank alike: the online model's real-data step."""
        if self.d["model_source"] == "online":
            g = self.generator
            self.source.advance(iteration, {"online": torch.randint(len(self.real), (self.d["real_batch"],),
                                                                    generator=g),
                                            "online_seed": int(torch.randint(2 ** 62, (1,), generator=g))})
        self.iteration = iteration + 1

    def gradient(self, item, leaves, dset):
        student, thetas = self.source.teacher(item)
        with torch.no_grad():
            real = features(student, *self.real.batch(item["real"]), thetas)
        images, texts = (leaves[k].detach()[item["syn"]].requires_grad_(True) for k in ("images", "texts"))
        syn = features(student, images, texts, thetas)
        d = self.d
        if d["statistic"] == "covmatch":
            loss = covmatch(real, syn, d["rho"], d["lam"])
        else:
            loss = gke(real, syn, d["temperature"], d["sigma"], d["lam_u"], d["lam_g"])
        image_grad, text_grad = torch.autograd.grad(loss, (images, texts))
        grads = {k: torch.zeros_like(leaves[k]) for k in ("images", "texts")}
        grads["images"][item["syn"]], grads["texts"][item["syn"]] = image_grad, text_grad
        if d["grad_clip"]:
            norm = torch.sqrt(sum(g.pow(2).sum() for g in grads.values()))
            grads = {k: g * min(1.0, d["grad_clip"] / (norm.item() + 1e-12)) for k, g in grads.items()}
        return loss.detach(), grads

    def state(self):
        return {"statistics_rng": self.generator.get_state(), "statistics_iteration": torch.tensor(self.iteration),
                **self.source.state()}

    def load_state(self, tensors):
        self.generator.set_state(tensors["statistics_rng"])
        self.iteration = int(tensors["statistics_iteration"])
        self.source.load_state(tensors, self.iteration)


def _register():
    for name, (summary, presets, needs_buffer) in PRESETS.items():
        register(MethodSpec(name, summary, StatisticsMatching.build, KEYS, presets, needs_buffer=needs_buffer,
                            family="statistics matching"))


_register()
