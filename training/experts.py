"""Expert trajectories (docs/methods.md §3): train fresh students on the real data and save θ every epoch.

Resumable: finished experts are kept, an interrupted one (a temporary file, never a final one) is redone.
Under `torchrun --nproc-per-node G`, expert i is trained by rank i mod G.
"""
import time
from pathlib import Path

import torch.distributed as dist
from tqdm import tqdm

from common.config import save_config
from common.distributed import processes
from common.io import remove_stale_temporaries, run_lock
from common.tensorboard import open_log, tensorboard_dir
from training.context import RunContext
from training.fit import pair_loader, student_optimizer, train_epoch
from training.recipe import ITEMS, recipe_differences
from training.trajectories import (TrajectoryError, check_compatible, expert_files, expert_index, expert_path,
                                   load_expert, read_metadata, read_snapshots, save_expert)


def expert_seed(base_seed, index):
    """Distinct, reproducible seed per expert (an expert redone after a crash is the same expert)."""
    return base_seed * 100_003 + index


def experts_of_rank(num_experts, rank, world_size):
    return list(range(rank, num_experts, world_size))


def run_buffer(cfg, log=tqdm.write):
    """Train the experts of this process's shard; on rank 0, return {index: metadata} of all finished experts."""
    out_dir = Path(cfg["buffer"]["out_dir"])
    with processes(cfg["device"], cfg) as (rank, world, device), run_lock(out_dir, log):
        return _train_shard(cfg, out_dir, rank, world, device, log)


def _train_shard(cfg, out_dir, rank, world, device, log):
    bcfg = cfg["buffer"]
    board = tensorboard_dir(cfg)  # a missing package stops every rank before any compute
    if rank > 0:
        dist.barrier()  # rank 0 checks the folder and builds the caches first
    ctx = RunContext(cfg, splits=("train", "test"), device=device, log=log)
    identity = {**ctx.identity(), "train_captions": ctx.splits["train"].fingerprint,
                "epochs": bcfg["epochs"], "dtype": bcfg["dtype"]}
    layouts = ctx.new_student(0).layouts()
    if rank == 0:
        _check_existing(out_dir, identity, layouts, ctx.trainable, bcfg)
        remove_stale_temporaries(out_dir)
        save_config(cfg, out_dir / "config.yaml")
        if world > 1:
            dist.barrier()
    todo = [i for i in experts_of_rank(bcfg["num_experts"], rank, world) if not expert_path(out_dir, i).is_file()]
    log(f"buffer: {bcfg['num_experts']} experts × {bcfg['epochs']} epochs in {out_dir}; "
        f"{len(todo)} to train on {ctx.device}" + (f" (rank {rank} of {world})" if world > 1 else "")
        + (f"; follow them with tensorboard --logdir {board}" if board and todo else ""))
    for index in tqdm(todo, desc=f"experts (rank {rank})", disable=len(todo) < 2):
        train_expert(ctx, index, identity, layouts, out_dir, log)
    if world > 1:
        dist.barrier()
    if rank > 0:
        return {}
    return {expert_index(p): read_metadata(p) for p in expert_files(out_dir)}


# What makes an expert besides the model, data and recipe (ctx.identity): an existing buffer is extended only by
# experts of the same settings. The other buffer keys (num_experts, eval_every, out_dir) may differ between runs.
EXPERT_KEYS = ("lr_image", "lr_text", "momentum", "batch_size", "augment", "seed")


def _check_existing(out_dir, identity, layouts, trainable, bcfg):
    """Before anything is written: every expert already there must come from the same settings."""
    for path in expert_files(out_dir):
        meta = read_metadata(path)
        check_expert(meta, identity, layouts, trainable, path)
        made = (meta.get("config") or {}).get("buffer", {})
        differing = [k for k in EXPERT_KEYS if made.get(k, bcfg.get(k)) != bcfg.get(k)]
        if differing:
            raise TrajectoryError(
                f"buffer {out_dir} holds experts made with other settings ("
                + ", ".join(f"buffer.{k} {made[k]}, this run {bcfg.get(k)}" for k in differing)
                + f", in {path.name}); only {', '.join(f'buffer.{k}' for k in ('num_experts', 'eval_every'))} may "
                  "change between runs into one buffer: use the buffer's settings or another buffer.out_dir")


PARAMETERS = {"full": "full towers", "heads": "projection heads only"}  # what each model.trainable trains


def check_expert(meta, identity, layouts, trainable, path):
    """`check_compatible`, first saying plainly when the file holds other parameters than this run trains
    (model.trainable); files from before that key hold full towers."""
    found = meta.get("trainable", "full")
    if found != trainable:
        raise TrajectoryError(
            f"buffer {path} holds {PARAMETERS[found]} (model.trainable: {found}) but this run trains "
            f"{PARAMETERS[trainable]} (model.trainable: {trainable}); point buffer.out_dir at a buffer made with "
            f"model.trainable: {trainable} (configs/<dataset>/buffer{'_heads' if trainable == 'heads' else ''}.yaml "
            f"makes one), or set model.trainable: {found}")
    wanted = identity.get("recipe")
    differing = recipe_differences(meta.get("recipe"), wanted) if wanted is not None else []
    if differing:
        made = meta.get("recipe") or {}
        raise TrajectoryError(
            f"buffer {path} was made with another expert recipe: "
            + ", ".join(f"{k} {made.get(k, ITEMS[k][0])} (this run: {wanted[k]})" for k in differing)
            + "; the expert details must agree between buffer.py and distill.py (only distill.* keys may differ): "
              "set them as the buffer has them, or point buffer.out_dir at a buffer made with this config")
    check_compatible(meta, {k: v for k, v in identity.items() if k != "recipe"}, layouts, path)


