"""Several processes under torchrun (one node or several): joining the process group, and the few collectives the
entry points use. Outside torchrun (WORLD_SIZE unset or 1) no group is made and every helper is the single-process
identity, so the same code runs both ways.

Backend: nccl when the processes compute on GPUs (one GPU each, LOCAL_RANK), gloo on the CPU; the environment
variable MMDD_BACKEND=nccl|gloo overrides the choice. Collectives time out after MMDD_TIMEOUT minutes (default 30): a
rank that died or hangs ends the job rather than leaving the others waiting for ever.
"""
import os
import sys
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from common.config import differing_keys
from common.errors import ConfigError, InputError

BACKENDS = ("nccl", "gloo")
TIMEOUT_MINUTES = 30


def pick_device(name="auto"):
    """The torch device of a config's `device`: auto (a GPU when there is one), cpu, cuda, cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        found = f"{torch.cuda.device_count()} GPU(s)" if torch.cuda.is_available() else "no GPU"
        raise ConfigError(f"device {name} was asked for, but this machine has {found} that torch can use: "
                          f"use --device cpu (or auto, a GPU when there is one)")
    return device


def launched():
    """(rank, world size) that torchrun gave this process: (0, 1) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def join(device="auto"):
    """(rank, world size, device) of this process, `device` being the config's (auto, cpu, cuda); under torchrun,
    joins the process group first, each process on its own GPU (LOCAL_RANK) when the device is a GPU."""
    rank, world = launched()
    device = pick_device(device)
    if world > 1 and not dist.is_initialized():
        backend = choose_backend(device)
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        dist.init_process_group(backend, timeout=timeout())
    return rank, world, device


def leave():
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def processes(device="auto", cfg=None):
    """`join` for the block, then leave the group; a rank whose block raises says so on stderr, prefixed with its
    rank (torchrun then stops the other ranks and exits with the failure). With `cfg`, the ranks first check that
    they were given the same resolved config."""
    rank, world, device = join(device)
    try:
        if world > 1 and cfg is not None:
            agree(cfg)
        yield rank, world, device
    except Exception as err:
        if world > 1:
            print(f"rank {rank} of {world} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        raise
    finally:
        leave()


def agree(cfg):
    """Stop the job when a rank's resolved config differs from rank 0's (one process given another lr would
    silently change the result), naming the keys."""
    configs = gather(cfg)
    differ = sorted({key for other in configs[1:] for key in differing_keys(configs[0], other)})
    if differ:
        raise ConfigError(f"the {len(configs)} processes of this job were given different configs ({', '.join(differ)} "
                          f"differ from rank 0's): start every process with the same command")


def choose_backend(device):
    """nccl for GPU processes, gloo for CPU ones, unless MMDD_BACKEND says which."""
    wanted = os.environ.get("MMDD_BACKEND") or ("nccl" if device.type == "cuda" else "gloo")
    if wanted not in BACKENDS:
        raise InputError(f"MMDD_BACKEND={wanted!r}: choose nccl (GPUs) or gloo (CPUs), or unset it")
    if wanted == "nccl" and (device.type != "cuda" or not dist.is_nccl_available()):
        why = "this run computes on the CPU" if torch.cuda.is_available() else "no GPU is visible to torch here"
        raise InputError(f"the nccl backend (MMDD_BACKEND=nccl) needs one GPU per process, but {why}; use "
                         f"MMDD_BACKEND=gloo (or unset it) to run the processes on the CPU")
    return wanted


def timeout():
    raw = os.environ.get("MMDD_TIMEOUT", str(TIMEOUT_MINUTES))
    try:
        minutes = float(raw)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise InputError(f"MMDD_TIMEOUT={raw!r}: the minutes a collective may wait, a number > 0 (default "
                         f"{TIMEOUT_MINUTES})")
    return timedelta(minutes=minutes)


def rank():
    return dist.get_rank() if dist.is_initialized() else 0


def world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def share(items):
    """This rank's items: item i goes to rank i mod world size."""
    return list(items)[rank()::world_size()]


def gather(obj):
    """[obj of rank 0, obj of rank 1, …] on every rank (any picklable object)."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor):
    """`tensor`, summed over the ranks in place."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def barrier():
    if dist.is_initialized():
        dist.barrier()


@contextmanager
def rank_zero_first():
    """Rank 0 runs the block (building caches, checking an output folder) before the other ranks run theirs."""
    if rank() > 0:
        barrier()
    yield
    if rank() == 0:
        barrier()
