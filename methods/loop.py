"""Trajectory-matching distillation (METHOD §4): the outer loop around `utils.metagrad`.

Learned: synthetic images and text features, the similarity factors (LoRS), one student lr per tower.
Each iteration samples `segments_per_iteration` (P) expert segments (θ_s, θ_{s+E}), runs the inner loop on
synthetic minibatches for each, and takes one SGD-with-momentum step on all of them along the mean of the P
meta-gradients. Under torchrun every rank draws the same P segments from the one seeded sampler and computes its
share of them (P a multiple of the world size); the sums are all-reduced, so each rank takes the same step, the
one a single process takes computing all P in turn. Rank 0 alone writes. Every `checkpoint_every` iterations the
state is written (set, momenta, sampler) so that a killed run resumes to the same result (with any number of
processes: the state is the same on every rank); a non-finite loss or gradient stops the run before anything is
written.
"""
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from data.distilled import (DistilledSet, load_distilled, nearest_captions, random_pairs, real_pairs,
                            save_distilled)
from networks.checkpointing import checkpoint_blocks
from networks.forward_mode import build_chain, chain_matches
from utils.config import ConfigError, save_config
from utils.context import trainable_mode
from utils.distributed import all_reduce_sum, barrier, rank, world_size
from utils.evaluation import mean_std, student_curves
from utils.io import remove_stale_temporaries, run_lock
from utils.losses import get_loss
from utils.metagrad import MODES, InnerLoop, meta_gradient
from utils.recipe import distill_recipe, loss_options
from utils.segments import ExpertPool, Sampler
from utils.similarity import Similarity
from utils.tensorboard import NoLog, open_log
from utils.training import tower_lrs
from utils.visuals import save_grid, save_heatmap, to_uint8

# What each method fixes unless the config says otherwise; `reserve_pair`: S is paid for with one pair.
# RepBlend = LoRS + representation blending, matching the projection heads' trajectories (model.trainable: heads).
PRESETS = {
    "lors": {"loss": "wbce", "sim_type": "lowrank", "metagrad": "tesla", "reserve_pair": True, "blend": False},
    "mtt-vl": {"loss": "infonce", "sim_type": "identity", "metagrad": "unroll", "reserve_pair": False, "blend": False},
    "tesla-vl": {"loss": "infonce", "sim_type": "identity", "metagrad": "tesla", "reserve_pair": False, "blend": False},
    "repblend": {"loss": "wbce", "sim_type": "lowrank", "metagrad": "tesla", "reserve_pair": True, "blend": True},
}
HEADS_ONLY = ("repblend",)  # methods defined on projection-head trajectories
# What a resumed run may change: how long, how often to save or evaluate, where things live.
RESUMABLE_KEYS = {"distill.iterations", "distill.checkpoint_every", "distill.eval_every", "distill.eval_students",
                  "distill.out_dir", "distill.offload", "distill.checkpoint_activations", "device", "cache_dir",
                  "evaluate", "log"}  # (checkpointing changes no number; distill.precision does, so it is not here)
SEGMENTS_KEY = "segments_per_iteration"  # absent from configs and checkpoints made before it: 1
RUN_KEYS = ("iteration", "losses", "config", "format")  # metadata of a checkpoint, not of the set
SCRATCH = ".offload"  # under out_dir: where `offload: disk` keeps θ_0 … θ_{K-1} during an iteration


def resolve_method(dcfg, trainable="full", recipe=None):
    """The distill section with the method's preset, and the `recipe`'s distill details (utils.recipe), filled in
    where the config leaves a key null; `trainable`: the run's model.trainable."""
    if dcfg["method"] not in PRESETS:
        raise ValueError(f"unknown distill.method {dcfg['method']!r}; choose one of {', '.join(PRESETS)}")
    if dcfg["method"] in HEADS_ONLY and trainable != "heads":
        raise ValueError(f"distill.method {dcfg['method']} matches projection-head trajectories and needs "
                         f"model.trainable: heads, but this run has model.trainable: {trainable}; use "
                         f"configs/<dataset>/{dcfg['method']}*.yaml (experts: buffer_heads.yaml) or set "
                         f"--model.trainable heads")
    resolved = {**dcfg, **{k: v for k, v in PRESETS[dcfg["method"]].items() if dcfg.get(k) is None},
                **distill_recipe({"recipe": recipe, "distill": dcfg})}
    if resolved["metagrad"] not in MODES:
        raise ValueError(f"unknown distill.metagrad {resolved['metagrad']!r}; choose one of {', '.join(MODES)}")
    return resolved


