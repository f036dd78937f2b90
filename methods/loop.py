"""The one outer loop of every distillation method: iterations, the distributed mean, checkpoints and resume,
pictures, validation recall and TensorBoard. What a method does in an iteration is its `Method` (below), built by its
registry entry (methods/registry.py).

Learned: the set's tensors, the "leaves": `images`, `texts`, the similarity factors `sim_*` and, where the method
learns them, one student lr per tower (`lr_image`, `lr_text`; parameterised as `distill.lr_space` says: `LearnedLrs`).
Each iteration the method draws
`segments_per_iteration` (P) work items from its one seeded stream, computes the loss and the leaves' gradients of
each, and the loop takes one SGD-with-momentum step along their mean. Under torchrun every rank draws all P and
computes its share (P a multiple of the world size); the sums are all-reduced in float64, so each rank takes the step
one process takes computing all P in turn. Rank 0 alone writes. Every `checkpoint_every` iterations the state (set,
momenta, the method's stream) is written so that a killed run resumes to the same result, with any number of
processes; a non-finite loss or gradient stops the run before anything is written.
"""
import copy
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from artefacts.distilled import DistilledSet, load_distilled, save_distilled
from artefacts.pairs import nearest_captions
from common.config import Schema, differing_keys, resolve, save_config
from common.distributed import all_reduce_sum, barrier, rank, world_size
from common.errors import ConfigError, DivergedError
from common.io import remove_stale_temporaries, run_lock
from common.tensorboard import NoLog, open_log
from common.visuals import save_grid, save_heatmap, to_uint8
from evaluation.students import mean_std, student_curves
from methods.registry import get_method, method_keys, resolve_method
from training.similarity import Similarity

# What a resumed run may change: how long, how often to save or evaluate, where things live.
RESUMABLE_KEYS = {"distill.iterations", "distill.checkpoint_every", "distill.eval_every", "distill.eval_students",
                  "distill.out_dir", "distill.offload", "distill.checkpoint_activations", "device", "cache_dir",
                  "evaluate", "log"}  # (checkpointing changes no number; distill.precision does, so it is not here)
RUN_KEYS = ("iteration", "losses", "config", "format")  # metadata of a checkpoint, not of the set
BEST = "best_val.safetensors"  # with eval_every: the set of the iteration whose students did best on val


class Method:
    """What a registered method builds for one run (`MethodSpec.build(ctx, cfg, d, log)`); the loop owns the rest.

    - `initial_set`: the DistilledSet at iteration 0 (its metadata says what made it);
    - `groups(leaves)`: [(leaf names, lr)], one SGD-momentum group each, in a fixed order;
    - `advance(iteration)`: once per iteration, on every rank alike, before the work (a model that moves);
    - `draw()`: the next work item from the method's seeded stream (every rank draws every item);
    - `gradient(item, leaves, dset)`: (loss tensor, {leaf name: gradient}) of one item, `dset` the set as it stands;
    - `state()` / `load_state(tensors)`: the stream's state, saved in each checkpoint;
    - `check(iteration, leaves)`: refuse leaves that left their range after a step (raise DivergedError);
    - `scratch`: a folder under out_dir the method may fill during an iteration (emptied before and after the run).
    """
    scratch = None

    def advance(self, iteration):
        pass

    def state(self):
        return {}

    def load_state(self, tensors):
        pass

    def check(self, iteration, leaves):
        pass


class LearnedLrs:
    """How the student lrs a method learns are parameterised (`distill.lr_space`), the start lr₀ of each tower given:
    - raw: the parameter is the lr itself, as in the public LoRS code; a step can take it below zero (refused);
    - log: the parameter u gives lr = lr₀·exp(u/lr₀): lr₀ + u to first order, so distill.lr_lr keeps its meaning
      near the start, and the lr stays positive however far u goes (each step moves it by a factor, not an amount).
    """

    def __init__(self, start, space):
        self.start, self.log = start, space == "log"

    def parameter(self, tower, lr):
        return self.start[tower] * torch.log(lr / self.start[tower]) if self.log else lr

    def value(self, tower, u):
        return self.start[tower] * torch.exp(u / self.start[tower]) if self.log else u

    def gradient(self, tower, u, grad):
        """The gradient with respect to the parameter `u`, from the one with respect to the lr."""
        return grad * torch.exp(u / self.start[tower]) if self.log else grad


