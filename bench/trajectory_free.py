"""Time and peak memory of one CovMatch or MDM iteration, without data or experts.

    python bench/trajectory_free.py --config configs/flickr30k/covmatch_100.yaml [--real-batch 32] [--iterations 2]
    python bench/trajectory_free.py --config configs/flickr30k/mdm_100.yaml
        the Flickr30K-100 settings: NFNet-l0 (random init offline) + a head over BERT-width (768) text features,
        224 px; on a GPU as they are, on a CPU with --real-batch lowered (the published 256 does not fit its memory)

One iteration = what distill.py runs (`Distillation.step`: the method's advance, one work item's gradient, the SGD
step), on random pixels and text features of the config's shapes, and for MDM synthetic expert checkpoints of the
model's true size (θ_e = θ_0 + noise). Each method runs in its own process; memory is the peak above the level after
set-up (GPU: allocated; CPU: RSS). Prints figures only; asserts nothing. Timings on a shared CPU are meaningless.
"""
import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, when run as a script
from bench.common import answered_as_child, image_tower, peak_memory, reset_peak, run_child, sync  # noqa: E402
from bench.metagrad import text_width  # noqa: E402


class SyntheticContext:
    """What the statistics engine reads of a RunContext, on random data of the config's shapes."""

    def __init__(self, cfg, tower, hidden, device, pairs):
        from networks.student import DualEncoder
        self.cfg, self.device, self.image_size = cfg, device, cfg["data"]["image_size"]
        model = cfg["model"]
        self.make = lambda: DualEncoder(copy.deepcopy(tower), hidden, model["temperature"], model["text_dropout"])
        generator = torch.Generator().manual_seed(0)
        self.features = {"train": torch.randn(pairs, hidden, generator=generator)}

    def new_student(self, seed):
        torch.manual_seed(seed)
        return self.make().to(self.device)


class SyntheticReal:
    """Random real batches of the configured size."""

    def __init__(self, ctx):
        self.ctx = ctx

    def __len__(self):
        return len(self.ctx.features["train"])

    def batch(self, captions):
        size = self.ctx.image_size
        return (torch.randn(len(captions), 3, size, size, device=self.ctx.device),
                self.ctx.features["train"][captions].to(self.ctx.device))


class SyntheticPool:
    """Checkpoints θ_e = θ_0 + noise of one expert, of the model's true size."""

    def __init__(self, student, device, epochs):
        self.files = [None]
        start = {t: v.to(device) for t, v in student.flatten().items()}
        gen = torch.Generator().manual_seed(1)
        self.epochs = [start] + [{t: v + 1e-3 * torch.randn(v.shape, generator=gen).to(device)
                                  for t, v in start.items()} for _ in range(epochs)]

    def snapshots(self, expert, epochs, device):
        return [self.epochs[e] for e in epochs]


def build(cfg, random_weights):
    from artefacts.distilled import DistilledSet
    from common.distributed import pick_device
    from methods.loop import Distillation
    from methods.registry import resolve_method
    from methods.statistics import FixedModel, MergedModel, OnlineModel, StatisticsMatching
    from training.similarity import Similarity

    d = resolve_method(cfg["distill"], recipe=cfg["recipe"])
    device = pick_device(cfg["device"])
    tower, image_what = image_tower(cfg["model"], random_weights, cfg["cache_dir"])
    hidden, text_what = text_width(cfg["model"])
    ctx = SyntheticContext(cfg, tower, hidden, device, pairs=max(d["real_batch"], 1000))
    real = SyntheticReal(ctx)
    if d["model_source"] == "merged":
        student = ctx.new_student(d["seed"])
        source = MergedModel(ctx, d, SyntheticPool(student, device, d["max_start_epoch"]))
    else:
        source = OnlineModel(ctx, d, real) if d["model_source"] == "online" else FixedModel(ctx, d)
    n, size = d["budget"], ctx.image_size
    dset = DistilledSet(torch.randn(n, 3, size, size), torch.randn(n, hidden), Similarity("identity", n))
    method = StatisticsMatching(d, source, real, dset, torch.Generator().manual_seed(0))
    what = (f"{d['method']}: {image_what} + text head on {hidden}-d features ({text_what}), {size} px, {n} pairs, "
            f"real batch {d['real_batch']}, synthetic batch {method.syn_batch}, {d['model_source']} model, "
            f"{d['statistic']}")
    return Distillation({**cfg, "distill": d}, d, method, device), device, what


def run_case(cfg, args):
    distillation, device, what = build(cfg, args.random_weights)
    baseline = reset_peak(device)
    times = []
    for i in range(args.warmup + args.iterations):
        sync(device)
        start = time.perf_counter()
        distillation.step(i)
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return {"what": what, "seconds": statistics.median(times), "times": times, "device": str(device),
            **peak_memory(device, baseline)}


def parse(argv):
    from common.config import parse_args
    from methods import method_keys

    def extra(p):
        p.add_argument("--iterations", type=int, default=2, help="timed iterations (after the warm-up ones)")
        p.add_argument("--warmup", type=int, default=1, help="untimed iterations first (in the peak memory too)")
        p.add_argument("--real-batch", type=int, help="real pairs per iteration (default: the config's)")
        p.add_argument("--random-weights", action="store_true", help="do not try the real image weights")
        p.add_argument("--case", action="store_true", help=argparse.SUPPRESS)  # the child process

    cfg, args = parse_args(argv, __doc__, extra, method_keys=method_keys())
    if args.real_batch:
        cfg["distill"]["real_batch"] = args.real_batch
    return cfg, args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, args = parse(argv)
    if answered_as_child(cfg, args, run_case):
        return
    result = run_child(__file__, [*argv, "--case"], cfg["distill"]["method"])
    if result:
        extra = result["memory"] - (result["baseline"] or 0)
        print(f"\n{result['what']}\ndevice {result['device']}; memory: {result['memory_kind']}\n"
              f"s/iteration {result['seconds']:.3f} (of {', '.join(f'{t:.2f}' for t in result['times'])}); "
              f"peak {extra:.0f} MiB above set-up, {result['memory']:.0f} MiB in all")


if __name__ == "__main__":
    main()
