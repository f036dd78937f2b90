"""Caption features of the frozen text encoder, computed once per (dataset, split, encoder weights,
preprocessing) and reused by experts, distillation and evaluation.

With `samples=M`, the file holds M encodings of every caption made with the encoder in train mode, each under its
own seed: the dropout noise the public LoRS code gets by encoding every batch anew (`buffer.text_feature_samples`).

The cache file records what it was computed from; a file whose record differs from the current inputs
is stale: it is rebuilt (and the reason printed), never silently reused.
"""
import re
from pathlib import Path

import torch
from safetensors import safe_open

from common.io import read_tensor_file, save_tensors
from data.annotations import PREPROCESS_VERSION

NOISE_SEED = 0  # encoding m of a noisy cache runs under seed NOISE_SEED + m


def _provenance(split, encoder, samples):
    record = {"dataset": split.dataset, "split": split.split, "captions": split.fingerprint,
              "encoder": str(encoder.name), "encoder_weights": encoder.weights_hash,
              "preprocess_version": PREPROCESS_VERSION, "max_length": encoder.max_length}
    if samples:
        record.update(samples=samples, encoder_dropout=encoder.dropout, noise_seed=NOISE_SEED)
    return record


def cache_path(cache_dir, split, encoder, samples=None):
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(encoder.name)).name)
    noisy = "_dropout" if samples else ""
    return Path(cache_dir) / "text" / f"{split.cache_stem}_{slug}{noisy}.safetensors"


def caption_features(split, encoder, cache_dir, log=print, samples=None):
    """(n_captions, hidden_size) clean features of `split.captions`, or with `samples=M` (M, n_captions,
    hidden_size) dropout-noised ones; from the cache when it is current."""
    path = cache_path(cache_dir, split, encoder, samples)
    wanted = _provenance(split, encoder, samples)
    shape = (samples, len(split.captions)) if samples else (len(split.captions),)
    if path.is_file():
        stale = _stale_fields(path, wanted, shape)
        if not stale:
            with safe_open(str(path), framework="pt") as f:
                return f.get_tensor("features")
        log(f"text cache {path} is stale ({', '.join(stale)} changed): rebuilding")
    captions = list(split.captions)
    if samples:
        features = torch.stack([encoder.encode(captions, dropout_seed=NOISE_SEED + m) for m in range(samples)])
    else:
        features = encoder.encode(captions)
    save_tensors(path, {"features": features}, wanted)
    return features


def _stale_fields(path, wanted, shape):
    try:
        meta, shapes = read_tensor_file(path)
        found = tuple(shapes["features"][:-1])
    except Exception:  # unreadable or truncated file: treat as stale, it is rebuilt atomically
        return ["file unreadable"]
    stale = [k for k, v in wanted.items() if meta.get(k) != v]
    if found != shape:
        stale.append("number of rows")
    return stale
