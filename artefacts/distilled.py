"""The distilled set: the one artefact every method ends in (DESIGN.md), and what evaluation reads.

One safetensors file: tensors `images` (N,3,S,S, normalised pixel space), `text_features` (N,h) and the
similarity factors (`sim_*`); metadata: method, identity (encoders, weight hashes, image size, dataset),
normalisation, similarity spec, learned student lrs, captions (nearest real ones, or generated), config,
seed and provenance. `export_distilled` writes it as PNGs + a Karpathy-style JSON for any other trainer,
`data.imagefolder` as a Hugging Face `imagefolder` dataset; `read_folder` reads either back.
A file whose tensors disagree with each other or with its metadata, or hold NaN/Inf, is refused when read.
"""
import json
import math
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from data.annotations import read_split
from data.images import SplitImages
from utils.cli import run
from utils.io import LOCK_FILE, atomic_write_json, folder_lock, read_tensor_file, save_tensors
from utils.similarity import Similarity

FORMAT = "mmdd-distilled-v1"
EXPORT_FORMAT = "mmdd-export-v1"  # in an export's marker file: marks a folder that a re-export may replace
FEATURES_FILE, METADATA_FILE, CARD_FILE = "features.safetensors", "metadata.jsonl", "README.md"  # imagefolder's
# What each export format writes into its folder, in the order it is moved in: the marker file last.
EXPORT_FILES = {"karpathy": ("images", "dataset.json"),
                "imagefolder": ("images", METADATA_FILE, CARD_FILE, FEATURES_FILE)}
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
    """The factor shapes an n-pair similarity of this kind has (utils.similarity)."""
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
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
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
    """The set an export folder holds, its images through `transform`, for a run with artefact identity `meta`: a
    Hugging Face imagefolder (`metadata.jsonl`: `data.imagefolder.read_imagefolder`), or `dataset.json` in Karpathy
    format (as `export_distilled` and EDGE write it) with `images/`: one pair per caption, captions encoded with the
    frozen `text_encoder`, S = I. With the source's learned text features, S and lrs gone, it trains like a coreset."""
    folder = Path(folder)
    annotations = folder / "dataset.json"
    if (folder / METADATA_FILE).is_file():
        if annotations.is_file():
            raise DistilledSetError(f"{folder} holds both {METADATA_FILE} (a Hugging Face imagefolder) and "
                                    f"dataset.json (Karpathy format); remove the one that does not describe images/")
        from data.imagefolder import read_imagefolder
        return read_imagefolder(folder, text_encoder, transform, meta)
    if not annotations.is_file():
        raise DistilledSetError(f"{folder} holds no dataset.json nor {METADATA_FILE}: expected images/ and a "
                                f"Karpathy-style dataset.json, or a Hugging Face imagefolder export")
    split = read_split(annotations, "train", folder / "images", f"folder:{folder.name}")
    source = json.loads(annotations.read_text()).get("source") or {}
    return encoded_pairs(split, text_encoder, transform, meta, folder, source.get("method"), "dataset.json")


def encoded_pairs(split, text_encoder, transform, meta, folder, method, why):
    """An export folder's pairs as a coreset: one per caption, captions encoded by the frozen `text_encoder`,
    S = I; `why` says where the text features come from (recorded in the set's metadata)."""
    return real_pairs(split, text_encoder.encode(list(split.captions)), transform, torch.arange(len(split.captions)),
                      {"method": method or "folder", "budget": len(split.captions), "loss": "infonce", **meta,
                       "source": str(folder), "text_features": f"encoded captions ({why})"})


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


def check_exportable(dset, folder):
    """Refuse, before anything is written, a set without a caption per pair or with non-finite pixels."""
    captions = dset.meta.get("captions")
    if not captions or len(captions) != len(dset):
        raise DistilledSetError(f"cannot export to {folder}: this distilled set has no caption per pair to export")
    if not torch.isfinite(dset.images).all():
        raise DistilledSetError(f"cannot export to {folder}: the set's images hold NaN or Inf values (the "
                                f"distillation diverged); nothing was written")


def write_pngs(dset, folder):
    """`folder/0000.png …`: the set's images as 8-bit RGB (pixels outside [0, 1] clipped); their names."""
    from PIL import Image
    from utils.visuals import to_uint8
    folder.mkdir()
    names = [f"{i:04d}.png" for i in range(len(dset))]
    for name, pixels in zip(names, to_uint8(dset.images, dset.meta["mean"], dset.meta["std"])):
        Image.fromarray(pixels).save(folder / name, format="PNG")
    return names