def expert_setup(ctx, seed):
    """The expert recipe of the config's `buffer` section: (fresh student, its SGD optimizer, train loader)."""
    bcfg = ctx.cfg["buffer"]
    student = ctx.new_student(seed)
    optimizer = student_optimizer(student, bcfg["lr_image"], bcfg["lr_text"], bcfg["momentum"])
    transform = ctx.train_transform if bcfg["augment"] else ctx.test_transform
    loader = pair_loader(ctx.splits["train"], transform, bcfg["batch_size"], seed,
                         ctx.cfg["data"]["num_workers"], ctx.recipe["buffer.drop_last"], ctx.image_cache)
    return student, optimizer, loader


def fit_expert(ctx, seed, on_epoch, log=tqdm.write, name="expert", on_batch=None):
    """Train a fresh student with the expert recipe (SGD, per-tower lr, InfoNCE) for buffer.epochs;
    `on_epoch(epoch, student, loss)` runs after init (epoch 0, loss None) and after every epoch,
    `on_batch(caption_indices, logits)` after every batch's forward pass."""
    bcfg = ctx.cfg["buffer"]
    student, optimizer, loader = expert_setup(ctx, seed)
    text_source = ctx.expert_text_source(seed)
    on_epoch(0, student, None)
    for epoch in range(1, bcfg["epochs"] + 1):
        loss = train_epoch(student, loader, text_source, optimizer, ctx.device, desc=f"{name} epoch {epoch}",
                           on_batch=on_batch)
        line = on_epoch(epoch, student, loss)
        log(f"{name} epoch {epoch}/{bcfg['epochs']}: train loss {loss:.4f}" + (line or ""))
    return student


def train_expert(ctx, index, identity, layouts, out_dir, log=tqdm.write):
    """Train expert `index` and write its trajectory file (atomically, at the end); with log.tensorboard, its loss
    and test recall per epoch go to DIR/<buffer folder>/expert_<index> (one folder per expert, whatever the rank)."""
    bcfg = ctx.cfg["buffer"]
    seed = expert_seed(bcfg["seed"], index)
    snapshots, losses, recalls = {tower: [] for tower in layouts}, [], {}
    eval_every = bcfg["eval_every"]
    board = open_log(ctx.cfg, f"{Path(out_dir).resolve().name}/expert_{index:03d}")

    def record(epoch, student, loss):
        for tower, theta in student.flatten().items():
            snapshots[tower].append(theta.cpu())
        if loss is not None:
            losses.append(loss)
            board.scalars(epoch, {"train/loss": loss})
        if eval_every and (epoch % eval_every == 0 or epoch == bcfg["epochs"]):
            recalls[epoch] = ctx.recall(student, "test")
            board.recall(epoch, "test", recalls[epoch])
            return f", test mean recall {recalls[epoch]['mean']:.2f}"

    start = time.time()
    with board:
        fit_expert(ctx, seed, record, log, name=f"expert {index}")
    log(f"expert {index} trained in {time.time() - start:.0f} s")  # said, not stored: the file repeats byte for byte
    metadata = {**identity, "trainable": ctx.trainable, "expert": index, "seed": seed, "train_loss": losses,
                "test_recall": recalls, "config": ctx.cfg}
    metadata.update({f"layout_{tower}": layout for tower, layout in layouts.items()})
    save_expert(expert_path(out_dir, index), snapshots, metadata, bcfg["dtype"])


def expert_students(ctx, path, epochs=None):
    """[(epoch, student at that snapshot)] of one expert file (default: its first and last epochs) and the
    file's metadata; the file must match this run's encoders, image size, model.trainable and parameter layout."""
    identity = {k: v for k, v in ctx.identity().items() if k != "dataset"}
    check_expert(read_metadata(path), identity, ctx.new_student(0).layouts(), ctx.trainable, path)
    snapshots, meta = load_expert(path)
    last = snapshots["image"].shape[0] - 1
    students = []
    for epoch in epochs if epochs is not None else [0, last]:
        if not 0 <= epoch <= last:
            raise TrajectoryError(f"{path} holds epochs 0..{last}; epoch {epoch} does not exist")
        student = ctx.new_student(0)
        student.load_flat({tower: thetas[epoch] for tower, thetas in snapshots.items()})
        students.append((epoch, student))
    return students, meta


class ExpertPool:
    """The buffer's expert files, all checked up front; a segment (θ_s, θ_{s+E}) is read when needed."""

    def __init__(self, buffer_dir, identity, layouts, last_epoch, trainable="full", needed_by="distillation"):
        self.files = expert_files(buffer_dir)
        if not self.files:
            raise TrajectoryError(f"no expert files (expert_*.safetensors) in {buffer_dir}, which {needed_by} reads: "
                                  f"run buffer.py with this config first, or point buffer.out_dir at a finished "
                                  f"buffer")
        for path in self.files:
            meta = read_metadata(path)
            check_expert(meta, identity, layouts, trainable, path)
            saved = meta["shapes"]["image"][0] - 1
            if saved < last_epoch:
                raise TrajectoryError(f"buffer file {path} holds epochs 0..{saved}, but {needed_by} reads up to "
                                      f"epoch {last_epoch}; lower distill.max_start_epoch (or expert_epochs) or "
                                      f"train experts for more epochs")

    def segment(self, expert, start, span, device):
        """(θ_start, θ_{start+span}) of one expert, {tower: flat θ} each."""
        return tuple(self.snapshots(expert, [start, start + span], device))

    def snapshots(self, expert, epochs, device):
        """[{tower: flat θ}] of one expert at each of `epochs`."""
        snaps = read_snapshots(self.files[expert], epochs)
        return [{t: v[i].to(device) for t, v in snaps.items()} for i in range(len(epochs))]
