"""A distilled set as a Hugging Face `imagefolder` dataset, and back.

    python -m artefacts.export runs/tuxpaint/lors_50/distilled.safetensors runs/tuxpaint/lors_50_hf --format imagefolder --evaluation runs/tuxpaint/demo_results.json

writes `images/0000.png …` (8-bit RGB), `metadata.jsonl` (one row per pair: `file_name`, `caption`, `pair_index`),
a dataset card `README.md` (YAML front matter for the Hub), and `features.safetensors`: what is neither image nor
caption (the text features, the similarity's factors `sim_*`, and the set's metadata: encoders, normalisation, lrs,
config). `datasets.load_dataset("imagefolder", data_dir=OUT)` loads images and captions; `read_imagefolder` (through
`artefacts.export.read_folder`, so `evaluate.py --distilled OUT`) gives the set back as distilled.
"""
import hashlib
import json
import os
from pathlib import Path

import torch
import yaml

from artefacts.distilled import DistilledSet, DistilledSetError, check_consistent, read_set_file, read_similarity
from artefacts.folder import (CARD_FILE, EXPORT_FORMAT, FEATURES_FILE, METADATA_FILE, check_exportable, export_build,
                              write_pngs)
from artefacts.pairs import encoded_pairs
from common.errors import InputError
from common.io import atomic_write_text, save_tensors
from data.annotations import CaptionSplit, preprocess_caption
from data.images import SplitImages
from training.metrics import KS, format_table

TEXT_KEYS = ("text_encoder", "text_weights")  # what learned text features are only meaningful with
IMAGE_HASHES = "image_sha256"  # features.safetensors: the sha256 of each pair's PNG, in pair_index order
RECALL_KEYS = tuple(f"{side}@{k}" for side in ("ir", "tr") for k in KS) + ("mean",)
# the source data's licence (Hugging Face ids), which a set made from it keeps: Tux Paint's stamps are GPL-2.0;
# Flickr30K's and COCO's images are under Flickr's terms. Other data: `--license`, else unknown
SOURCE_LICENSES = {"tuxpaint": "gpl-2.0", "flickr30k": "other", "coco": "other"}


def export_imagefolder(dset, folder, overwrite=False, source=None, evaluation=None, license=None):
    """Write the export (module docstring) safely (`export_build`); `source` names the set's file in the card,
    `evaluation` (`read_evaluation`) adds its recall, `license` is the source data's (default: `SOURCE_LICENSES`)."""
    check_exportable(dset, folder)
    with export_build(folder, "imagefolder", overwrite) as build:
        names = write_pngs(dset, build / "images")
        rows = [{"file_name": f"images/{name}", "caption": caption, "pair_index": i}
                for i, (name, caption) in enumerate(zip(names, dset.meta["captions"]))]
        atomic_write_text(build / METADATA_FILE, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
        meta = {k: v for k, v in dset.metadata().items() if k != "captions"}  # the captions are in metadata.jsonl
        hashes = [_sha256(build / "images" / name) for name in names]  # ties each feature row to its image
        save_tensors(build / FEATURES_FILE, {k: v for k, v in dset.tensors().items() if k != "images"},
                     {**meta, "format": EXPORT_FORMAT, IMAGE_HASHES: hashes})
        atomic_write_text(build / CARD_FILE, card(dset, source, evaluation, license))


# ---- the dataset card -------------------------------------------------------------------------------------------

def read_evaluation(path, set_path):
    """{"file", "dataset", "entry"}: the result for `set_path` in a results JSON of evaluate.py (paths compared
    as resolved from the current folder)."""
    path = Path(path)
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"--evaluation {path} cannot be read as JSON ({err}); pass the results JSON that "
                         f"evaluate.py --out wrote") from err
    entries = results.get("results") if isinstance(results, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise InputError(f"--evaluation {path} has no 'results' list of entries: it is not a results JSON of "
                         f"evaluate.py")
    target = Path(set_path).resolve()
    matches = [e for e in entries if isinstance(e.get("source"), str) and Path(e["source"]).resolve() == target]
    if not matches:
        sources = ", ".join(str(e.get("source")) for e in entries) or "none"
        raise InputError(f"--evaluation {path} holds no result for {set_path} (its sets: {sources}); run "
                         f"evaluate.py --distilled {set_path} from this folder and pass the JSON it writes")
    entry = matches[0]
    protocols = entry.get("protocols")
    if not (isinstance(protocols, dict) and protocols
            and all(isinstance(r, dict) and all(_is_recall(r.get(k)) for k in RECALL_KEYS)
                    for r in protocols.values())):
        raise InputError(f"--evaluation {path}: the result for {set_path} has no readable recall (per protocol, "
                         f"{', '.join(RECALL_KEYS)} as % or [mean, std]); pass an unedited results JSON of "
                         f"evaluate.py")
    evaluate = (results.get("config") or {}).get("evaluate") or {}
    return {"file": path.name, "dataset": results.get("dataset"), "entry": entry, "epochs": evaluate.get("epochs")}


def _is_recall(value):
    numbers = value if isinstance(value, list) and len(value) == 2 else [value]
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers)


