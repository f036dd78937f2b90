"""Expert trajectory files: one safetensors file per expert, holding θ after init and after each epoch.

Tensors: "image" (E+1, |θ^I|) and "text" (E+1, |θ^T|), fp32 or bf16. Metadata: the run identity
(encoders, their weight hashes, image size, dataset), the parameter layouts, and the training log.
A file is only used where its identity and layouts match the current model.

`python -m training.trajectories BUFFER_DIR [--json FILE]` tells whether a buffer's segments drift (a direction that
trajectory matching can learn) or random-walk (noise it cannot); see docs/experts.md "Is a buffer worth distilling?".
"""
import argparse
import re
from pathlib import Path

import torch
from safetensors import safe_open

from common.cli import run
from common.errors import InputError
from common.io import atomic_write_json, check_output, read_tensor_file, save_tensors

FORMAT = "mmdd-expert-v1"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_NAME = re.compile(r"expert_(\d+)\.safetensors$")


class TrajectoryError(InputError):
    pass


def expert_path(buffer_dir, index):
    return Path(buffer_dir) / f"expert_{index:03d}.safetensors"


def expert_index(path):
    return int(_NAME.search(Path(path).name).group(1))


def expert_files(buffer_dir):
    """Expert files in a buffer folder, by index."""
    files = [p for p in Path(buffer_dir).glob("expert_*.safetensors") if _NAME.search(p.name)]
    return sorted(files, key=expert_index)


