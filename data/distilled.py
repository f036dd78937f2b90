"""The distilled set: the one artefact every method ends in (DESIGN.md), and what evaluation reads.

One safetensors file: tensors `images` (N,3,S,S, normalised pixel space), `text_features` (N,h) and the
similarity factors (`sim_*`); metadata: method, identity (encoders, weight hashes, image size, dataset),
normalisation, similarity spec, learned student lrs, captions (nearest real ones, or generated), config,
seed and provenance. `export_distilled` writes it as PNGs + a Karpathy-style JSON for any other trainer.
"""
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import safe_open

from data.annotations import read_split
from data.images import SplitImages
from utils.io import atomic_path, atomic_write_json, read_tensor_file, save_tensors
from utils.similarity import Similarity

FORMAT = "mmdd-distilled-v1"
IDENTITY_KEYS = ("image_encoder", "image_weights", "text_encoder", "text_weights", "image_size")


class DistilledSetError(ValueError):
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

    def metadata(self):
        return {**self.meta, "format": FORMAT, "similarity": self.similarity.spec(), "lrs": self.lrs}


def save_distilled(path, dset, extra_tensors=None, extra_meta=None):
    """Write atomically; `extra_*` carry what a checkpoint needs beyond the set itself."""
    save_tensors(path, {**dset.tensors(), **(extra_tensors or {})}, {**dset.metadata(), **(extra_meta or {})})


def load_distilled(path, identity=None, with_extras=False, keys=IDENTITY_KEYS):
    """Read a distilled set; with `identity`, refuse one made for other encoders or another image size
    (the identity `keys`; cross-architecture evaluation leaves out the image encoder's)."""
    path = Path(path)
    if not path.is_file():
        raise DistilledSetError(f"distilled set {path} not found")
    try:
        meta, _ = read_tensor_file(path)
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise DistilledSetError(f"distilled set {path} is unreadable ({err}); it is truncated or damaged") from err
    if meta.get("format") != FORMAT:
        raise DistilledSetError(f"{path} is not a distilled set of this toolkit ({FORMAT})")
    for key in keys if identity is not None else ():
        if meta.get(key) != identity[key]:
            raise DistilledSetError(
                f"distilled set {path} was made with {key} = {meta.get(key)}, but this run uses {identity[key]}; "
                f"evaluate it with the encoders and image size it was distilled for")
    spec = meta.pop("similarity")
    sim = Similarity.from_spec(spec, {k: tensors.pop(k) for k in list(tensors) if k.startswith("sim_")})
    dset = DistilledSet(tensors.pop("images"), tensors.pop("text_features"), sim, meta.pop("lrs"), meta)
    return (dset, tensors) if with_extras else dset


def random_pairs(split, n, seed):
    """Caption indices of `n` training pairs drawn at random (reproducibly from `seed`)."""
    return torch.randperm(len(split.captions), generator=torch.Generator().manual_seed(seed))[:n]


def real_pairs(split, features, transform, caption_indices, meta):
    """A set of real training pairs (one image and one caption each), S = I: the initialisation of a
    synthetic set, and the random-coreset baseline."""
    images = SplitImages(split, transform, per_caption=True)
    pixels = torch.stack([images[int(c)][0] for c in caption_indices])
    captions = [split.captions[int(c)] for c in caption_indices]
    return DistilledSet(pixels, features[caption_indices].clone(), Similarity("identity", len(pixels)), None,
                        {**meta, "captions": captions, "source_captions": [int(c) for c in caption_indices]})


def read_folder(folder, text_encoder, transform, meta):
    """A set of real-looking pairs from `folder/dataset.json` (Karpathy format, as `export_distilled` and
    EDGE write it) and `folder/images/`: one pair per caption, captions encoded with the frozen
    `text_encoder`, S = I. With the source's learned text features, S and lrs gone, it trains like a coreset."""
    folder = Path(folder)
    annotations = folder / "dataset.json"
    if not annotations.is_file():
        raise DistilledSetError(f"{folder} holds no dataset.json: expected images/ and a Karpathy-style dataset.json")
    split = read_split(annotations, "train", folder / "images", f"folder:{folder.name}")
    source = json.loads(annotations.read_text()).get("source") or {}
    caption_indices = torch.arange(len(split.captions))
    return real_pairs(split, text_encoder.encode(list(split.captions)), transform, caption_indices,
                      {"method": source.get("method") or "folder", "budget": len(split.captions), "loss": "infonce",
                       **meta, "source": str(folder)})


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


def nearest_captions(text_features, reference_features, reference_captions):
    """For each (learned) text feature, the real caption whose frozen-encoder feature is most similar."""
    a = torch.nn.functional.normalize(text_features.float(), dim=-1)
    b = torch.nn.functional.normalize(reference_features.float(), dim=-1)
    return [reference_captions[i] for i in (a @ b.t()).argmax(dim=1).tolist()]


def export_distilled(dset, folder):
    """`folder/images/0000.png …` + `folder/dataset.json` (Karpathy format, every pair in split train)
    with each pair's caption (`meta["captions"]`: the nearest real ones, or generated ones)."""
    from PIL import Image
    from utils.visuals import to_uint8
    captions = dset.meta.get("captions")
    if not captions or len(captions) != len(dset):
        raise DistilledSetError("this distilled set has no caption per pair to export")
    folder = Path(folder)
    names = [f"{i:04d}.png" for i in range(len(dset))]
    for name, pixels in zip(names, to_uint8(dset.images, dset.meta["mean"], dset.meta["std"])):
        with atomic_path(folder / "images" / name) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
    write_captions(folder, names, [[c] for c in captions],
                   {k: dset.meta.get(k) for k in ("method", "dataset", *IDENTITY_KEYS)})


def write_captions(folder, names, captions, source):
    """`folder/dataset.json` in Karpathy format: each image of `names` in split train with its list of
    `captions`, and where the set came from."""
    entries = [{"filename": name, "split": "train", "sentences": [{"raw": c} for c in cs]}
               for name, cs in zip(names, captions)]
    atomic_write_json(Path(folder) / "dataset.json", {"images": entries, "source": source})


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(description="Export a distilled set to PNGs + a Karpathy-style JSON.")
    parser.add_argument("file", type=Path, help="distilled-set file (distill.py, coreset.py)")
    parser.add_argument("out", type=Path, help="folder to write images/ and dataset.json into")
    args = parser.parse_args()
    dset = load_distilled(args.file)
    export_distilled(dset, args.out)
    print(f"{len(dset)} pairs exported to {args.out}")