def card(dset, source=None, evaluation=None, license=None):
    """README.md: YAML front matter for the Hub (the `configs` entry makes `load_dataset(FOLDER)` read
    metadata.jsonl too), then what the set is, where its parts are and, if measured, its recall."""
    meta, n = dset.meta, len(dset)
    method, dataset = meta.get("method", "unknown method"), meta.get("dataset", "an unnamed dataset")
    license = license or SOURCE_LICENSES.get(dataset, "unknown")
    front = {"license": license, "pretty_name": f"{method} distilled set of {dataset} ({n} pairs)",
             "task_categories": ["image-to-text", "text-to-image"],
             "tags": ["dataset-distillation", "image-text-retrieval", "synthetic"],
             "size_categories": ["n<1K" if n < 1000 else "1K<n<10K" if n < 10000 else "10K<n<100K"],
             "configs": [{"config_name": "default",
                          "data_files": [{"split": "train", "path": [METADATA_FILE, "images/*.png"]}]}]}
    lrs = dset.lrs
    size = meta.get("image_size", dset.images.shape[-1])
    rows = [("method", f"`{method}`" + (f" ({meta['metagrad']})" if meta.get("metagrad") else "")),
            ("budget", f"{meta.get('budget', n)} pairs"),
            ("distilled from", f"{dataset}, file `{source}`" if source else dataset),
            ("licence", f"`{license}`, the source data's: the images and captions derive from {dataset}"),
            ("image encoder", f"`{meta.get('image_encoder')}`, weights `{meta.get('image_weights')}`, {size}×{size} "
                              f"pixels, normalised with mean {meta.get('mean')} and std {meta.get('std')}"),
            ("text encoder", f"`{meta.get('text_encoder')}`, weights `{meta.get('text_weights')}`"),
            ("learned learning rates", f"image {lrs['image']:.4g}, text {lrs['text']:.4g}" if lrs else "none"),
            ("text features", f"`text_features` ({n}×{dset.text_features.shape[1]}) in `{FEATURES_FILE}`"),
            ("similarity matrix S", _similarity_text(dset.similarity))]
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "",
             f"# {method} distilled set of {dataset}: {n} image–text pairs", "",
             f"{n} image–text pairs made by `{method}` from {dataset}'s training split: training a retrieval model on "
             f"them stands in for training on the whole split.", "", "| | |", "|---|---|",
             *(f"| {key} | {value} |" for key, value in rows), "",
             "## Files", "",
             "- `images/NNNN.png`: the image of pair NNNN, 8-bit RGB: the distilled pixels rounded to 1/255 (values "
             "outside [0, 1] clipped).",
             f"- `{METADATA_FILE}`: one row per pair: `file_name`, `caption` (for learned text features, the real "
             f"training caption nearest to the pair's feature; a reading aid) and `pair_index`, the pair's row in the "
             f"tensors.",
             f"- `{FEATURES_FILE}`: `text_features` (what students train with in place of encoded captions), the "
             f"similarity's factors (`sim_*`), and the set's metadata (encoders, normalisation, lrs, config) as JSON.",
             "", "## Loading", "", "```python", "from datasets import load_dataset",
             'pairs = load_dataset("imagefolder", data_dir="THIS_FOLDER", split="train")  # image, caption, pair_index',
             "```", "",
             "`python evaluate.py --config CONFIG --distilled THIS_FOLDER` trains students on the set as distilled "
             f"(images, `{FEATURES_FILE}`'s text features, S and lrs) when CONFIG has the text encoder above, and on "
             "the encoded captions with S = I otherwise.", "", "## Recall", ""]
    if evaluation:
        entry, students = evaluation["entry"], evaluation["entry"].get("students", "?")
        epochs = f" for {evaluation['epochs']} epochs" if evaluation.get("epochs") else ""
        lr = (f", lr {entry['lr']} chosen on val" if entry.get("lr") else ", at the set's learned lrs" if dset.lrs
              else "")
        lines += [f"Test retrieval on {evaluation['dataset']} (%; mean ± std over {students} student"
                  f"{'' if students == 1 else 's'}, each trained on this set{epochs}{lr}; the students and settings "
                  f"of one evaluate.py run, not a tuned result), from `{evaluation['file']}` written by evaluate.py:",
                  "",
                  format_table(list(entry["protocols"].items()))]
    else:
        lines.append("Not measured for this card (export with `--evaluation RESULTS.json` from evaluate.py).")
    return "\n".join(lines) + "\n"