@contextmanager
def export_build(folder, fmt, overwrite):
    """Yield a fresh folder beside `folder` to build an export of format `fmt` (EXPORT_FILES) in; on success its
    files replace those of the same names in `folder`, and a previous export's (of either format). So a failed
    export leaves the folder as it was, and a re-export leaves none of the old files. A non-empty folder other than
    a previous export is refused unless `overwrite` (then only the files this export writes are replaced)."""
    folder = Path(folder)
    _check_export_target(folder, fmt, overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.export-"))
    try:
        yield build
        _move_export_in(build, folder, fmt)
    finally:
        shutil.rmtree(build, ignore_errors=True)


def export_distilled(dset, folder, overwrite=False):
    """`folder/images/0000.png …` + `folder/dataset.json` (Karpathy format, every pair in split train)
    with each pair's caption (`meta["captions"]`: the nearest real ones, or generated ones), written safely
    (`export_build`)."""
    check_exportable(dset, folder)
    with export_build(folder, "karpathy", overwrite) as build:
        names = write_pngs(dset, build / "images")
        write_captions(build, names, [[c] for c in dset.meta["captions"]],
                       {k: dset.meta.get(k) for k in ("method", "dataset", *IDENTITY_KEYS)})


def _previous_export(folder):
    """The format of the export in `folder` (its marker file holds EXPORT_FORMAT), or None."""
    try:
        if json.loads((folder / "dataset.json").read_text()).get("format") == EXPORT_FORMAT:
            return "karpathy"
    except (OSError, ValueError, AttributeError):
        pass
    try:
        return "imagefolder" if read_tensor_file(folder / FEATURES_FILE)[0].get("format") == EXPORT_FORMAT else None
    except (OSError, ValueError, AttributeError, SafetensorError):
        return None


def _listed(names):
    names = [f"{n}/" if n == "images" else n for n in names]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _check_export_target(folder, fmt, overwrite):
    if folder.exists() and not folder.is_dir():
        raise DistilledSetError(f"cannot export to {folder}: it is a file, not a folder")
    if overwrite or not folder.is_dir() or _previous_export(folder):
        return
    entries = sorted(p.name for p in folder.iterdir() if p.name != LOCK_FILE)
    if entries:
        shown = ", ".join(entries[:5]) + (", …" if len(entries) > 5 else "")
        raise DistilledSetError(f"export folder {folder} is not empty ({shown}) and is not a previous export; "
                                f"choose a new or empty folder, or pass --overwrite (overwrite=True) to replace "
                                f"its {_listed(EXPORT_FILES[fmt])}")


def _move_export_in(build, folder, fmt):
    """Move the files of a previous export in `folder` and those the new one replaces into `build/.old` (deleted
    with it), the marker first, then the new export's files in, the marker last; put the old ones back if a move
    fails."""
    folder.mkdir(exist_ok=True)
    previous = _previous_export(folder)
    replaced = dict.fromkeys([*reversed(EXPORT_FILES[previous] if previous else ()), *reversed(EXPORT_FILES[fmt])])
    aside, moved, placed = build / ".old", [], []
    aside.mkdir()
    try:
        for name in replaced:
            if (folder / name).exists():
                (folder / name).rename(aside / name)
                moved.append(name)
        for name in EXPORT_FILES[fmt]:
            (build / name).rename(folder / name)
            placed.append(name)
    except OSError:
        for name in placed:
            (folder / name).rename(build / name)
        for name in moved:
            (aside / name).rename(folder / name)
        raise


def write_captions(folder, names, captions, source):
    """`folder/dataset.json` in Karpathy format: each image of `names` in split train with its list of
    `captions`, and where the set came from."""
    entries = [{"filename": name, "split": "train", "sentences": [{"raw": c} for c in cs]}
               for name, cs in zip(names, captions)]
    atomic_write_json(Path(folder) / "dataset.json", {"format": EXPORT_FORMAT, "images": entries, "source": source})


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(prog="python -m data.distilled",
                                     description="Export a distilled set: PNGs + a Karpathy-style JSON, or a Hugging "
                                                 "Face imagefolder dataset with a dataset card.")
    parser.add_argument("file", type=Path, help="distilled-set file (distill.py, coreset.py)")
    parser.add_argument("out", type=Path, help="folder to write the export into")
    parser.add_argument("--format", choices=tuple(EXPORT_FILES), default="karpathy",
                        help="karpathy (default): images/ + dataset.json; imagefolder: images/, metadata.jsonl, a "
                             "dataset card README.md and features.safetensors (text features, S), for "
                             "datasets.load_dataset('imagefolder', data_dir=OUT)")
    parser.add_argument("--evaluation", type=Path,
                        help="results JSON of evaluate.py on FILE: its recall goes into the card (imagefolder)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the export's files in a non-empty folder that is not a previous export")
    args = parser.parse_args(argv)
    if args.evaluation and args.format != "imagefolder":
        parser.error("--evaluation goes into the dataset card, which only --format imagefolder writes")
    dset = load_distilled(args.file)
    if args.format == "imagefolder":  # the evaluation is read before the folder is touched
        from data.imagefolder import export_imagefolder, read_evaluation
        evaluation = read_evaluation(args.evaluation, args.file) if args.evaluation else None
        export = partial(export_imagefolder, dset, args.out, args.overwrite, args.file.name, evaluation)
    else:
        export = partial(export_distilled, dset, args.out, args.overwrite)
    with folder_lock(args.out):
        export()
    print(f"{len(dset)} pairs exported to {args.out} ({args.format})")


if __name__ == "__main__":
    run(main)
