"""Caption features of the frozen text encoder, computed once per (dataset, split, encoder weights,
preprocessing) and reused by experts, distillation and evaluation.

The cache file records what it was computed from; a file whose record differs from the current inputs
is stale: it is rebuilt (and the reason printed), never silently reused.
"""
import re
from pathlib import Path

from safetensors import safe_open

from data.annotations import PREPROCESS_VERSION
from utils.io import read_tensor_file, save_tensors


def _provenance(split, encoder):
    return {"dataset": split.dataset, "split": split.split, "captions": split.fingerprint,
            "encoder": str(encoder.name), "encoder_weights": encoder.weights_hash,
            "preprocess_version": PREPROCESS_VERSION, "max_length": encoder.max_length}


def cache_path(cache_dir, split, encoder):
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(encoder.name)).name)
    return Path(cache_dir) / "text" / f"{split.dataset}_{split.split}_{slug}.safetensors"


def caption_features(split, encoder, cache_dir, log=print):
    """(n_captions, hidden_size) features of `split.captions`, from the cache when it is current."""
    path = cache_path(cache_dir, split, encoder)
    wanted = _provenance(split, encoder)
    if path.is_file():
        stale = _stale_fields(path, wanted, len(split.captions))
        if not stale:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor("features")
        log(f"text cache {path} is stale ({', '.join(stale)} changed): rebuilding")
    features = encoder.encode(list(split.captions))
    save_tensors(path, {"features": features}, wanted)
    return features


def _stale_fields(path, wanted, n_captions):
    try:
        meta, shapes = read_tensor_file(path)
        rows = shapes["features"][0]
    except Exception:  # unreadable or truncated file: treat as stale, it is rebuilt atomically
        return ["file unreadable"]
    stale = [k for k, v in wanted.items() if meta.get(k) != v]
    if rows != n_captions:
        stale.append("number of rows")
    return stale