def _similarity_text(sim):
    where = f"in `{FEATURES_FILE}`; rows are images, columns texts, both in `pair_index` order"
    if sim.kind == "lowrank":
        return (f"low rank {sim.rank}, α {sim.alpha:g}: S = diag(a) + (α/r)·L·Rᵀ from `sim_diag` (a), `sim_left` (L) "
                f"and `sim_right` (R) {where}")
    if sim.kind == "full":
        return f"`sim_full` ({sim.n}×{sim.n}) {where}"
    return "S = I (not learned; no tensor)"


# ---- reading it back --------------------------------------------------------------------------------------------

def read_imagefolder(folder, text_encoder, transform, meta):
    """The set an imagefolder export holds, its images through `transform` (the run's test transform). As distilled
    (text features, S and lrs from features.safetensors) when `meta`, the run's artefact identity, has the text
    encoder and weights they were learned for; otherwise one pair per caption, captions encoded by `text_encoder`,
    S = I, as the Karpathy reader does. `meta["text_features"]` says which."""
    folder = Path(folder)
    split = _read_rows(folder)
    path = folder / FEATURES_FILE
    stored, tensors = read_set_file(path) if path.is_file() else ({}, {})
    if not path.is_file():
        reason = f"no {FEATURES_FILE}"
    elif stored.get("format") != EXPORT_FORMAT:
        reason = f"{FEATURES_FILE} is not an export of this toolkit"
    elif any(stored.get(k) != meta.get(k) for k in TEXT_KEYS):
        reason = (f"{FEATURES_FILE} is for text encoder {stored.get('text_encoder')} (weights "
                  f"{stored.get('text_weights')}), this run has {meta.get('text_encoder')} (weights "
                  f"{meta.get('text_weights')})")
    else:
        texts = tensors.pop("text_features", None)
        if texts is None or texts.dim() != 2 or not len(texts) == len(split.image_paths) == len(split.captions):
            raise DistilledSetError(
                f"{path}: its text_features ({None if texts is None else tuple(texts.shape)}) do not match "
                f"{METADATA_FILE}'s {len(split.image_paths)} rows with one caption each; the export is damaged "
                f"(export it again)")
        _check_pairing(split, stored.pop(IMAGE_HASHES, None), folder)
        images = SplitImages(split, transform, per_caption=False)
        similarity, lrs = read_similarity(path, stored.pop("similarity", None), tensors), stored.pop("lrs", None)
        del stored["format"]  # the export's marker, not the set's
        dset = DistilledSet(torch.stack([images[i][0] for i in range(len(images))]), texts, similarity, lrs,
                            {**stored, **meta, "captions": list(split.captions), "source": str(folder),
                             "text_features": f"learned ({FEATURES_FILE})"})
        check_consistent(dset, path, text_dim=text_encoder.hidden_size)
        return dset
    return encoded_pairs(split, text_encoder, transform, meta, folder, stored.get("method"), reason)


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_pairing(split, hashes, folder):
    """Each row's image must be the one exported with that pair index: an edited metadata.jsonl (two rows on one
    file, swapped pair_index values) would otherwise pair images with other pairs' text features."""
    if hashes is None:  # an export from before the hashes were recorded
        return
    if len(hashes) != len(split.image_paths):
        raise DistilledSetError(f"{folder / METADATA_FILE} has {len(split.image_paths)} rows but {FEATURES_FILE} was "
                                f"written for {len(hashes)} images; export the set again")
    for index, (image, expected) in enumerate(zip(split.image_paths, hashes)):
        if _sha256(image) != expected:
            raise DistilledSetError(
                f"{folder / METADATA_FILE}: the row with pair_index {index} names {Path(image).relative_to(folder)}, "
                f"which is not the image exported as pair {index}; the rows were re-paired or an image replaced: "
                f"undo the edit or export the set again")


