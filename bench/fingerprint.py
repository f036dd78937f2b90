"""Content hashes of artefacts, to show that a change of code leaves its outputs as they were.

    python bench/fingerprint.py runs/tuxpaint/lors_50/distilled.safetensors runs/tuxpaint/demo_results.json …

For each file: its sha256, and a canonical hash that two identical runs share even where the bytes do not:
a .safetensors file by its tensors (name, dtype, shape, bytes) and its metadata as sorted JSON (safetensors writes
metadata keys in a per-process order), a .json file as sorted JSON; both without their wall-clock fields (an expert's
`seconds`, a student's `seconds_per_student`).
"""
import hashlib
import json
import sys
from pathlib import Path

from safetensors import safe_open

TIMING_KEYS = {"seconds_per_student", "seconds", "wall_s", "cpu_s"}  # differ between identical runs


def _without_timing(value):
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def canonical(path):
    digest = hashlib.sha256()
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            meta = _without_timing({k: json.loads(v) for k, v in meta.items()})
            digest.update(json.dumps(meta, sort_keys=True).encode())
            for name in sorted(f.keys()):
                tensor = f.get_tensor(name).contiguous()
                digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(tensor.view(-1).view(__import__("torch").uint8).numpy().tobytes())
    elif path.suffix == ".json":
        digest.update(json.dumps(_without_timing(json.loads(path.read_text())), sort_keys=True).encode())
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def main(paths):
    for name in paths:
        path = Path(name)
        print(f"{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}  {canonical(path)[:16]}  {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