def work_per_rank(dcfg, world):
    """The work items each of `world` processes computes in an iteration: P / world."""
    per_iteration = dcfg["segments_per_iteration"]
    if per_iteration % world:
        raise ConfigError(f"distill.segments_per_iteration {per_iteration} is not a multiple of the {world} processes "
                          f"of this run: every process computes the same number of segments; set it to a multiple "
                          f"of {world} (e.g. {world * max(1, per_iteration // world)}), or run a number of "
                          f"processes that divides {per_iteration}")
    return per_iteration // world


class Distillation:
    """The learned set, its optimizer and the run around `step`. `from_context` builds one from a run's data (and
    buffer, for the methods that need one); the constructor takes a built `Method` (the benchmark passes one on
    synthetic parts)."""

    def __init__(self, cfg, d, method, device, ctx=None, log=tqdm.write):
        self.cfg, self.dcfg, self.method, self.device, self.ctx = cfg, d, method, device, ctx
        self.rank, self.world = rank(), world_size()
        work_per_rank(d, self.world)  # refuses a P the processes cannot share
        self.per_iteration = d["segments_per_iteration"]
        self.log = log if self.rank == 0 else (lambda _msg: None)  # one rank speaks for all
        self.out_dir = Path(d["out_dir"])
        self.dset = method.initial_set
        self.lr_space = LearnedLrs(self.dset.lrs or {}, d["lr_space"])
        self._learnables()
        self.board = NoLog()  # run() opens the real one (log.tensorboard); step() alone, as in the benchmark, logs nothing

    @classmethod
    def from_context(cls, ctx, cfg, log=tqdm.write):
        cfg = resolve(copy.deepcopy(cfg), Schema(method_keys()))  # every key present, whoever built the config
        d = resolve_method(cfg["distill"], ctx.trainable, cfg["recipe"])
        if d["eval_every"] and "val" not in ctx.splits:
            raise ConfigError("distill.eval_every > 0 evaluates on the val split: build the RunContext with it")
        return cls(cfg, d, get_method(d["method"]).build(ctx, cfg, d, log), ctx.device, ctx, log)

    def _learnables(self, lr_parameters=None):
        """Leaf tensors on the device and their optimizer (one SGD-momentum group per kind); `lr_parameters`: the
        lrs' parameters as a checkpoint saved them (exact; otherwise computed from the set's lrs)."""
        leaf = lambda x: x.detach().to(self.device).float().requires_grad_(True)  # noqa: E731
        self.syn = {"images": leaf(self.dset.images), "texts": leaf(self.dset.text_features),
                    **{k: leaf(v) for k, v in self.dset.similarity.params.items()}}
        lr_parameters = lr_parameters or {t: self.lr_space.parameter(t, torch.tensor(float(v)))
                                          for t, v in (self.dset.lrs or {}).items()}
        self.lr_parameters = {t: leaf(u) for t, u in lr_parameters.items()}
        leaves = self.leaves()
        groups = [([leaves[name] for name in names], lr) for names, lr in self.method.groups(leaves)]
        self.optimizer = torch.optim.SGD([{"params": p, "lr": lr} for p, lr in groups if p],
                                         lr=groups[0][1], momentum=self.dcfg["momentum"])

    def leaves(self):
        """What the optimizer moves: the set's tensors and the lrs' parameters."""
        return {**self.syn, **{f"lr_{t}": u for t, u in self.lr_parameters.items()}}

    def lrs(self):
        """{tower: the learned lr as a tensor}."""
        return {t: self.lr_space.value(t, u.detach()) for t, u in self.lr_parameters.items()}

    def values(self):
        """What a method computes with: the set's tensors and the lrs themselves (in log space, fresh leaves of their
        values: the method's gradients are with respect to the lrs; `step` takes them to the parameters)."""
        if not self.lr_space.log:
            return self.leaves()
        return {**self.syn, **{f"lr_{t}": lr.requires_grad_(True) for t, lr in self.lrs().items()}}

    def _gradient(self, item):
        loss, grads = self.method.gradient(item, self.values(), self.dset)
        for t, u in self.lr_parameters.items():
            grads[f"lr_{t}"] = self.lr_space.gradient(t, u.detach(), grads[f"lr_{t}"])
        return loss, grads

    def step(self, iteration):
        """One outer iteration; returns its loss, the mean over its work items (raises, changing nothing, if it is
        not finite)."""
        self.method.advance(iteration)
        draws = [self.method.draw() for _ in range(self.per_iteration)]  # every rank draws all P: the stream stays one
        if self.per_iteration == 1:
            loss, grads = self._gradient(draws[0])
        else:
            loss, grads = self._mean(draws[self.rank::self.world])
        bad = [k for k, g in grads.items() if not torch.isfinite(g).all()]
        if not torch.isfinite(loss) or bad:
            raise DivergedError(
                f"distillation iteration {iteration}: the matching loss is {loss.item()}"
                + (f" and the gradients of {', '.join(bad)} are not finite" if bad else "")
                + f"; nothing was written after the last checkpoint in {self.out_dir}. Lower the learning "
                  f"rates (distill.lr_image/lr_text/lr_lr/lr_teacher) or syn_steps")
        self.optimizer.zero_grad(set_to_none=True)
        for name, tensor in self.leaves().items():
            tensor.grad = grads[name]
        self.optimizer.step()
        self.method.check(iteration, self.values())
        self.board.iteration(iteration + 1, loss.item(), self.lrs(), grads, self.dset.similarity, self.syn)
        return loss.item()

    def _mean(self, draws):
        """The loss and gradients averaged over the iteration's P work items, of which `draws` are this rank's.
        Summed in float64 (one flat all-reduce), where a sum of a few float32 numbers is all but always exact: the
        mean rounds to the same float32 whichever rank summed which items, so 1 and G processes make the same
        set (the outer loop amplifies any rounding difference)."""
        total = 0
        for draw in draws:
            loss, grads = self._gradient(draw)
            total = total + torch.cat([loss.reshape(1)] + [g.reshape(-1) for g in grads.values()]).double()
        mean = (all_reduce_sum(total) / self.per_iteration).float()
        parts = mean.split([1] + [g.numel() for g in grads.values()])
        return parts[0][0], {k: part.view_as(g) for (k, g), part in zip(grads.items(), parts[1:])}

    # ---- state, checkpoints, pictures -------------------------------------------------------------

    def current_set(self):
        """The synthetic set as it stands (CPU copies), each text feature named by its nearest real caption."""
        cpu = {k: v.detach().cpu() for k, v in self.syn.items()}
        sim = Similarity.from_spec(self.dset.similarity.spec(), {k: v for k, v in cpu.items() if k.startswith("sim_")})
        captions = nearest_captions(cpu["texts"], self.ctx.features["train"], self.ctx.splits["train"].captions)
        lrs = {t: v.item() for t, v in self.lrs().items()} if self.dset.lrs is not None else None
        return DistilledSet(cpu["images"], cpu["texts"], sim, lrs, {**self.dset.meta, "captions": captions})

    def save_checkpoint(self, iteration, losses):
        dset = self.current_set()
        momenta = {f"momentum_{name}": self.optimizer.state[p]["momentum_buffer"]
                   for name, p in self.leaves().items() if self.optimizer.state[p].get("momentum_buffer") is not None}
        parameters = {f"lr_parameter_{t}": u.detach() for t, u in self.lr_parameters.items()}  # exact on resume
        save_distilled(self.out_dir / "checkpoint.safetensors", dset,
                       {**momenta, **parameters, **self.method.state()},
                       {"iteration": iteration, "losses": losses, "config": self.cfg})
        save_config(self.cfg, self.out_dir / "config.yaml")
        self.draw(dset, iteration)

    def resume(self):
        """(iteration, losses) of the checkpoint in out_dir, its state loaded; (0, []) without one."""
        path = self.out_dir / "checkpoint.safetensors"
        if not path.is_file():
            return 0, []
        dset, extras = load_distilled(path, self.ctx.identity(), with_extras=True)
        saved = resolve(dset.meta["config"], Schema(method_keys()))  # keys added since: their defaults
        changed = differing_keys(saved, self.cfg, RESUMABLE_KEYS)
        if changed:
            raise ConfigError(f"{self.out_dir} holds a run with other settings ({', '.join(changed)} differ); "
                              f"choose another distill.out_dir, or delete that folder to start over")
        iteration, losses = dset.meta["iteration"], dset.meta["losses"]
        dset.meta = {k: v for k, v in dset.meta.items() if k not in RUN_KEYS}
        self.dset = dset
        self._learnables({t: extras[f"lr_parameter_{t}"] for t in dset.lrs or {} if f"lr_parameter_{t}" in extras})
        for name, p in self.leaves().items():
            if f"momentum_{name}" in extras:
                self.optimizer.state[p]["momentum_buffer"] = extras[f"momentum_{name}"].to(p.device)
        self.method.load_state(extras)
        self.log(f"resuming {path} at iteration {iteration}")
        if self.rank == 0 and not all(picture.is_file() for picture in self.pictures(dset, iteration)):
            self.draw(dset, iteration)  # killed after the checkpoint was written, before its pictures were
        return iteration, losses

    def pictures(self, dset, iteration):
        """The files `draw` writes for a checkpoint: its image grid, and the heat map of a learned similarity."""
        grid, heatmap = self.out_dir / f"grid_{iteration:05d}.png", self.out_dir / f"similarity_{iteration:05d}.png"
        return [grid] if dset.similarity.kind == "identity" else [grid, heatmap]

    def draw(self, dset, iteration, limit=100):
        """A grid of (up to `limit`) synthetic images with their nearest captions; the similarity heat map."""
        images = to_uint8(dset.images[:limit], dset.meta["mean"], dset.meta["std"])
        grid, *heatmap = self.pictures(dset, iteration)
        save_grid(grid, images, dset.meta["captions"][:limit])
        self.board.picture(iteration, "checkpoint/grid", grid)
        for path in heatmap:
            save_heatmap(path, dset.similarity.matrix(), f"learned similarity S, iteration {iteration}")
            self.board.picture(iteration, "checkpoint/similarity", path)

    # ---- the run ---------------------------------------------------------------------------------

    def run(self):
        """Distil (resuming a checkpoint of the same settings) while holding out_dir's lock (rank 0 for all ranks);
        returns the final set, also saved."""
        with run_lock(self.out_dir, self.log), open_log(self.cfg, self.out_dir.name, self.rank) as self.board:
            return self._run()

    def _scratch(self):
        if self.rank == 0 and self.method.scratch:
            shutil.rmtree(self.method.scratch, ignore_errors=True)  # what a killed run (or this one) left there

    def _run(self):
        d = self.dcfg
        iteration, losses = self.resume()
        if self.rank == 0:
            remove_stale_temporaries(self.out_dir)
        self._scratch()
        barrier()  # before any rank keeps its own files in the scratch folder
        final = self.out_dir / "distilled.safetensors"
        bar = tqdm(range(iteration, d["iterations"]), initial=iteration, total=d["iterations"],
                   desc=f"distill {d['method']}" + (f" ({d['metagrad']})" if d.get("metagrad") else ""),
                   disable=self.rank > 0)
        for iteration in bar:
            losses.append(self.step(iteration))
            bar.set_postfix(loss=f"{losses[-1]:.4f}", **{f"lr_{t}": f"{v.item():.3g}" for t, v in self.lrs().items()})
            done = iteration + 1
            if self.rank == 0 and (done % d["checkpoint_every"] == 0 or done == d["iterations"]):
                self.save_checkpoint(done, losses)
            if d["eval_every"] and done % d["eval_every"] == 0:
                self.evaluate(done)
        dset = self.current_set()
        if self.rank == 0:
            save_distilled(final, dset, extra_meta={"iteration": len(losses), "losses": losses, "config": self.cfg})
            self.log(f"distilled set ({len(dset)} pairs) written to {final}")
        barrier()  # every rank is done with the scratch folder
        self._scratch()
        return dset

    def evaluate(self, iteration):
        """Quick students on val; the set of the best iteration so far is kept as best_val.safetensors (labelled
        as chosen on val), so the iteration is chosen without the test split."""
        ecfg = {**self.cfg["evaluate"], "students": self.dcfg["eval_students"], "checkpoint_every": 0}
        dset = self.current_set()
        curves = student_curves(self.ctx, dset, ecfg, ("val",), log=lambda _: None)
        recall = mean_std([curve["val"][-1] for curve in curves])
        self.board.recall(iteration, "val", recall)
        self.log(f"iteration {iteration}: val mean recall {recall['mean'][0]:.2f} ± {recall['mean'][1]:.2f} "
                 f"({ecfg['students']} students)")
        best = self.out_dir / BEST
        if self.rank == 0 and (not best.is_file() or recall["mean"][0] > load_distilled(best).meta["val_mean_recall"]):
            save_distilled(best, dset, extra_meta={"iteration": iteration, "chosen_on": "val",
                                                   "val_mean_recall": recall["mean"][0], "config": self.cfg})
