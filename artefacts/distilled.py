"""The distilled set: the one artefact every method ends in, and what evaluation reads.

One safetensors file: tensors `images` (N,3,S,S, normalised pixel space), `text_features` (N,h) and the
similarity factors (`sim_*`); metadata: method, identity (encoders, weight hashes, image size, dataset),
normalisation, similarity spec, learned student lrs, captions (nearest real ones, or generated), config,
seed and provenance. A file whose tensors disagree with each other or with its metadata, or hold NaN/Inf, is refused
when read. Sets of real pairs: `artefacts.pairs`; export folders: `artefacts.export`.
"""
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open

from common.errors import InputError
from common.io import read_tensor_file, save_tensors
from training.similarity import Similarity

FORMAT = "mmdd-distilled-v1"
IDENTITY_KEYS = ("image_encoder", "image_weights", "text_encoder", "text_weights", "image_size")


class DistilledSetError(InputError):
    pass


@dataclass
class DistilledSet:
    images: torch.Tensor
    text_features: torch.Tensor
    similarity: Similarity
    lrs: dict = None                      # {"image": η_I, "text": η_T}: learned student lrs, or None
    meta: dict = field(default_factory=dict)

    def __len__(self):
        return self.images.shape[0]

    def tensors(self):
        return {"images": self.images.detach(), "text_features": self.text_features.detach(),
                **{k: v.detach() for k, v in self.similarity.params.items()}}

    def made_with(self, dotted):
        """The value of config key `section.key` of the run that made the set (None when it does not record one)."""
        section, key = dotted.split(".")
        return ((self.meta.get("config") or {}).get(section) or {}).get(key)

    def metadata(self):
        return {**self.meta, "format": FORMAT, "similarity": self.similarity.spec(), "lrs": self.lrs}


def save_distilled(path, dset, extra_tensors=None, extra_meta=None):
    """Write atomically; `extra_*` carry what a checkpoint needs beyond the set itself."""
    save_tensors(path, {**dset.tensors(), **(extra_tensors or {})}, {**dset.metadata(), **(extra_meta or {})})


def load_distilled(path, identity=None, with_extras=False, keys=IDENTITY_KEYS, text_dim=None):
    """Read a distilled set; with `identity`, refuse one made for other encoders or another image size
    (the identity `keys`; cross-architecture evaluation leaves out the image encoder's); with `text_dim`, one
    whose text features are not that wide. A set inconsistent in itself is always refused (`check_consistent`)."""
    path = Path(path)
    if not path.is_file():
        raise DistilledSetError(f"distilled set {path} not found")
    meta, tensors = read_set_file(path)
    if meta.get("format") != FORMAT:
        raise DistilledSetError(f"{path} is not a distilled set of this toolkit ({FORMAT})")
    for key in keys if identity is not None else ():
        if meta.get(key) != identity[key]:
            raise DistilledSetError(
                f"distilled set {path} was made with {key} = {meta.get(key)}, but this run uses {identity[key]}; "
                f"evaluate it with the encoders and image size it was distilled for")
    missing = [k for k in ("images", "text_features") if k not in tensors]
    if missing:
        raise DistilledSetError(f"distilled set {path} has no {' or '.join(missing)} tensor; the file is damaged")
    sim = read_similarity(path, meta.pop("similarity", None),
                          {k: tensors.pop(k) for k in list(tensors) if k.startswith("sim_")})
    dset = DistilledSet(tensors.pop("images"), tensors.pop("text_features"), sim, meta.pop("lrs", None), meta)
    check_consistent(dset, path, identity.get("image_size") if identity else None, text_dim)
    return (dset, tensors) if with_extras else dset