def segments_per_rank(dcfg, world):
    """The segments each of `world` processes computes in an iteration: P / world."""
    per_iteration = dcfg.get(SEGMENTS_KEY, 1)
    if per_iteration % world:
        raise ConfigError(f"distill.{SEGMENTS_KEY} {per_iteration} is not a multiple of the {world} processes of "
                          f"this run: every process computes the same number of segments; set it to a multiple "
                          f"of {world} (e.g. {world * max(1, per_iteration // world)}), or run a number of "
                          f"processes that divides {per_iteration}")
    return per_iteration // world


def synthetic_pairs(dcfg):
    """N: the budget, less one pair where the similarity matrix has to be paid for (LoRS)."""
    return dcfg["budget"] - 1 if dcfg["reserve_pair"] else dcfg["budget"]


def initial_set(ctx, dcfg, n):
    """N random real training pairs (test transform, or with distill.init_augment the train transform drawn from
    the seed), or noise; S at its start; lrs at lr_teacher."""
    d, train, augment = dcfg, ctx.splits["train"], dcfg["init_augment"]
    meta = {**ctx.artefact_identity(), "method": d["method"], "loss": d["loss"], "metagrad": d["metagrad"],
            "loss_options": loss_options(d), "budget": d["budget"], "seed": d["seed"],
            "init": d["init"], "init_augment": augment}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(d["seed"])
        dset = real_pairs(train, ctx.features["train"], ctx.train_transform if augment else ctx.test_transform,
                          random_pairs(train, n, d["seed"]), meta)
    if d["init"] == "noise":
        gen = torch.Generator().manual_seed(d["seed"])
        dset.images = torch.randn(dset.images.shape, generator=gen)
        feats = ctx.features["train"]
        dset.text_features = feats.mean(0) + feats.std(0) * torch.randn(dset.text_features.shape, generator=gen)
    elif d["init"] != "real":
        raise ValueError(f"distill.init must be real or noise, not {d['init']!r}")
    dset.similarity = Similarity(d["sim_type"], n, d["sim_rank"], d["sim_alpha"],
                                 generator=torch.Generator().manual_seed(d["seed"] + 1))
    dset.lrs = tower_lrs(d["lr_teacher"], "distill.lr_teacher")
    return dset


