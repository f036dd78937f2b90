"""Trajectory matching (docs/methods.md §4): MTT-VL, TESLA-VL, LoRS and RepBlend, one `Method` with four
presets. Each work item is an expert segment (θ_s, θ_{s+E}) of buffer.py's experts; its gradient is the
meta-gradient (`unroll`, `tesla` or `exact`: methods/matching/metagrad.py) of the distance the inner loop's student
ends from θ_{s+E}. Learned: images, text features, the similarity factors (LoRS, RepBlend) and one student lr per tower.
"""
from pathlib import Path

import torch

from common.errors import ConfigError, DivergedError
from common.schema import BOOL, COUNT, FRACTION, POSITIVE, Key, nullable, number, one_of, per_tower
from methods.init import initial_pairs, kmeans_teacher
from methods.loop import Method
from methods.matching.metagrad import MODES, OFFLOADS, InnerLoop, meta_gradient
from methods.matching.segments import Sampler
from methods.registry import MethodSpec, register
from networks.checkpointing import checkpoint_blocks
from networks.forward_mode import build_chain, chain_matches
from training.experts import ExpertPool
from training.fit import tower_lrs
from training.losses import LOSSES, get_loss
from training.similarity import KINDS, Similarity

SCRATCH = ".offload"  # under out_dir: where `offload: disk` keeps θ_0 … θ_{K-1} during an iteration

KEYS = {
    "metagrad": Key(None, nullable(one_of(*MODES)), "meta-gradient: unroll (MTT), tesla (TESLA) or exact"),
    "loss": Key(None, nullable(one_of(*LOSSES)), "the inner loop's loss"),
    "sim_type": Key(None, nullable(one_of(*KINDS)), "learned similarity S: identity, lowrank or full"),
    "reserve_pair": Key(None, nullable(BOOL), "S is paid for with one pair (budget 50 → 49 pairs)"),
    "blend": Key(None, nullable(BOOL), "RepBlend representation blending in each inner step"),
    "sim_rank": Key(10, COUNT, "rank r of a low-rank S"),
    "sim_alpha": Key(3.0, number(0, low_open=True), "scale α of the low-rank part of S"),
    "syn_steps": Key(8, COUNT, "inner steps K per segment"),
    "expert_epochs": Key(1, COUNT, "expert epochs a segment spans"),
    "max_start_epoch": Key(2, COUNT, "segments start at an epoch below this"),
    "mini_batch_size": Key(100, COUNT, "synthetic pairs per inner step"),
    "lr_sim": Key(10.0, number(0), "SGD lr of the similarity factors"),
    "lr_lr": Key(1e-2, number(0), "SGD lr of the learned student lrs"),
    "lr_teacher": Key(0.1, per_tower(POSITIVE), "the student lrs' start (one, or {image: …, text: …})"),
    "offload": Key("auto", one_of("auto", *OFFLOADS), "where exact/tesla keep θ_0 … θ_{K-1}: auto (GPU: host, "
                                                       "CPU: disk), none, host or disk"),
    "merge_branches": Key(False, BOOL, "one normaliser over both towers (the public COCO configs)"),
    "checkpoint_activations": Key(False, BOOL, "rebuilt steps segment by segment: same numbers, less memory"),
    "precision": Key("fp32", one_of("fp32", "bf16"), "the inner steps' towers under bf16 autocast, or not"),
    "wbce_eps": Key(None, nullable(number(0, 0.5)), "ε in WBCE's log(σ + ε)", recipe=(0.0, 1e-6)),
    "wbce_no_positive": Key(None, nullable(one_of("whole", "half")),
                            "a minibatch without a positive gives the whole or half the negative term",
                            recipe=("whole", "half")),
    "minibatches": Key(None, nullable(one_of("queue", "permutation")), "inner minibatches: one queue across "
                       "iterations, or a fresh permutation per iteration (short tail dropped)",
                       recipe=("queue", "permutation")),
}
FAMILY = "trajectory matching"


def loss_options(d):
    """Keyword options of the resolved section's loss (only wbce has any: the recipe's ε and no-positive rule)."""
    return {"eps": d["wbce_eps"], "no_positive": d["wbce_no_positive"]} if d["loss"] == "wbce" else {}


def synthetic_pairs(d):
    """N: the budget, less one pair where the similarity matrix has to be paid for (LoRS)."""
    return d["budget"] - 1 if d["reserve_pair"] else d["budget"]


