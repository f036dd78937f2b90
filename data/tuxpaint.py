"""Build the project's built-in real demo dataset from the Tux Paint stamps.

The Debian package ``tuxpaint-stamps-default`` (GPL-2) ships ~785 clip-art
images, each with a short English description. We turn them into a small
image-caption dataset in the Karpathy JSON layout used by the other loaders.

    python -m data.tuxpaint --out datasets/tuxpaint [--cache .cache/tuxpaint]
"""

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from common.cli import run
from common.errors import InputError, MissingError, OutputError
from common.io import atomic_path, atomic_write_text, require_folder
from data.images import composite_on_white

log = logging.getLogger(__name__)

PACKAGE = "tuxpaint-stamps-default"
STAMPS_SUBDIR = Path("usr/share/tuxpaint/stamps")
JSON_NAME = "dataset_tuxpaint.json"
BUILD_MARKER = ".built-by-data.tuxpaint"  # what the tool may delete and rewrite on a rerun
MIN_SIDE = 16
# British/Australian spellings sometimes differ ("colour"): extra captions.
VARIANT_PREFIXES = ("en_GB.utf8=", "en_AU.utf8=", "en_GB=", "en_AU=")


# ---------------------------------------------------------------- download

def _cannot_obtain(reason, cache_dir):
    return MissingError(
        f"cannot obtain the Debian package {PACKAGE} ({reason}): on Debian/Ubuntu run "
        f"`apt-get download {PACKAGE}` and put the .deb in {cache_dir}, or install apt")


def _find_deb(cache_dir):
    # Prefer the real package name, but accept any .deb the user dropped here.
    debs = sorted(cache_dir.glob(f"{PACKAGE}*.deb")) or sorted(cache_dir.glob("*.deb"))
    return debs[-1] if debs else None


def _download_deb(cache_dir):
    if shutil.which("apt-get") is None:
        raise _cannot_obtain("apt-get not found", cache_dir)
    # Download into a scratch folder so a .deb in cache_dir is always complete.
    scratch = cache_dir / "download.tmp"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    print(f"downloading {PACKAGE} (~160 MB) into {cache_dir} ...", flush=True)
    try:
        proc = subprocess.run(["apt-get", "download", PACKAGE], cwd=scratch,
                              stderr=subprocess.PIPE, text=True)
    except OSError as e:
        raise _cannot_obtain(f"apt-get failed to start: {e}", cache_dir)
    debs = sorted(scratch.glob("*.deb"))
    if proc.returncode != 0 or not debs:
        err = (proc.stderr or "").strip().splitlines()
        detail = err[-1] if err else f"exit code {proc.returncode}"
        shutil.rmtree(scratch, ignore_errors=True)
        raise _cannot_obtain(f"apt-get download failed: {detail}", cache_dir)
    deb = cache_dir / debs[-1].name
    os.replace(debs[-1], deb)
    shutil.rmtree(scratch, ignore_errors=True)
    return deb


