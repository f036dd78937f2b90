"""Distil a dataset by trajectory matching (METHOD §4): LoRS, MTT-VL or TESLA-VL, with the
meta-gradient computed by `unroll`, `tesla` or `exact`. Needs the experts of buffer.py.

    python distill.py --config configs/tuxpaint/lors.yaml [--distill.metagrad tesla ...]
    torchrun --nproc-per-node G distill.py --config … --distill.segments_per_iteration P   # P a multiple of G

Rerun the same command after a crash: it resumes from the last checkpoint in distill.out_dir (with any number of
processes, as long as P is the same).
"""
from utils.cli import run
from utils.config import parse_args
from utils.context import RunContext
from utils.distillation import Distiller, segments_per_rank
from utils.distributed import processes, rank_zero_first
from utils.tensorboard import tensorboard_dir


def main(argv=None):
    cfg, _ = parse_args(argv, description=__doc__)
    tensorboard_dir(cfg)  # log.tensorboard without the package: stop before any compute
    splits = ("train", "val") if cfg["distill"]["eval_every"] else ("train",)
    with processes(cfg.get("device", "auto")) as (_, world, device):
        segments_per_rank(cfg["distill"], world)  # before anything is built
        with rank_zero_first():  # rank 0 builds the caches the others read
            ctx = RunContext(cfg, splits=splits, device=device)
        return Distiller.from_context(ctx, cfg).run()


if __name__ == "__main__":
    run(main)
