"""Distil a dataset with one of the registered methods (python distill.py --help lists them and their keys):
trajectory matching (LoRS, MTT-VL, TESLA-VL, RepBlend: docs/methods.md §4), with the meta-gradient computed by
`unroll`, `tesla` or `exact`, which needs the experts of buffer.py.

    python distill.py --config configs/tuxpaint/lors.yaml [--distill.metagrad tesla ...]
    torchrun --nproc-per-node G distill.py --config … --distill.segments_per_iteration P   # P a multiple of G

Rerun the same command after a crash: it resumes from the last checkpoint in distill.out_dir (with any number of
processes, as long as P is the same).
"""
from common.cli import run
from common.config import parse_args
from common.distributed import processes, rank_zero_first
from common.io import check_out_dir
from common.tensorboard import tensorboard_dir
from data.annotations import annotation_files
from methods import REGISTRY, method_keys
from methods.loop import Distillation, work_per_rank
from training.context import RunContext


def main(argv=None):
    methods = "\n".join(f"  {name:<10} {spec.summary}" for name, spec in REGISTRY.items())
    cfg, _ = parse_args(argv, description=f"{__doc__}\nmethods (distill.method):\n{methods}",
                        reads=("data", "model", "buffer", "distill", "evaluate", "log"), method_keys=method_keys())
    tensorboard_dir(cfg)  # log.tensorboard without the package: stop before any compute
    out_dir = cfg["distill"]["out_dir"]
    check_out_dir(out_dir, "distill.py", "distill.out_dir", [cfg["buffer"]["out_dir"], *annotation_files(cfg["data"])])
    splits = ("train", "val") if cfg["distill"]["eval_every"] else ("train",)
    with processes(cfg["device"], cfg) as (_, world, device):
        work_per_rank(cfg["distill"], world)  # before anything is built
        with rank_zero_first():  # rank 0 builds the caches the others read
            ctx = RunContext(cfg, splits=splits, device=device)
        return Distillation.from_context(ctx, cfg).run()


if __name__ == "__main__":
    run(main)