def read_set_file(path):
    """(metadata, tensors) of a safetensors file written by `save_tensors`, refused if damaged."""
    try:
        meta, _ = read_tensor_file(path)
        with safe_open(str(path), framework="pt") as f:
            return meta, {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise DistilledSetError(f"distilled set {path} is unreadable ({err}); it is truncated or damaged") from err


def read_similarity(path, spec, params):
    try:
        return Similarity.from_spec(spec, params)
    except (KeyError, TypeError, ValueError) as err:
        raise DistilledSetError(f"distilled set {path}: its similarity metadata {spec!r} is malformed ({err}); "
                                f"the file is damaged") from err


def _similarity_shapes(sim, n):
    """The factor shapes an n-pair similarity of this kind has (training.similarity)."""
    return {"identity": {}, "full": {"sim_full": (n, n)},
            "lowrank": {"sim_diag": (n,), "sim_left": (n, sim.rank), "sim_right": (n, sim.rank)}}[sim.kind]


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_consistent(dset, path, image_size=None, text_dim=None):
    """Refuse a set whose tensors do not fit each other, its metadata or the caller's model (`image_size`, the
    text feature width `text_dim`), or hold NaN/Inf: such a set would be evaluated wrongly or not at all."""
    def inconsistent(problem):
        return DistilledSetError(f"distilled set {path}: {problem}; the file is inconsistent "
                                 f"(re-export or re-run the distillation)")

    images, texts = dset.images, dset.text_features
    if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] != images.shape[3] or len(images) == 0:
        raise inconsistent(f"images has shape {tuple(images.shape)}, not (N, 3, S, S) with N ≥ 1")
    n, size = images.shape[0], images.shape[2]
    if dset.meta.get("image_size", size) != size:
        raise inconsistent(f"images are {size}×{size} pixels but its metadata says "
                           f"image_size {dset.meta['image_size']}")
    if image_size is not None and size != image_size:
        raise DistilledSetError(f"distilled set {path}: images are {size}×{size} pixels, but this run uses "
                                f"image_size {image_size}; evaluate it with the image size it was distilled for")
    if texts.dim() != 2:
        raise inconsistent(f"text_features has shape {tuple(texts.shape)}, not (N, h)")
    if texts.shape[0] != n:
        raise inconsistent(f"text_features has {texts.shape[0]} rows but images has {n}")
    if text_dim is not None and texts.shape[1] != text_dim:
        raise DistilledSetError(f"distilled set {path}: text_features are {texts.shape[1]}-d, but this run's text "
                                f"encoder gives {text_dim}-d features; evaluate it with the text encoder it was "
                                f"distilled for")
    sim = dset.similarity
    if sim.n != n:
        raise inconsistent(f"its similarity is for {sim.n} pairs but images has {n}")
    shapes = {k: tuple(v.shape) for k, v in sim.params.items()}
    if shapes != _similarity_shapes(sim, n):
        raise inconsistent(f"its {sim.kind} similarity has factors {shapes}, expected {_similarity_shapes(sim, n)}")
    for name, tensor in dset.tensors().items():
        if tensor.dtype != torch.float32:  # the students and the loop compute in fp32
            raise inconsistent(f"{name} is {str(tensor.dtype).removeprefix('torch.')}, not float32")
        if not torch.isfinite(tensor).all():
            raise DistilledSetError(f"distilled set {path}: {name} holds NaN or Inf values; the distillation "
                                    f"diverged or the file is damaged (re-run the distillation)")
    _check_metadata(dset, n, inconsistent)


def _check_metadata(dset, n, inconsistent):
    lrs = dset.lrs
    if lrs is not None and (not isinstance(lrs, dict) or set(lrs) != {"image", "text"}
                            or not all(_is_number(v) and v > 0 for v in lrs.values())):
        raise inconsistent(f"lrs is {lrs!r}, not null or {{image: η > 0, text: η > 0}}")
    captions = dset.meta.get("captions")
    if captions is not None and (not isinstance(captions, list) or not all(isinstance(c, str) for c in captions)):
        raise inconsistent("captions is not a list of strings")
    if captions is not None and len(captions) != n:
        raise inconsistent(f"captions has {len(captions)} entries but images has {n}")
    for key in ("mean", "std"):
        value = dset.meta.get(key)
        if not isinstance(value, list) or len(value) != 3 or not all(_is_number(v) for v in value):
            raise inconsistent(f"{key} is {value!r}, not a list of 3 numbers (the pixel normalisation)")
    if not all(v > 0 for v in dset.meta["std"]):
        raise inconsistent(f"std is {dset.meta['std']!r}: every channel's std must be > 0")


def renormalised(dset, mean, std):
    """The set with its pixels moved to another normalisation (another encoder's, or `data.pixel_stats`); the set
    itself when it already has this one."""
    if [list(dset.meta[k]) for k in ("mean", "std")] == [list(mean), list(std)]:
        return dset
    shape = (1, 3, 1, 1)
    old_mean, old_std = (torch.tensor(dset.meta[k], dtype=torch.float32).view(shape) for k in ("mean", "std"))
    pixels = dset.images * old_std + old_mean
    images = (pixels - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
    return replace(dset, images=images, meta={**dset.meta, "mean": list(mean), "std": list(std)})
