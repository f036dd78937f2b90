"""Expert trajectory files: one safetensors file per expert, holding θ after init and after each epoch.

Tensors: "image" (E+1, |θ^I|) and "text" (E+1, |θ^T|), fp32 or bf16. Metadata: the run identity
(encoders, their weight hashes, image size, dataset), the parameter layouts, and the training log.
A file is only used where its identity and layouts match the current model.
"""
import re
from pathlib import Path

import torch
from safetensors import safe_open

from utils.io import read_tensor_file, save_tensors

FORMAT = "mmdd-expert-v1"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
_NAME = re.compile(r"expert_(\d+)\.safetensors$")


class TrajectoryError(ValueError):
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
    """Metadata of an expert file (JSON values decoded); a clear error if the file is damaged."""
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
        snapshots = {tower: f.get_tensor(tower).float() for tower in f.keys()}
    return snapshots, meta


def read_snapshots(path, epochs):
    """{tower: (len(epochs), P) float32} of the requested epochs only, without reading the rest."""
    with safe_open(str(path), framework="pt") as f:
        return {tower: torch.cat([f.get_slice(tower)[e:e + 1] for e in epochs]).float() for tower in f.keys()}
