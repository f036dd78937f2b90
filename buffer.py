"""Train expert trajectories on real pairs (docs/methods.md §3).

    python buffer.py --config configs/tuxpaint/buffer.yaml [--buffer.num_experts 5 ...]
    torchrun --nproc-per-node G buffer.py --config configs/flickr30k/buffer.yaml   # experts spread over G GPUs
    python buffer.py --config … --log.tensorboard runs/tb   # live loss and recall: tensorboard --logdir runs/tb
"""
from common.cli import run
from common.config import parse_args
from common.io import check_out_dir
from data.annotations import annotation_files
from methods import method_keys
from training.experts import run_buffer
from training.trajectories import buffer_stats, verdict_lines


def main(argv=None):
    cfg, _ = parse_args(argv, description=__doc__, reads=("data", "model", "buffer", "log"),
                        method_keys=method_keys())
    out_dir = cfg["buffer"]["out_dir"]
    check_out_dir(out_dir, "buffer.py", "buffer.out_dir", annotation_files(cfg["data"]))
    experts = run_buffer(cfg)
    for index, meta in sorted(experts.items()):
        recall = meta.get("test_recall") or {}
        if recall:
            first, last = min(recall, key=int), max(recall, key=int)
            print(f"expert {index}: test mean recall {recall[first]['mean']:.2f} at epoch {first} "
                  f"-> {recall[last]['mean']:.2f} at epoch {last}")
    if experts and cfg["buffer"]["epochs"] >= 2:  # rank 0 only (other ranks get no experts back)
        print(f"worth distilling? (figures: python -m training.trajectories {cfg['buffer']['out_dir']})")
        for line in verdict_lines(buffer_stats(cfg["buffer"]["out_dir"])):
            print(f"  {line}")


if __name__ == "__main__":
    run(main)