def _read_rows(folder):
    """`metadata.jsonl` as a one-split CaptionSplit, rows in `pair_index` order where every row has one."""
    path = folder / METADATA_FILE

    def bad(number, problem):
        return DistilledSetError(f"{path}: line {number} {problem}; fix the line or export the set again")

    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise bad(number, f"is not JSON ({err})") from err
        name, caption = (row.get("file_name"), row.get("caption")) if isinstance(row, dict) else (None, None)
        captions = [caption] if isinstance(caption, str) else caption
        if not isinstance(name, str) or os.path.isabs(name) or os.path.normpath(name).startswith(".."):
            raise bad(number, f"has file_name {name!r}, not a path relative to {folder} inside it")
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) for c in captions):
            raise bad(number, f"has caption {caption!r}, not a string or a list of strings")
        rows.append((number, row.get("pair_index"), name, captions))
    if not rows:
        raise DistilledSetError(f"{path} holds no rows; export the set again")
    indices = [index for _, index, _, _ in rows]
    if all(index is not None for index in indices):
        if not all(type(index) is int for index in indices) or sorted(indices) != list(range(len(rows))):
            raise DistilledSetError(f"{path}: pair_index does not number its {len(rows)} rows 0..{len(rows) - 1} "
                                    f"once each; fix it or export the set again")
        rows.sort(key=lambda r: r[1])
    image_paths, captions, caption_image = [], [], []
    for image, (number, _, name, raw) in enumerate(rows):
        image_paths.append(str(folder / name))
        for text in raw:
            captions.append(preprocess_caption(text))
            if not captions[-1]:
                raise bad(number, f"has a caption that is empty after preprocessing ({text!r})")
            caption_image.append(image)
    missing = [p for p in image_paths if not os.path.isfile(p)]
    if missing:
        raise DistilledSetError(f"{len(missing)} image(s) listed in {path} are missing, e.g. {missing[0]}; export "
                                f"the set again")
    return CaptionSplit(f"folder:{folder.name}", "train", tuple(image_paths), tuple(captions), tuple(caption_image),
                        str(path))