def initial_set(ctx, d, n, teacher=None, log=print):
    """The N pairs of distill.init (methods/init.py; `teacher`: the student k-means clusters the features of); S at
    its start; lrs at lr_teacher."""
    dset = initial_pairs(ctx, d, n, teacher, log)
    dset.meta.update({"method": d["method"], "loss": d["loss"], "metagrad": d["metagrad"],
                      "loss_options": loss_options(d)})
    dset.similarity = Similarity(d["sim_type"], n, d["sim_rank"], d["sim_alpha"],
                                 generator=torch.Generator().manual_seed(d["seed"] + 1))
    dset.lrs = tower_lrs(d["lr_teacher"], "distill.lr_teacher")
    return dset


class TrajectoryMatching(Method):
    """The student, the expert pool and the sampler of one run; a work item is one segment's draws."""

    def __init__(self, d, student, pool, dset, device, out_dir, log=print):
        self.d, self.student, self.pool, self.device, self.initial_set = d, student, pool, device, dset
        offload = d["offload"]
        self.offload = ("host" if device.type == "cuda" else "disk") if offload == "auto" else offload
        self.scratch = out_dir / SCRATCH
        self.segments = None
        if d["checkpoint_activations"]:
            checkpoint_blocks(student.image)
            chain = build_chain(student.image, student.flat["image"])
            if chain and chain_matches(student.image, chain, dset.images[:2].to(device)):
                self.segments = chain
            else:
                log("distill.checkpoint_activations: this image tower is not a plain chain of blocks (or has active "
                    "dropout); its rebuilt steps run unsegmented")
        self.sampler = Sampler(d["seed"], len(pool.files), len(dset), d["mini_batch_size"], d["minibatches"])
        self.loss_fn = get_loss(d["loss"], loss_options(d))

    @classmethod
    def build(cls, ctx, cfg, d, log):
        student = ctx.new_student(d["seed"]).train()
        pool = ExpertPool(cfg["buffer"]["out_dir"],
                          {**ctx.identity(), "train_captions": ctx.splits["train"].fingerprint},
                          student.layouts(), d["max_start_epoch"] - 1 + d["expert_epochs"], ctx.trainable)
        n, available = synthetic_pairs(d), len(ctx.splits["train"].captions)
        if not 2 <= n <= available:
            raise ConfigError(f"distill.budget {d['budget']} means {n} synthetic pairs ({d['method']}), but the "
                              f"training split has {available} pairs: choose a budget that fits")
        if d["mini_batch_size"] > n:  # e.g. LoRS at budget 10: 9 pairs, S pays for one; the run records what it used
            log(f"distill.mini_batch_size {d['mini_batch_size']} is larger than the {n} synthetic pairs of budget "
                f"{d['budget']}: minibatches of {n}, the whole set")
            d["mini_batch_size"] = cfg["distill"]["mini_batch_size"] = n
        if d["sim_type"] == "lowrank" and d["sim_rank"] > n:
            raise ConfigError(f"distill.sim_rank {d['sim_rank']} is larger than the {n} synthetic pairs of budget "
                              f"{d['budget']}; choose at most {n}")
        last_epoch = d["max_start_epoch"] - 1 + d["expert_epochs"]
        teacher = kmeans_teacher(ctx, d, cfg["buffer"]["out_dir"], last_epoch) if d["init"] == "kmeans" else None
        return cls(d, student, pool, initial_set(ctx, d, n, teacher, log), ctx.device, Path(d["out_dir"]), log)

    def groups(self, leaves):
        d = self.d
        return [(["images"], d["lr_image"]), (["texts"], d["lr_text"]),
                ([k for k in leaves if k.startswith("sim_")], d["lr_sim"]),
                ([k for k in leaves if k.startswith("lr_")], d["lr_lr"])]

    def draw(self):
        return self.sampler.segment(self.d["max_start_epoch"], self.d["syn_steps"])

    def gradient(self, item, leaves, dset):
        """(matching loss, {leaf name: its meta-gradient}) of one segment."""
        d = self.d
        expert, start_epoch, batches, seeds = item
        start, target = self.pool.segment(expert, start_epoch, d["expert_epochs"], self.device)
        inner = InnerLoop(self.student, self.loss_fn, dset.similarity, batches, seeds, blend=d["blend"],
                          precision=d["precision"], segments=self.segments)
        syn = {k: v for k, v in leaves.items() if not k.startswith("lr_")}
        lrs = {k[len("lr_"):]: v for k, v in leaves.items() if k.startswith("lr_")}
        loss, syn_grads, lr_grads = meta_gradient(d["metagrad"], inner, start, target, lrs, syn,
                                                  num_steps=d["syn_steps"], merge=d["merge_branches"],
                                                  offload=self.offload, scratch=self.scratch)
        return loss, {**syn_grads, **{f"lr_{t}": g for t, g in lr_grads.items()}}

    def state(self):
        return self.sampler.state()

    def load_state(self, tensors):
        self.sampler.load_state(tensors)

    def check(self, iteration, leaves):
        negative = {k[len("lr_"):]: v.item() for k, v in leaves.items() if k.startswith("lr_") and v.item() <= 0}
        if negative:  # a student that climbs its loss: nothing a set could be evaluated with
            raise DivergedError(
                f"distillation iteration {iteration}: the learned student lr became {negative}; nothing was written "
                f"after the last checkpoint in {self.d['out_dir']}. Lower distill.lr_lr (or raise distill.lr_teacher)")


