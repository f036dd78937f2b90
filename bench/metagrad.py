"""Time and peak memory of one distillation iteration for each meta-gradient mode and number of inner steps.

    python bench/metagrad.py [--config configs/tuxpaint/lors.yaml] [--steps 4 8 16 32] [--modes unroll tesla exact]
        the demo's student (EfficientNet-Lite0 with its real weights, 64 px) and LoRS settings
    python bench/metagrad.py --config configs/flickr30k/lors_100.yaml --steps 8 --modes tesla exact
        the Flickr30K LoRS-100 setting (NFNet-l0 + BERT-base head, 224 px, 99 pairs, minibatch 20); on a GPU
    … --checkpointing off on [--distill.precision bf16]
        each case without and with activation checkpointing (distill.checkpoint_activations), in one table

One iteration = sample a segment, inner loop, meta-gradient, SGD step on the synthetic set: exactly what
distill.py runs (`Distillation.step`), but on a synthetic set of random pixels and text features and on
synthetic expert segments (θ* = θ_0 + noise) of the model's true size, so no buffer is needed. Weights
that are not available offline are replaced by random init (reported). Every (mode, steps) case runs in
its own process; memory is the peak above the level after set-up (GPU: allocated; CPU: RSS).
Prints figures only; asserts nothing. Timings on a CPU shared with other jobs are meaningless.
"""
import argparse
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, when run as a script
from bench.common import answered_as_child, image_tower, peak_memory, reset_peak, run_child, sync  # noqa: E402

DEMO_CONFIG = "configs/tuxpaint/lors.yaml"


def parse(argv):
    from common.config import parse_args
    from methods import method_keys

    def extra(p):
        p.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32], help="inner steps K")
        p.add_argument("--modes", nargs="+", default=["unroll", "tesla", "exact"])
        p.add_argument("--iterations", type=int, default=3, help="timed iterations (after the warm-up ones)")
        p.add_argument("--warmup", type=int, default=1, help="untimed iterations first (in the peak memory too)")
        p.add_argument("--random-weights", action="store_true", help="do not try the real image weights")
        p.add_argument("--checkpointing", nargs="+", choices=["off", "on"],
                       help="run every case with activation checkpointing off and/or on (default: the config's)")
        p.add_argument("--profile", type=int, metavar="N", help="print torch.profiler's N top operators (by self CPU "
                       "time) of the last timed iteration of every case")
        p.add_argument("--case", nargs=2, help=argparse.SUPPRESS)  # child: MODE STEPS

    if "--config" not in argv:
        argv = ["--config", DEMO_CONFIG, *argv]
    return parse_args(argv, __doc__, extra, method_keys=method_keys())


class SyntheticPool:
    """Stands in for the expert buffer: segments of the student's true size, θ* = θ_0 + small noise."""

    def __init__(self, student, device):
        self.start = {t: v.to(device) for t, v in student.flatten().items()}
        gen = torch.Generator().manual_seed(0)
        self.target = {t: v + 1e-3 * torch.randn(v.shape, generator=gen).to(device) for t, v in self.start.items()}
        self.files = [None]

    def segment(self, expert, start, span, device):
        return self.start, self.target


def text_width(model_cfg):
    from transformers import AutoConfig, BertConfig
    from networks.weights import ModelNotFoundError, resolve_text_encoder
    try:
        return AutoConfig.from_pretrained(resolve_text_encoder(model_cfg["text_encoder"])).hidden_size, "real"
    except (OSError, ValueError, ModelNotFoundError):
        return BertConfig().hidden_size, "BERT-base width (config not available offline)"


def build_distiller(cfg, mode, steps, random_weights):
    """A Distillation wired to a synthetic set and synthetic experts (no data, no buffer)."""
    from artefacts.distilled import DistilledSet
    from networks.student import DualEncoder
    from methods.loop import Distillation
    from methods.matching import TrajectoryMatching, synthetic_pairs
    from methods.registry import resolve_method
    from training.similarity import Similarity
    from common.distributed import pick_device
    from training.fit import tower_lrs

    d = resolve_method({**cfg["distill"], "metagrad": mode, "syn_steps": steps}, recipe=cfg["recipe"])
    device = pick_device(cfg["device"])
    torch.manual_seed(0)
    tower, image_what = image_tower(cfg["model"], random_weights, cfg["cache_dir"])
    hidden, text_what = text_width(cfg["model"])
    model = cfg["model"]
    student = DualEncoder(tower, hidden, model["temperature"], model["text_dropout"])
    student = student.to(device).train()
    n, size = synthetic_pairs(d), cfg["data"]["image_size"]
    dset = DistilledSet(torch.randn(n, 3, size, size), torch.randn(n, hidden),
                        Similarity(d["sim_type"], n, d["sim_rank"], d["sim_alpha"]),
                        tower_lrs(d["lr_teacher"], "distill.lr_teacher"))
    method = TrajectoryMatching(d, student, SyntheticPool(student, device), dset, device, Path(d["out_dir"]))
    distiller = Distillation({**cfg, "distill": d}, d, method, device)
    what = (f"{image_what} + text head on {hidden}-d features ({text_what}), {size} px, {n} pairs, "
            f"minibatch {d['mini_batch_size']}, {d['loss']}, similarity {d['sim_type']}")
    return distiller, device, what