class Distiller:
    """The learned set, its optimizer and sampler, and the run around `step`. `from_context` builds one
    from a run's data and buffer; the constructor takes the parts (the benchmark passes synthetic ones)."""

    def __init__(self, cfg, student, pool, dset, device, ctx=None, log=tqdm.write):
        self.cfg = {**cfg, "distill": {SEGMENTS_KEY: 1, **cfg["distill"]}}  # a checkpoint records P
        self.dcfg = resolve_method(self.cfg["distill"], trainable_mode(cfg), cfg.get("recipe"))
        self.rank, self.world = rank(), world_size()
        segments_per_rank(self.dcfg, self.world)  # refuses a P the processes cannot share
        self.per_iteration = self.dcfg[SEGMENTS_KEY]
        self.student, self.pool, self.dset, self.device, self.ctx = student, pool, dset, device, ctx
        self.log = log if self.rank == 0 else (lambda _msg: None)  # one rank speaks for all
        self.out_dir = Path(self.dcfg["out_dir"])
        offload = self.dcfg.get("offload", "auto")
        self.offload = ("host" if device.type == "cuda" else "disk") if offload == "auto" else offload
        self.segments = None
        if self.dcfg.get("checkpoint_activations"):
            checkpoint_blocks(student.image)
            chain = build_chain(student.image, student.flat["image"])
            if chain and chain_matches(student.image, chain, dset.images[:2].to(device)):
                self.segments = chain
            else:
                log("distill.checkpoint_activations: this image tower is not a plain chain of blocks (or has active "
                    "dropout); its rebuilt steps run unsegmented")
        self.sampler = Sampler(self.dcfg["seed"], len(pool.files), len(dset), self.dcfg["mini_batch_size"],
                               self.dcfg["minibatches"])
        self._learnables()
        self.board = NoLog()  # run() opens the real one (log.tensorboard); step() alone, as in the benchmark, logs nothing

    @classmethod
    def from_context(cls, ctx, cfg, log=tqdm.write):
        d = resolve_method(cfg["distill"], ctx.trainable, cfg.get("recipe"))
        student = ctx.new_student(d["seed"]).train()
        pool = ExpertPool(cfg["buffer"]["out_dir"], {**ctx.identity(), "train_captions": ctx.splits["train"].fingerprint},
                          student.layouts(), d["max_start_epoch"] - 1 + d["expert_epochs"], ctx.trainable)
        if d["eval_every"] and "val" not in ctx.splits:
            raise ValueError("distill.eval_every > 0 evaluates on the val split: build the RunContext with it")
        n, available = synthetic_pairs(d), len(ctx.splits["train"].captions)
        if not 2 <= n <= available:
            raise ValueError(f"distill.budget {d['budget']} means {n} synthetic pairs ({d['method']}), but the "
                             f"training split has {available} pairs: choose a budget that fits")
        for key in ("mini_batch_size", "sim_rank") if d["sim_type"] == "lowrank" else ("mini_batch_size",):
            if d[key] > n:
                raise ValueError(f"distill.{key} {d[key]} is larger than the {n} synthetic pairs of budget "
                                 f"{d['budget']}; choose at most {n}")
        return cls(cfg, student, pool, initial_set(ctx, d, n), ctx.device, ctx, log)

    def _learnables(self):
        """Leaf tensors on the device and their optimizer (one SGD-momentum group per kind)."""
        d, device = self.dcfg, self.device
        leaf = lambda x: x.detach().to(device).float().requires_grad_(True)  # noqa: E731
        self.syn = {"images": leaf(self.dset.images), "texts": leaf(self.dset.text_features),
                    **{k: leaf(v) for k, v in self.dset.similarity.params.items()}}
        self.lrs = {t: leaf(torch.tensor(float(v))) for t, v in self.dset.lrs.items()}
        groups = [([self.syn["images"]], d["lr_image"]), ([self.syn["texts"]], d["lr_text"]),
                  ([v for k, v in self.syn.items() if k.startswith("sim_")], d["lr_sim"]),
                  (list(self.lrs.values()), d["lr_lr"])]
        self.optimizer = torch.optim.SGD([{"params": p, "lr": lr} for p, lr in groups if p],
                                         lr=d["lr_image"], momentum=d["momentum"])
        self.loss_fn = get_loss(d["loss"], loss_options(d))

    def step(self, iteration):
        """One outer iteration; returns the matching loss, the mean over its segments (raises, changing nothing,
        if it is not finite)."""
        d = self.dcfg
        draws = [self.sampler.segment(d["max_start_epoch"], d["syn_steps"])
                 for _ in range(self.per_iteration)]  # every rank draws all P: the stream stays one
        if self.per_iteration == 1:
            loss, grads = self._segment(*draws[0])
        else:
            loss, grads = self._mean(draws[self.rank::self.world])
        bad = [k for k, g in grads.items() if not torch.isfinite(g).all()]
        if not torch.isfinite(loss) or bad:
            raise FloatingPointError(
                f"distillation iteration {iteration}: the matching loss is {loss.item()}"
                + (f" and the gradients of {', '.join(bad)} are not finite" if bad else "")
                + f"; nothing was written after the last checkpoint in {self.out_dir}. Lower the learning "
                  f"rates (distill.lr_image/lr_text/lr_lr/lr_teacher) or syn_steps")
        self.optimizer.zero_grad(set_to_none=True)
        for name, tensor in self.leaves().items():
            tensor.grad = grads[name]
        self.optimizer.step()
        negative = {t: lr.item() for t, lr in self.lrs.items() if lr.item() <= 0}
        if negative:  # a student that climbs its loss: nothing a set could be evaluated with
            raise FloatingPointError(
                f"distillation iteration {iteration}: the learned student lr became {negative}; nothing was written "
                f"after the last checkpoint in {self.out_dir}. Lower distill.lr_lr (or raise distill.lr_teacher)")
        self.board.iteration(iteration + 1, loss.item(), self.lrs, grads, self.dset.similarity, self.syn)
        return loss.item()

    def _segment(self, expert, start_epoch, batches, seeds):
        """(matching loss, {leaf name: its meta-gradient}) of one segment."""
        d = self.dcfg
        start, target = self.pool.segment(expert, start_epoch, d["expert_epochs"], self.device)
        inner = InnerLoop(self.student, self.loss_fn, self.dset.similarity, batches, seeds, d["blend"],
                          d.get("precision", "fp32"), self.segments)
        loss, syn_grads, lr_grads = meta_gradient(d["metagrad"], inner, start, target, self.lrs, self.syn,
                                                  d["syn_steps"], d["merge_branches"], self.offload,
                                                  self.out_dir / SCRATCH)
        return loss, {**syn_grads, **{f"lr_{t}": g for t, g in lr_grads.items()}}

    def _mean(self, draws):
        """The loss and meta-gradients averaged over the iteration's P segments, of which `draws` are this rank's.
        Summed in float64 (one flat all-reduce), where a sum of a few float32 numbers is all but always exact: the
        mean rounds to the same float32 whichever rank summed which segments, so 1 and G processes make the same
        set (the outer loop amplifies any rounding difference)."""
        total = 0
        for draw in draws:
            loss, grads = self._segment(*draw)
            total = total + torch.cat([loss.reshape(1)] + [g.reshape(-1) for g in grads.values()]).double()
        mean = (all_reduce_sum(total) / self.per_iteration).float()
        parts = mean.split([1] + [g.numel() for g in grads.values()])
        return parts[0][0], {k: part.view_as(g) for (k, g), part in zip(grads.items(), parts[1:])}

    # ---- state, checkpoints, pictures -------------------------------------------------------------

    def leaves(self):
        return {**self.syn, **{f"lr_{t}": v for t, v in self.lrs.items()}}

    def current_set(self):
        """The synthetic set as it stands (CPU copies), each text feature named by its nearest real caption."""
        cpu = {k: v.detach().cpu() for k, v in self.syn.items()}
        sim = Similarity.from_spec(self.dset.similarity.spec(), {k: v for k, v in cpu.items() if k.startswith("sim_")})
        captions = nearest_captions(cpu["texts"], self.ctx.features["train"], self.ctx.splits["train"].captions)
        return DistilledSet(cpu["images"], cpu["texts"], sim, {t: v.item() for t, v in self.lrs.items()},
                            {**self.dset.meta, "captions": captions})

    def save_checkpoint(self, iteration, losses):
        dset = self.current_set()
        momenta = {f"momentum_{name}": self.optimizer.state[p]["momentum_buffer"]
                   for name, p in self.leaves().items() if self.optimizer.state[p].get("momentum_buffer") is not None}
        save_distilled(self.out_dir / "checkpoint.safetensors", dset, {**momenta, **self.sampler.state()},
                       {"iteration": iteration, "losses": losses, "config": self.cfg})
        save_config(self.cfg, self.out_dir / "config.yaml")
        self.draw(dset, iteration)

    def resume(self):
        """(iteration, losses) of the checkpoint in out_dir, its state loaded; (0, []) without one."""
        path = self.out_dir / "checkpoint.safetensors"
        if not path.is_file():
            return 0, []
        dset, extras = load_distilled(path, self.ctx.identity(), with_extras=True)
        saved = dset.meta["config"]
        saved["distill"] = {SEGMENTS_KEY: 1, **saved["distill"]}
        changed = _differences(saved, self.cfg)
        if changed:
            raise ValueError(f"{self.out_dir} holds a run with other settings ({', '.join(changed)} differ); "
                             f"choose another distill.out_dir, or delete that folder to start over")
        iteration, losses = dset.meta["iteration"], dset.meta["losses"]
        dset.meta = {k: v for k, v in dset.meta.items() if k not in RUN_KEYS}
        self.dset = dset
        self._learnables()
        for name, p in self.leaves().items():
            if f"momentum_{name}" in extras:
                self.optimizer.state[p]["momentum_buffer"] = extras[f"momentum_{name}"].to(p.device)
        self.sampler.load_state(extras)
        self.log(f"resuming {path} at iteration {iteration}")
        return iteration, losses

    def draw(self, dset, iteration, limit=100):
        """A grid of (up to `limit`) synthetic images with their nearest captions; the similarity heat map."""
        images = to_uint8(dset.images[:limit], dset.meta["mean"], dset.meta["std"])
        grid = self.out_dir / f"grid_{iteration:05d}.png"
        save_grid(grid, images, dset.meta["captions"][:limit])
        self.board.picture(iteration, "checkpoint/grid", grid)
        if dset.similarity.kind != "identity":
            heatmap = self.out_dir / f"similarity_{iteration:05d}.png"
            save_heatmap(heatmap, dset.similarity.matrix(), f"learned similarity S, iteration {iteration}")
            self.board.picture(iteration, "checkpoint/similarity", heatmap)

    # ---- the run ---------------------------------------------------------------------------------

    def run(self):
        """Distil (resuming a checkpoint of the same settings) while holding out_dir's lock (rank 0 for all ranks);
        returns the final set, also saved."""
        with run_lock(self.out_dir, self.log), open_log(self.cfg, self.out_dir.name, self.rank) as self.board:
            return self._run()

    def _run(self):
        d = self.dcfg
        iteration, losses = self.resume()
        if self.rank == 0:
            remove_stale_temporaries(self.out_dir)
            shutil.rmtree(self.out_dir / SCRATCH, ignore_errors=True)  # θ_i a killed run left behind
        barrier()  # before any rank keeps its own θ_i there
        final = self.out_dir / "distilled.safetensors"
        bar = tqdm(range(iteration, d["iterations"]), initial=iteration, total=d["iterations"],
                   desc=f"distill {d['method']} ({d['metagrad']})", disable=self.rank > 0)
        for iteration in bar:
            losses.append(self.step(iteration))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", lr_image=f"{self.lrs['image'].item():.3g}",
                            lr_text=f"{self.lrs['text'].item():.3g}")
            done = iteration + 1
            if self.rank == 0 and (done % d["checkpoint_every"] == 0 or done == d["iterations"]):
                self.save_checkpoint(done, losses)
            if d["eval_every"] and done % d["eval_every"] == 0:
                self.evaluate(done)
        dset = self.current_set()
        if self.rank == 0:
            save_distilled(final, dset, extra_meta={"iteration": len(losses), "losses": losses, "config": self.cfg})
            self.log(f"distilled set ({len(dset)} pairs) written to {final}")
        return dset

    def evaluate(self, iteration):
        ecfg = {**self.cfg["evaluate"], "students": self.dcfg["eval_students"], "checkpoint_every": 0}
        curves = student_curves(self.ctx, self.current_set(), ecfg, ("val",), log=lambda _: None)
        recall = mean_std([curve["val"][-1] for curve in curves])
        self.board.recall(iteration, "val", recall)
        self.log(f"iteration {iteration}: val mean recall {recall['mean'][0]:.2f} ± {recall['mean'][1]:.2f} "
                 f"({ecfg['students']} students)")


def _differences(saved, current, prefix=""):
    """Dotted keys whose values differ, ignoring the distill keys a resumed run may change."""
    keys = sorted(set(saved) | set(current))
    out = []
    for key in keys:
        name = f"{prefix}{key}"
        a, b = saved.get(key), current.get(key)
        if name in RESUMABLE_KEYS:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{name}.")
        elif a != b:
            out.append(name)
    return out