PRESETS = {  # what each method fixes unless the config says otherwise
    "mtt-vl": ("InfoNCE, S = I, unrolled meta-gradient",
               {"loss": "infonce", "sim_type": "identity", "metagrad": "unroll", "reserve_pair": False, "blend": False}),
    "tesla-vl": ("InfoNCE, S = I, TESLA's first-order meta-gradient",
                 {"loss": "infonce", "sim_type": "identity", "metagrad": "tesla", "reserve_pair": False,
                  "blend": False}),
    "lors": ("learned low-rank similarity S, WBCE, one pair pays for S",
             {"loss": "wbce", "sim_type": "lowrank", "metagrad": "tesla", "reserve_pair": True, "blend": False}),
    # RepBlend = LoRS + representation blending, matching the projection heads' trajectories (model.trainable: heads)
    "repblend": ("LoRS with representation blending, on projection-head trajectories",
                 {"loss": "wbce", "sim_type": "lowrank", "metagrad": "tesla", "reserve_pair": True, "blend": True}),
}
# docs/methods.md §8 (NFNet-l0 + BERT): "IR@1/5/10 · TR@1/5/10" per dataset and budget, and the protocol of each paper
PUBLISHED = {
    "mtt-vl": ("last epoch", {
        "flickr30k": {100: "4.7/15.7/24.6 · 9.9/28.3/39.1", 200: "4.6/16.0/25.5 · 10.2/28.7/41.9",
                      500: "6.6/20.2/30.0 · 13.3/32.8/46.8", 1000: "7.9/21.2/34.4 · 13.3/31.5/43.7"},
        "coco": {100: "1.3/5.4/9.5 · 2.5/10.0/15.7", 200: "1.7/6.5/12.3 · 3.3/11.9/19.4",
                 500: "2.5/8.9/15.8 · 5.0/17.2/26.0", 1000: "3.3/11.9/22.1 · 6.8/21.9/31.0"}}),
    "lors": ("test-selected", {
        "flickr30k": {100: "8.3/24.1/35.1 · 11.8/35.8/49.2", 200: "8.6/25.3/36.6 · 14.5/38.7/53.4",
                      500: "10.0/28.9/41.6 · 15.5/39.8/53.7"},
        "coco": {100: "1.8/7.1/12.2 · 3.3/12.2/19.6", 200: "2.4/9.3/15.5 · 4.3/14.2/22.6",
                 500: "2.8/9.9/16.5 · 5.3/18.3/27.9"}}),
    "repblend": ("test-selected", {
        "flickr30k": {100: "11.5/32.0/44.5 · 16.2/41.7/55.5", 200: "12.7/34.7/47.6 · 18.6/46.0/60.0",
                      500: "17.0/42.5/55.9 · 22.5/53.2/66.7"},
        "coco": {100: "4.1/13.9/22.3 · 5.2/17.9/28.0", 200: "6.1/19.3/29.8 · 6.9/21.8/32.3",
                 500: "6.2/19.9/30.6 · 7.0/22.0/32.9"}}),
}
HEADS_ONLY = ("repblend",)  # methods defined on projection-head trajectories


def _register():
    for name, (summary, presets) in PRESETS.items():
        protocol, numbers = PUBLISHED.get(name, (None, {}))
        register(MethodSpec(name, summary, TrajectoryMatching.build, KEYS, presets, needs_buffer=True,
                            trainable="heads" if name in HEADS_ONLY else None, family=FAMILY, published=numbers,
                            published_protocol=protocol))


_register()
