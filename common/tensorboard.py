"""Optional TensorBoard logs (config key `log.tensorboard: DIR`, null: off), to follow a long run live:

    tensorboard --logdir DIR

Each run writes its own folder under DIR (the caller names it: buffer.py `<buffer>/expert_003`, one per expert,
so torchrun ranks training different experts never share one; distill.py its out_dir's name; evaluate.py one
per evaluated set), so TensorBoard overlays them as separate runs.

`open_log` returns a `TensorBoardLog`, or a `NoLog` that does nothing when logging is off or on ranks other
than 0, so call sites need no `if`. The `tensorboard` package is an optional extra (requirements-extras.txt):
nothing here imports it until a log is opened. Event files are append-only streams that TensorBoard reads
while they grow, so they are written in place, not atomically; a resumed run's repeated steps replace the
earlier ones in TensorBoard's view (it drops the points of a tag past a step that comes again).
"""
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from common.config import ConfigError

FLUSH_SECONDS = 30  # how stale the live view may be


class TensorBoardMissing(ConfigError, ImportError):
    """log.tensorboard is set but the package is not installed: an ImportError by nature, and a ConfigError
    (a ValueError) so that common.cli reports it as a user error in one line naming the key and the fix."""


def tensorboard_dir(cfg):
    """The folder of log.tensorboard (None: off); checks up front, before any compute, that the package is there."""
    folder = (cfg.get("log") or {}).get("tensorboard")
    if folder is not None:
        _writer_class()
    return folder


def _writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise TensorBoardMissing(
            f"log.tensorboard is set but the tensorboard package cannot be imported ({err}): "
            "`pip install tensorboard` (or pip install -r requirements-extras.txt), or set log.tensorboard: null"
        ) from err
    return SummaryWriter


def open_log(cfg, name, rank=0):
    """The log of one run, in DIR/name, or a NoLog when log.tensorboard is null or `rank` is not 0 (pass the
    process's rank where only one process of a torchrun job should write). Use it as a context manager."""
    folder = tensorboard_dir(cfg)
    if folder is None or rank != 0:
        return NoLog()
    return TensorBoardLog(Path(folder) / name)


class NoLog:
    """Logging off: the calls of TensorBoardLog, doing nothing."""

    def scalars(self, step, values):
        """{tag: number} at `step`."""

    def recall(self, step, split, recall):
        """A recall dict {metric: %} (or {metric: (mean, std)}, of which the mean) as `recall_<split>/<metric>`."""

    def iteration(self, step, loss, lrs, grads, similarity=None, params=None):
        """One distillation iteration: the matching loss, the learned lrs {tower: tensor}, the norm of each
        gradient {name: tensor} and, for a learned `similarity` (training.similarity) over `params`, S statistics."""

    def picture(self, step, tag, png):
        """A PNG already drawn (common/visuals.py: the grid, the heat map) as an image."""

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TensorBoardLog(NoLog):
    def __init__(self, folder):
        self.folder = Path(folder)
        self.writer = _writer_class()(log_dir=str(self.folder), flush_secs=FLUSH_SECONDS)

    def scalars(self, step, values):
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), step)

    def recall(self, step, split, recall):
        self.scalars(step, {f"recall_{split}/{metric}": value[0] if isinstance(value, (tuple, list)) else value
                            for metric, value in recall.items()})

    def iteration(self, step, loss, lrs, grads, similarity=None, params=None):
        values = {"loss/matching": loss, **{f"lr/{tower}": lr.item() for tower, lr in lrs.items()},
                  **{f"grad_norm/{name}": g.detach().float().norm().item() for name, g in grads.items()}}
        if similarity is not None and similarity.kind != "identity":
            with torch.no_grad():
                values.update({f"similarity/{k}": v for k, v in similarity_stats(similarity.matrix(params)).items()})
        self.scalars(step, values)

    def picture(self, step, tag, png):
        with Image.open(png) as img:
            pixels = np.asarray(img.convert("RGB"))
        self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def close(self):
        self.writer.close()


def similarity_stats(matrix):
    """Mean and std over all entries of S, and the means of its diagonal and off-diagonal entries (S starts as I:
    how far the learned targets moved off it)."""
    m = matrix.detach().double()
    diagonal = torch.eye(m.shape[0], dtype=torch.bool, device=m.device)
    stats = {"mean": m.mean(), "std": m.std(correction=0), "diag_mean": m[diagonal].mean()}
    if m.shape[0] > 1:
        stats["offdiag_mean"] = m[~diagonal].mean()
    return {k: v.item() for k, v in stats.items()}


def log_curves(cfg, name, entries, rank=0):
    """evaluate.py's results: per set (one run each, DIR/name/<set>), per split and checkpoint epoch, the recall
    averaged over the students (`entries`: evaluate_distilled's list, each with a label "model" and "curves")."""
    for k, entry in enumerate(entries):
        with open_log(cfg, f"{name}/{k:02d}_{run_name(entry['model'])}", rank) as log:
            curves = entry["curves"]
            for i, epoch in enumerate(curves[0]["epochs"]):
                for split in (s for s in curves[0] if s != "epochs"):
                    scores = [curve[split][i] for curve in curves]
                    log.recall(epoch, split, {metric: sum(s[metric] for s in scores) / len(scores)
                                              for metric in scores[0]})


def run_name(label):
    """A folder name from a results label ("lors · tesla (49 pairs)" -> "lors_tesla_49_pairs")."""
    return "_".join("".join(c if c.isalnum() or c in "-." else " " for c in label).split()) or "run"