def fetch_stamps(cache_dir):
    """Download and unpack the stamps package (once); return the stamps root."""
    cache_dir = Path(cache_dir)
    extracted = cache_dir / "extracted"
    stamps_root = extracted / STAMPS_SUBDIR
    if stamps_root.is_dir():
        return stamps_root
    cache_dir.mkdir(parents=True, exist_ok=True)
    deb = _find_deb(cache_dir) or _download_deb(cache_dir)
    if shutil.which("dpkg") is None:
        raise _cannot_obtain(
            f"dpkg not found, cannot unpack {deb.name}; install dpkg or unpack it so that "
            f"{stamps_root} exists", cache_dir)
    # Unpack next to the final place and rename, so a half-unpacked tree is never reused.
    partial = cache_dir / "extracted.tmp"
    shutil.rmtree(partial, ignore_errors=True)
    proc = subprocess.run(["dpkg", "-x", str(deb), str(partial)],
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not (partial / STAMPS_SUBDIR).is_dir():
        shutil.rmtree(partial, ignore_errors=True)
        raise _cannot_obtain(
            f"`dpkg -x {deb}` failed: {proc.stderr.strip() or 'no stamps folder inside'}; "
            "delete that .deb to download it again", cache_dir)
    shutil.rmtree(extracted, ignore_errors=True)
    os.replace(partial, extracted)
    return stamps_root


# ---------------------------------------------------------------- reading

def read_stamp_captions(txt_path):
    """English caption (first line) plus en_GB/en_AU variants that differ from it."""
    lines = Path(txt_path).read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or not lines[0].strip():
        return []
    captions = [lines[0].strip()]
    for line in lines[1:]:
        for prefix in VARIANT_PREFIXES:
            if line.startswith(prefix):
                text = line[len(prefix):].strip()
                if text and text not in captions:
                    captions.append(text)
                break
    return captions


def find_stamps(stamps_root):
    """All (png_path, captions) pairs under stamps_root, sorted by relative path."""
    stamps_root = Path(stamps_root)
    samples = []
    pngs = sorted(stamps_root.rglob("*.png"), key=lambda p: p.relative_to(stamps_root).as_posix())
    for png in pngs:
        txt = png.with_suffix(".txt")
        if not txt.is_file():  # e.g. *_mirror.png helpers carry no caption
            continue
        captions = read_stamp_captions(txt)
        if not captions:
            log.warning("skipping %s: empty caption", png.relative_to(stamps_root))
            continue
        samples.append((png, captions))
    return samples


# ---------------------------------------------------------------- images

def downscale(img, max_side):
    """Shrink so the longer side is at most max_side; never upscale."""
    w, h = img.size
    if max(w, h) <= max_side:
        return img
    scale = max_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return img.resize(size, Image.LANCZOS)


def save_image(img, path):
    with atomic_path(path) as tmp:  # a full disk names the file
        img.save(tmp, format="PNG")


# ---------------------------------------------------------------- dataset

def split_samples(samples, seed=0, n_test=100, n_val=100):
    """Split label for each sample (int n, or a list of sortable keys), in input order.

    Keys are sorted before shuffling so the result only depends on the set of keys and seed.
    """
    keys = list(range(samples)) if isinstance(samples, int) else list(samples)
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    random.Random(seed).shuffle(order)
    splits = [None] * len(keys)
    for rank, i in enumerate(order):
        splits[i] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return splits


def _write_readme(out_dir, counts, max_side, seed):
    atomic_write_text(out_dir / "README.txt",
        "Tux Paint stamps image-caption dataset (project demo data)\n\n"
        f"Source: Debian package {PACKAGE} (Tux Paint stamps, GPL-2).\n"
        "Images: the stamp PNGs, composited onto a white background, converted to RGB and\n"
        f"downscaled so the longer side is at most {max_side} px (never upscaled).\n"
        "Captions: the English description of each stamp, plus en_GB/en_AU variants when\n"
        "they differ.\n"
        f"Split (seed {seed}): train {counts['train']}, val {counts['val']}, "
        f"test {counts['test']}.\n"
        f"Index: {JSON_NAME} (Karpathy-style).\n")


def check_out(out_dir):
    """Refuse an --out that is a file, or a folder holding files that this tool did not write (it would delete them)."""
    out_dir = Path(out_dir)
    require_folder(out_dir, f"--out {out_dir}")
    if (out_dir.is_dir() and any(out_dir.iterdir())
            and not ((out_dir / JSON_NAME).exists() or (out_dir / BUILD_MARKER).exists())):
        raise OutputError(f"--out {out_dir} holds files that this tool did not write: choose a new or empty folder")


def build_dataset(stamps_root, out_dir, max_side=256, seed=0, n_test=100, n_val=100):
    """Write images, README and (last) the JSON index; return the dataset dict."""
    stamps_root, out_dir = Path(stamps_root), Path(out_dir)
    json_path, marker = out_dir / JSON_NAME, out_dir / BUILD_MARKER
    samples = find_stamps(stamps_root)
    if not samples:
        raise InputError(f"no Tux Paint stamps under {stamps_root}: the download cache is empty or damaged; delete it "
                         "and rerun to download the package again")
    check_out(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.touch()  # this folder is ours from now on: a rerun may replace what is in it
    # A rebuild must not leave an old index pointing at images being rewritten.
    if json_path.exists():
        json_path.unlink()
    shutil.rmtree(out_dir / "images", ignore_errors=True)

    rel_paths = [png.relative_to(stamps_root).as_posix() for png, _ in samples]
    splits = split_samples(rel_paths, seed, n_test, n_val)
    entries = []
    for imgid, ((png, captions), rel, split) in enumerate(
            zip(tqdm(samples, desc="tuxpaint images", unit="img"), rel_paths, splits)):
        with Image.open(png) as img:
            img = downscale(composite_on_white(img), max_side)
        filepath = os.path.dirname(rel)
        save_image(img, out_dir / "images" / rel)
        entries.append({"imgid": imgid, "filepath": filepath, "filename": png.name,
                        "split": split, "sentences": [{"raw": c} for c in captions]})

    counts = {s: splits.count(s) for s in ("train", "val", "test")}
    _write_readme(out_dir, counts, max_side, seed)
    dataset = {"dataset": "tuxpaint", "images": entries}
    atomic_write_text(json_path, json.dumps(dataset, ensure_ascii=False, indent=1))  # last: it means "complete"
    return dataset


def summary_line(dataset, json_path):
    images = dataset["images"]
    n_caps = sum(len(e["sentences"]) for e in images)
    counts = {s: sum(e["split"] == s for e in images) for s in ("train", "val", "test")}
    return (f"tuxpaint: {len(images)} images, {n_caps} captions "
            f"(train {counts['train']} / val {counts['val']} / test {counts['test']}) "
            f"-> {json_path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Build the Tux Paint stamps caption dataset.")
    parser.add_argument("--out", default="datasets/tuxpaint", help="output folder")
    parser.add_argument("--cache", default=".cache/tuxpaint",
                        help="where the .deb is downloaded and unpacked")
    parser.add_argument("--max-side", type=int, default=256, help="longest image side in px")
    parser.add_argument("--seed", type=int, default=0, help="split seed")
    parser.add_argument("--force", action="store_true", help="rebuild even if already built")
    args = parser.parse_args(argv)
    if args.max_side < MIN_SIDE:
        parser.error(f"--max-side must be at least {MIN_SIDE} px, not {args.max_side}")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")

    json_path = Path(args.out) / JSON_NAME
    if json_path.exists() and not args.force:
        print(f"dataset ready: {json_path} (use --force to rebuild)")
        return 0
    check_out(args.out)  # before the download
    stamps_root = fetch_stamps(args.cache)
    dataset = build_dataset(stamps_root, args.out, args.max_side, args.seed)
    print(summary_line(dataset, json_path))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
