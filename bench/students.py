"""Students trained one at a time vs together (vmapped, `evaluate.together`): time per student and peak memory.

    python bench/students.py [--config configs/tuxpaint/buffer.yaml] [--pairs 50] [--students 4] [--epochs 10]
    python bench/students.py --config configs/flickr30k/buffer.yaml --pairs 100 --students 5      # on a GPU

Each student trains on the same N random real training pairs with the evaluation recipe (no scoring), as
evaluate.py does; each case (1 at a time, all together) runs in its own process, so memory is its own
(the peak above the level after set-up; GPU: allocated, CPU: RSS). Prints figures only; asserts nothing.
Timings on a CPU shared with other jobs are meaningless.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, when run as a script
from bench.common import emit, peak_memory, reset_peak, run_child, sync  # noqa: E402


def parse(argv):
    from common.config import parse_args
    from methods import method_keys

    def extra(p):
        p.add_argument("--pairs", type=int, default=50, help="size of the set the students train on")
        p.add_argument("--students", type=int, default=4)
        p.add_argument("--epochs", type=int, default=10, help="evaluate.epochs for the measurement")
        p.add_argument("--together", type=int, help=argparse.SUPPRESS)  # child: students per group

    if "--config" not in argv:
        argv = ["--config", "configs/tuxpaint/buffer.yaml", *argv]
    return parse_args(argv, description=__doc__, extra=extra, method_keys=method_keys())


def measure(cfg, args):
    """Child: train `args.students` students, `args.together` at a time; emit seconds per student and memory."""
    from artefacts.pairs import random_pairs, real_pairs
    from training.context import RunContext
    from evaluation.students import train_students
    ctx = RunContext(cfg, splits=("train",), log=lambda *_: None)
    train = ctx.splits["train"]
    dset = real_pairs(train, ctx.features["train"], ctx.test_transform, random_pairs(train, args.pairs, 0),
                      {"loss": "infonce"})
    ecfg = {**cfg["evaluate"], "epochs": args.epochs}
    seeds = list(range(args.students))
    baseline = reset_peak(ctx.device)
    sync(ctx.device)
    start = time.time()
    for i in range(0, len(seeds), args.together):
        train_students(ctx, dset, ecfg, seeds[i:i + args.together])
    sync(ctx.device)
    emit({"seconds_per_student": (time.time() - start) / len(seeds), **peak_memory(ctx.device, baseline),
          "device": str(ctx.device)})


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, args = parse(argv)
    if args.together:
        return measure(cfg, args)
    print(f"{args.students} students, {args.pairs} pairs, {args.epochs} epochs, batch "
          f"{min(cfg['evaluate']['batch_size'], args.pairs)}, {cfg['data']['image_size']} px")
    results = {k: run_child(__file__, [*argv, "--together", str(k)], f"together={k}")
               for k in (1, args.students)}
    print("\n| students at once | s per student | peak memory (MiB) | device |\n|---:|---:|---:|---|")
    for k, r in results.items():
        if r:
            print(f"| {k} | {r['seconds_per_student']:.2f} | {r['memory'] - (r['baseline'] or 0):.0f} | {r['device']} |")
    if all(results.values()):
        one, many = results[1], results[args.students]
        print(f"\ntogether / one at a time: {many['seconds_per_student'] / one['seconds_per_student']:.2f}× the time "
              f"per student ({results[1]['memory_kind']})")


if __name__ == "__main__":
    main()