def save_expert(path, snapshots, metadata, dtype="fp32"):
    """`snapshots`: {tower: [θ_0, θ_1, ...]}; written atomically."""
    if dtype not in DTYPES:
        raise TrajectoryError(f"buffer.dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    tensors = {tower: torch.stack(thetas).to(DTYPES[dtype]) for tower, thetas in snapshots.items()}
    save_tensors(path, tensors, {"format": FORMAT, "dtype": dtype, **metadata})


def read_metadata(path):
    """Metadata of an expert file (JSON values decoded); a clear error if the file is missing or damaged."""
    if not Path(path).is_file():
        raise TrajectoryError(f"no expert file {path}: run buffer.py with this config first (its buffer.out_dir)")
    try:
        meta, shapes = read_tensor_file(path)
    except Exception as err:
        raise TrajectoryError(
            f"buffer file {path} is unreadable ({err}); it is truncated or not a trajectory file: "
            f"delete it and rerun buffer.py to redo that expert") from err
    if meta.get("format") != FORMAT:
        raise TrajectoryError(f"buffer file {path} is not an expert trajectory of this toolkit ({FORMAT})")
    meta["shapes"] = shapes
    return meta


def check_compatible(meta, identity, layouts, path):
    """Stop with a clear message when a trajectory was made with another model, image size or dataset."""
    for key, wanted in identity.items():
        found = meta.get(key)
        if found != wanted:
            raise TrajectoryError(
                f"buffer file {path} was made with {key} = {found}, but this run uses {wanted}; "
                f"use a buffer made with the same settings (or another buffer.out_dir for a new one)")
    for tower, layout in layouts.items():
        if meta.get(f"layout_{tower}") != layout:
            raise TrajectoryError(
                f"buffer file {path}: the {tower} tower's parameter layout differs from this model's; "
                f"it was made with another architecture or trainable-parameter set")


def load_expert(path, identity=None, layouts=None):
    """({tower: (E+1, P) float32 tensor}, metadata); checks compatibility when identity/layouts are given."""
    meta = read_metadata(path)
    if identity is not None:
        check_compatible(meta, identity, layouts or {}, path)
    with safe_open(str(path), framework="pt") as f:
        snapshots = {tower: _finite(f.get_tensor(tower).float(), path, tower) for tower in f.keys()}
    return snapshots, meta


def read_snapshots(path, epochs):
    """{tower: (len(epochs), P) float32} of the requested epochs only, without reading the rest. A missing epoch
    or a non-finite θ (a diverged expert) is refused here, before it can surface as a NaN matching loss."""
    snapshots = {}
    with safe_open(str(path), framework="pt") as f:
        for tower in f.keys():
            thetas = f.get_slice(tower)
            last = thetas.get_shape()[0] - 1
            rows = []
            for epoch in epochs:
                if not 0 <= epoch <= last:
                    raise TrajectoryError(f"buffer file {path} holds epochs 0..{last}, not epoch {epoch}")
                rows.append(_finite(thetas[epoch:epoch + 1].float(), path, tower, epoch))
            snapshots[tower] = torch.cat(rows)
    return snapshots


def _finite(thetas, path, tower, first_epoch=0):
    """`thetas` (rows = epochs from `first_epoch`), refused when a value is NaN or Inf: every reader of expert files
    checks, so a diverged expert never becomes a NaN loss, a "static" verdict or a coreset."""
    bad = (~torch.isfinite(thetas)).flatten(1).any(1).nonzero()
    if len(bad):
        raise TrajectoryError(
            f"buffer file {path} holds non-finite values in the {tower} tower at epoch {first_epoch + bad[0].item()}; "
            f"that expert diverged or the file is damaged: retrain it (delete the file and rerun buffer.py)")
    return thetas


# --- Is a buffer worth distilling? Drift versus random walk of the expert segments. ---
# ‖θ_{s+k} − θ_s‖ grows like k^½ for a random walk and like k for pure drift; the cosine of consecutive epochs' steps
# is ~0 for independent steps and ~1 for a fixed direction. Between the two bands the verdict is "mixed".
DRIFT_MIN_EXPONENT = 0.75
DRIFT_MIN_CONSECUTIVE_COSINE = 0.3
WALK_MAX_EXPONENT = 0.6
WALK_MAX_CONSECUTIVE_COSINE = 0.1
CHUNK_ELEMENTS = 2 ** 24  # float64 values read at once over all experts and epochs (128 MB, plus working copies)


def trajectory_stats(trajectories):
    """Drift figures and verdicts of expert trajectories, as a plain (JSON-ready) dict.

    `trajectories`: {tower: (num_experts, E+1, P) tensor} or a list of per-expert {tower: (E+1, P)} dicts."""
    if isinstance(trajectories, (list, tuple)):
        trajectories = {tower: torch.stack([expert[tower] for expert in trajectories]) for tower in trajectories[0]}
    readers = {tower: (lambda start, stop, thetas=thetas: thetas[:, :, start:stop])
               for tower, thetas in trajectories.items()}
    return _stats(readers, {tower: tuple(thetas.shape) for tower, thetas in trajectories.items()})


def buffer_stats(buffer_dir):
    """`trajectory_stats` of a buffer folder, reading a chunk of parameters of every expert file at a time."""
    paths, shapes = _buffer_shapes(buffer_dir)
    readers = {tower: (lambda start, stop, tower=tower:
                       torch.stack([_read_columns(path, tower, start, stop) for path in paths]))
               for tower in shapes}
    return _stats(readers, shapes, str(buffer_dir))


def _read_columns(path, tower, start, stop):
    # opened per chunk: a file held open keeps every page read so far mapped in memory
    with safe_open(str(path), framework="pt") as f:
        return _finite(f.get_slice(tower)[:, start:stop], path, tower)


def _buffer_shapes(buffer_dir):
    """(expert files, {tower: (num_experts, E+1, P)}), with a clear error unless the files exist and agree."""
    folder = Path(buffer_dir)
    if not folder.is_dir():
        raise TrajectoryError(f"buffer folder {folder} does not exist")
    paths = expert_files(folder)
    if not paths:
        raise TrajectoryError(f"no expert files (expert_NNN.safetensors) in {folder}")
    shapes = [read_metadata(path)["shapes"] for path in paths]
    if any(shape != shapes[0] for shape in shapes):
        raise TrajectoryError(f"the expert files in {folder} differ in towers, epochs or parameter counts")
    return paths, {tower: (len(paths), *shape) for tower, shape in shapes[0].items()}


def _stats(readers, shapes, buffer_dir=None):
    num_experts, num_snapshots = next(iter(shapes.values()))[:2]
    if num_snapshots < 2:
        raise TrajectoryError("the trajectories hold θ_0 only: no epoch to measure")
    towers = {tower: {"parameters": shapes[tower][2],
                      **_tower_figures(*_tower_grams(read_chunk, shapes[tower]))}
              for tower, read_chunk in readers.items()}
    return {"buffer": buffer_dir, "experts": num_experts, "epochs": num_snapshots - 1,
            "towers": towers, "overall": overall_verdict(towers)}


def _tower_grams(read_chunk, shape):
    """Inner products of the segments, summed over chunks of parameters (so no snapshot is ever held whole):
    within[i] = expert i's epoch steps against each other (E, E); across[k-1] = every expert's θ_k − θ_0
    against every other's (N, N). Float64: the random-walk cosines are ~1/√P."""
    num_experts, num_snapshots, num_params = shape
    epochs = num_snapshots - 1
    width = max(1, CHUNK_ELEMENTS // (num_experts * num_snapshots))
    within = torch.zeros(num_experts, epochs, epochs, dtype=torch.float64)
    across = torch.zeros(epochs, num_experts, num_experts, dtype=torch.float64)
    for start in range(0, num_params, width):
        steps = read_chunk(start, min(start + width, num_params)).double().diff(dim=1)  # (N, E, chunk)
        within += steps @ steps.transpose(1, 2)
        displacements = steps.cumsum(dim=1).transpose(0, 1)  # (E, N, chunk)
        across += displacements @ displacements.transpose(1, 2)
    return within, across


def _tower_figures(within, across):
    spans = _span_norms(within)
    exponent = _growth_exponent(spans)
    consecutive = _consecutive_cosine(within)
    verdict, reason = tower_verdict(exponent, consecutive) if max(spans) > 0 else ("static", "it does not move")
    return {"span_norm": spans, "exponent": exponent, "consecutive_cosine": consecutive,
            "cross_expert_cosine": _cross_expert_cosine(across), "verdict": verdict, "reason": reason}


def _span_norms(within):
    """Mean ‖θ_{s+k} − θ_s‖ for k = 1..E, over experts and every start s (the norm of a sum of steps)."""
    epochs = within.shape[1]
    return [torch.cat([within[:, s:s + k, s:s + k].sum(dim=(1, 2)).clamp_min(0).sqrt()
                       for s in range(epochs - k + 1)]).mean().item()
            for k in range(1, epochs + 1)]


def _growth_exponent(span_norms):
    """Least-squares slope of log mean‖Δθ‖ against log k; None with a single span."""
    if len(span_norms) < 2 or min(span_norms) <= 0:
        return None
    log_k = torch.arange(1, len(span_norms) + 1, dtype=torch.float64).log()
    log_norm = torch.tensor(span_norms, dtype=torch.float64).log()
    centred = log_k - log_k.mean()
    return ((centred * (log_norm - log_norm.mean())).sum() / (centred ** 2).sum()).item()


def _consecutive_cosine(within):
    """cos(θ_{e+1} − θ_e, θ_{e+2} − θ_{e+1}) over experts and e; None with a single epoch."""
    squared = within.diagonal(dim1=1, dim2=2)
    return _summary(within.diagonal(offset=1, dim1=1, dim2=2) / (squared[:, :-1] * squared[:, 1:]).sqrt())


def _cross_expert_cosine(across):
    """Per k: cosine between different experts' θ_k − θ_0, over all pairs; None with a single expert."""
    first, second = torch.triu_indices(across.shape[1], across.shape[1], offset=1)
    figures = []
    for k, gram in enumerate(across, start=1):
        norms = gram.diagonal().sqrt()
        summary = _summary(gram[first, second] / (norms[first] * norms[second]))
        if summary:
            figures.append({"k": k, **summary})
    return figures or None


def _summary(cosines):
    cosines = cosines[~cosines.isnan()]  # 0/0 from a step of zero length
    if cosines.numel() == 0:
        return None
    return {"mean": cosines.mean().item(), "min": cosines.min().item(), "max": cosines.max().item()}


def tower_verdict(exponent, consecutive_cosine):
    """(label, reason): "drift", "random walk", "mixed" or "n/a", from the thresholds above."""
    if exponent is None or consecutive_cosine is None:
        return "n/a", "needs ≥ 2 epochs"
    cosine = consecutive_cosine["mean"]
    figures = f"exponent {exponent:.2f}, consecutive cosine {cosine:.2f}"
    if exponent >= DRIFT_MIN_EXPONENT and cosine >= DRIFT_MIN_CONSECUTIVE_COSINE:
        return "drift", f"{figures}: its segments carry a consistent direction to match"
    if exponent <= WALK_MAX_EXPONENT or cosine <= WALK_MAX_CONSECUTIVE_COSINE:
        return "random walk", f"{figures}: its segments are mostly noise, little to match"
    return "mixed", f"{figures}: some direction under much noise"


def overall_verdict(towers):
    """One sentence over the towers' verdicts: which of them carry a signal worth matching."""
    verdicts = {tower: figures["verdict"] for tower, figures in towers.items()}
    drifting = [tower for tower, verdict in verdicts.items() if verdict == "drift"]
    others = ", ".join(f"{tower}: {verdict}" for tower, verdict in verdicts.items() if verdict != "drift")
    if set(verdicts.values()) == {"n/a"}:
        return "n/a (needs ≥ 2 epochs)"
    if not others:
        return "every tower drifts: the buffer carries a matchable signal"
    if drifting:
        return f"only the {' and '.join(drifting)} tower drifts ({others}): only its matching carries a signal"
    return f"no tower drifts ({others}): distillation has little to match; change the expert recipe first"


def verdict_lines(stats):
    """One line per tower and an overall line."""
    return ([f"{tower} tower: {figures['verdict']} ({figures['reason']})"
             for tower, figures in stats["towers"].items()] + [f"overall: {stats['overall']}"])


def format_stats(stats):
    """A compact table of the figures (towers as columns), notes on what is n/a, and the verdict lines."""
    epochs, towers = stats["epochs"], stats["towers"]
    spans = sorted({2 ** i for i in range(epochs.bit_length()) if 2 ** i <= epochs} | {epochs})
    rows = [("parameters", lambda f: f"{f['parameters']:,}")]
    rows += [(f"mean ‖θ_s+k − θ_s‖, k={k}", lambda f, k=k: f"{f['span_norm'][k - 1]:.4g}") for k in spans]
    rows += [("growth exponent (½ walk, 1 drift)",
              lambda f: "n/a" if f["exponent"] is None else f"{f['exponent']:.2f}"),
             ("consecutive-epoch cosine", lambda f: _summary_text(f["consecutive_cosine"]))]
    rows += [(f"cross-expert cosine, k={k}", lambda f, k=k: _summary_text(_at_span(f["cross_expert_cosine"], k)))
             for k in sorted({1, epochs})]
    lines = [f"{stats['buffer'] or 'trajectories'}: experts {stats['experts']}, epochs {epochs}",
             (f"{'':34}" + "".join(f"{tower:<24}" for tower in towers)).rstrip()]
    lines += [(f"{label:34}" + "".join(f"{cell(figures):<24}" for figures in towers.values())).rstrip()
              for label, cell in rows]
    if epochs < 2:
        lines.append("growth exponent, consecutive cosine: n/a (needs ≥ 2 epochs)")
    if stats["experts"] < 2:
        lines.append("cross-expert cosine: n/a (needs ≥ 2 experts)")
    return "\n".join(lines + verdict_lines(stats))


def _at_span(cross_expert_cosine, k):
    return next((figures for figures in cross_expert_cosine or [] if figures["k"] == k), None)


def _summary_text(summary):
    return "n/a" if summary is None else f"{summary['mean']:.2f} [{summary['min']:.2f}, {summary['max']:.2f}]"


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m training.trajectories",
        description="Do a buffer's expert segments drift (matchable) or random-walk (noise)? Run before distilling.")
    parser.add_argument("buffer_dir", metavar="BUFFER_DIR", help="folder of expert_NNN.safetensors files")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args(argv)
    if args.json:
        check_output(args.json, [args.buffer_dir], "--json")
    stats = buffer_stats(args.buffer_dir)  # a TrajectoryError is one line and exit 2 (common.cli.run)
    print(format_stats(stats))
    if args.json:
        atomic_write_json(args.json, stats)


if __name__ == "__main__":
    run(main)
