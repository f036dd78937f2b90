"""What the benchmarks share: peak-memory accounting, device sync, one child process per measured case
(so each case's peak memory is its own), and an image tower that falls back to random init offline."""
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

MARK = "BENCH_RESULT "  # prefix of a child's one JSON line on stdout


def reset_peak(device):
    """Start counting peak memory now (after set-up), so that loading does not set the figure;
    returns the memory in use now (MiB), or None when the peak cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / 2**20
    try:  # Linux: "5" resets the process's peak RSS (which ru_maxrss reports) to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except OSError:
        return None


def peak_memory(device, baseline):
    """{memory, baseline, memory_kind}: peak since reset_peak (or since start) and the set-up level."""
    when = "training" if baseline is not None else "whole process"
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device) / 2**20, f"peak GPU MiB allocated ({when})"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, f"peak RSS MiB ({when})"
    return {"memory": peak, "baseline": baseline, "memory_kind": kind}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def emit(result):
    """A child's answer: one marked JSON line on stdout."""
    print(MARK + json.dumps(result), flush=True)


def answered_as_child(cfg, args, run_case):
    """In a child process (`--case` given): measure with `run_case(cfg, args)`, print the answer, and say so."""
    if args.case:
        emit(run_case(cfg, args))
    return bool(args.case)


def run_child(script, argv, label):
    """Run `script argv` in a fresh process; echo its output, return its JSON answer (None if it failed)."""
    env = dict(os.environ, TQDM_DISABLE="1")  # no progress bars in the figures
    start = time.time()
    proc = subprocess.run([sys.executable, script, *argv], env=env, stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.splitlines()
    for line in lines:
        if not line.startswith(MARK):
            print(f"  [{label}] {line}")
    found = [json.loads(line[len(MARK):]) for line in lines if line.startswith(MARK)]
    print(f"{label}: {'done' if found and not proc.returncode else f'FAILED (exit {proc.returncode})'} "
          f"in {time.time() - start:.1f} s (process, incl. loading)")
    return found[-1] if found and not proc.returncode else None


def image_tower(model_cfg, random_weights, cache_dir):
    """(tower, description): the config's image tower with its real weights, else random init (said so)."""
    from networks.encoders import ImageTower
    name, why = model_cfg["image_encoder"], "--random-weights"
    if not random_weights:
        try:
            return ImageTower(name, model_cfg.get("image_weights"), cache_dir), f"{name} (real weights)"
        except (OSError, RuntimeError, ValueError) as err:  # ModelNotFoundError is a RuntimeError
            why = f"{model_cfg.get('image_weights')} weights not available: {type(err).__name__}"
    return ImageTower(name, None), f"{name} (random init; {why})"