def run_case(cfg, args):
    mode, steps = args.case[0], int(args.case[1])
    distiller, device, what = build_distiller(cfg, mode, steps, args.random_weights)
    baseline = reset_peak(device)
    for i in range(args.warmup):  # allocator, lazy initialisation
        distiller.step(i)
    times, last = [], args.warmup + args.iterations - 1
    for i in range(args.warmup, args.warmup + args.iterations):
        profiling = args.profile and i == last
        sync(device)
        start = time.perf_counter()
        with torch.profiler.profile() if profiling else contextlib.nullcontext() as profiler:
            distiller.step(i)
            sync(device)
        times.append(time.perf_counter() - start)
        if profiling:  # to stderr: stdout carries the JSON line
            print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile),
                  file=sys.stderr)
    return {"mode": mode, "steps": steps, "seconds": statistics.median(times), "times": times,
            "checkpointing": "on" if distiller.dcfg["checkpoint_activations"] else "off",
            "precision": distiller.dcfg["precision"],
            **peak_memory(device, baseline), "device": str(device), "what": what, "load": os.getloadavg()[0]}


def report(results):
    first = next(iter(results.values()))
    print(f"\n{first['what']}\ndevice {first['device']}; memory: {first['memory_kind']}, shown above the "
          f"set-up level")
    print(f"{'mode':<8} {'K':>4} {'ckpt':>5} {'precision':>9} {'s/iteration':>12} {'peak MiB':>10} "
          f"{'MiB total':>10} {'load':>6}")
    for (mode, steps, ckpt), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0], kv[0][2])):
        extra = r["memory"] - (r["baseline"] or 0)
        print(f"{mode:<8} {steps:>4} {r['checkpointing']:>5} {r['precision']:>9} {r['seconds']:>12.3f} {extra:>10.0f} "
              f"{r['memory']:>10.0f} {r['load']:>6.2f}")
    for (mode, steps, ckpt), r in sorted(results.items()):
        if ckpt == "on" and (mode, steps, "off") in results:
            off = results[mode, steps, "off"]
            print(f"{mode} K={steps}: checkpointing on / off: time {r['seconds'] / off['seconds']:.2f}x, peak "
                  f"{r['memory']:.0f} / {off['memory']:.0f} MiB ({r['memory'] / off['memory']:.2f}x)")
    chosen = {}  # the lines below compare one checkpointing setting: off where both ran
    for (mode, steps, ckpt), r in sorted(results.items(), key=lambda kv: kv[0][2] != "off"):
        chosen.setdefault((mode, steps), r)
    results = chosen
    for mode in ("unroll", "tesla", "exact"):
        ks = sorted(k for m, k in results if m == mode)
        if len(ks) > 1:
            lo, hi = (results[mode, ks[0]], results[mode, ks[-1]])
            growth = (hi["memory"] - (hi["baseline"] or 0)) / (lo["memory"] - (lo["baseline"] or 0))
            print(f"{mode}: memory K={ks[0]} → K={ks[-1]}: {growth:.2f}x")
    for steps in sorted({k for _, k in results}):
        if ("exact", steps) in results and ("tesla", steps) in results:
            print(f"K={steps}: exact / tesla time {results['exact', steps]['seconds'] / results['tesla', steps]['seconds']:.2f}x")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, args = parse(argv)
    if answered_as_child(cfg, args, run_case):
        return
    results = {}
    for steps in args.steps:
        for mode in args.modes:
            for ckpt in args.checkpointing or [None]:
                setting = [] if ckpt is None else ["--distill.checkpoint_activations", str(ckpt == "on").lower()]
                result = run_child(__file__, [*argv, *setting, "--case", mode, str(steps)],
                                   f"{mode} K={steps}" + (f" checkpointing {ckpt}" if ckpt else ""))
                if result is not None:
                    results[mode, steps, ckpt] = result
    if not results:
        sys.exit("error: every case failed (their output is above)")
    report(results)


if __name__ == "__main__":
    main()
