"""A distilled set as a folder any trainer reads, and back: `export_distilled` writes PNGs + a Karpathy-style
`dataset.json`, `artefacts.imagefolder` a Hugging Face imagefolder; `read_folder` reads either back.

    python -m artefacts.export runs/tuxpaint/lors_50/distilled.safetensors runs/tuxpaint/lors_50_png
    python -m artefacts.export SET OUT --format imagefolder [--evaluation RESULTS.json] [--license ID]
"""
import json
from functools import partial
from pathlib import Path

from artefacts.distilled import IDENTITY_KEYS, DistilledSetError, load_distilled
from artefacts.folder import (EXPORT_FILES, EXPORT_FORMAT, METADATA_FILE, check_exportable, export_build,
                              remove_stale_builds, write_pngs)
from artefacts.imagefolder import export_imagefolder, read_evaluation, read_imagefolder
from artefacts.pairs import encoded_pairs
from common.cli import run
from common.io import atomic_write_json, check_output, folder_lock
from data.annotations import read_split


def export_distilled(dset, folder, overwrite=False):
    """`folder/images/0000.png …` + `folder/dataset.json` (Karpathy format, every pair in split train)
    with each pair's caption (`meta["captions"]`: the nearest real ones, or generated ones), written safely
    (`export_build`)."""
    check_exportable(dset, folder)
    with export_build(folder, "karpathy", overwrite) as build:
        names = write_pngs(dset, build / "images")
        write_captions(build, names, [[c] for c in dset.meta["captions"]],
                       {k: dset.meta.get(k) for k in ("method", "dataset", *IDENTITY_KEYS)})


def write_captions(folder, names, captions, source):
    """`folder/dataset.json` in Karpathy format: each image of `names` in split train with its list of
    `captions`, and where the set came from."""
    entries = [{"filename": name, "split": "train", "sentences": [{"raw": c} for c in cs]}
               for name, cs in zip(names, captions)]
    atomic_write_json(Path(folder) / "dataset.json", {"format": EXPORT_FORMAT, "images": entries, "source": source})


def read_folder(folder, text_encoder, transform, meta):
    """The set an export folder holds, its images through `transform`, for a run with artefact identity `meta`: a
    Hugging Face imagefolder (`metadata.jsonl`: `artefacts.imagefolder.read_imagefolder`), or `dataset.json` in Karpathy
    format (as `export_distilled` and EDGE write it) with `images/`: one pair per caption, captions encoded with the
    frozen `text_encoder`, S = I. With the source's learned text features, S and lrs gone, it trains like a coreset."""
    folder = Path(folder)
    annotations = folder / "dataset.json"
    if (folder / METADATA_FILE).is_file():
        if annotations.is_file():
            raise DistilledSetError(f"{folder} holds both {METADATA_FILE} (a Hugging Face imagefolder) and "
                                    f"dataset.json (Karpathy format); remove the one that does not describe images/")
        return read_imagefolder(folder, text_encoder, transform, meta)
    if not annotations.is_file():
        raise DistilledSetError(f"{folder} holds no dataset.json nor {METADATA_FILE}: expected images/ and a "
                                f"Karpathy-style dataset.json, or a Hugging Face imagefolder export")
    split = read_split(annotations, "train", folder / "images", f"folder:{folder.name}")
    source = json.loads(annotations.read_text()).get("source") or {}
    return encoded_pairs(split, text_encoder, transform, meta, folder, source.get("method"), "dataset.json")


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(prog="python -m artefacts.export",
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
    parser.add_argument("--license", help="the source data's licence for the card, a Hugging Face id (e.g. "
                                          "cc-by-4.0; default: known for tuxpaint, flickr30k, coco, else unknown)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the export's files in a non-empty folder that is not a previous export")
    args = parser.parse_args(argv)
    if (args.evaluation or args.license) and args.format != "imagefolder":
        parser.error("--evaluation and --license go into the dataset card, which only --format imagefolder writes")
    check_output(args.out, [args.file, *[args.evaluation] * bool(args.evaluation)], "OUT")
    dset = load_distilled(args.file)
    if args.format == "imagefolder":  # the evaluation is read before the folder is touched
        evaluation = read_evaluation(args.evaluation, args.file) if args.evaluation else None
        export = partial(export_imagefolder, dset, args.out, args.overwrite, args.file.name, evaluation, args.license)
    else:
        export = partial(export_distilled, dset, args.out, args.overwrite)
    with folder_lock(args.out):
        remove_stale_builds(args.out)  # a killed export's half-built folder beside it
        export()
    print(f"{len(dset)} pairs exported to {args.out} ({args.format})")


if __name__ == "__main__":
    run(main)
