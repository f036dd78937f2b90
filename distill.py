"""Distil a dataset by trajectory matching (METHOD §4): LoRS, MTT-VL or TESLA-VL, with the
meta-gradient computed by `unroll`, `tesla` or `exact`. Needs the experts of buffer.py.

    python distill.py --config configs/tuxpaint/lors.yaml [--distill.metagrad tesla ...]

Rerun the same command after a crash: it resumes from the last checkpoint in distill.out_dir.
"""
from utils.cli import run
from utils.config import parse_args
from utils.context import RunContext
from utils.distillation import Distiller


def main(argv=None):
    cfg, _ = parse_args(argv, description=__doc__)
    splits = ("train", "val") if cfg["distill"]["eval_every"] else ("train",)
    return Distiller.from_context(RunContext(cfg, splits=splits), cfg).run()


if __name__ == "__main__":
    run(main)
