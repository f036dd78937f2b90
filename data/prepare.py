"""Check a dataset download before any compute: annotations, split sizes, missing and damaged image files.

    python -m data.prepare flickr30k                  # paths from configs/flickr30k/buffer.yaml
    python -m data.prepare coco --image-root DIR --annotations dataset_coco.json
    python -m data.prepare coco --annotations train=a.json val=b.json test=c.json   # BLIP-style per-split files
    python -m data.prepare --config configs/tuxpaint/buffer.yaml                     # any other dataset
    ... --full-decode     # decode every image as a run does (slower) instead of the fast check

Reports the annotation format recognised (data/annotations.py reads both, with the same rules as a run), the images
and captions of each split against Karpathy's counts (Flickr30K and COCO; other datasets' counts are reported, not
judged), image files missing (the first 20 and a count) and image files that do not open. The fast check parses each
image's header and, for JPEG and PNG, looks for the end marker that a cut-off download lacks; `--full-decode` loads
each image with data/images.py `load_image` instead. Ends with one table; exit status 0 if all is well, 1 if not,
2 for bad arguments or unreadable annotations (`error: …`).
"""
import argparse
import hashlib
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from common.cli import run
from common.config import ConfigError, load_config, resolved_section
from common.errors import InputError
from data.annotations import SPLITS, AnnotationError, load_split, split_entries
from data.chance import small_split_warning
from data.images import MAX_PIXELS, ImageReadError, load_image

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# Karpathy's splits, (images, captions) per split; COCO's train includes restval, as data/annotations.py reads it.
EXPECTED = {
    "flickr30k": {"train": (29_000, 145_000), "val": (1_014, 5_070), "test": (1_000, 5_000)},
    # COCO's caption counts vary with the annotation release (5–7 per image): reported, not judged
    "coco": {"train": (113_287, None), "val": (5_000, None), "test": (5_000, None)},
}
LOADS = "annotations load as in a run"  # the check that runs the loader a run uses
LISTED = 20  # problem files listed by name; the rest are counted
# What a complete file ends with. Bytes after it are allowed if they are padding (NUL or 0xFF fill).
END_MARKERS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}
_TAIL = 4096
_PAIR = re.compile(r"(train|val|test)=(.+)")


@dataclass
class Report:
    """Rows of (check, expected, found, ok); ok is None for a value reported but not judged."""
    dataset: str
    rows: list = field(default_factory=list)
    missing: list = field(default_factory=list)      # image paths
    unreadable: list = field(default_factory=list)   # (image path, message)
    copies: list = field(default_factory=list)       # (path, split, same content's path, its split)
    annotation_error: str = ""                       # what loading the splits as a run does refused
    warnings: list = field(default_factory=list)     # lines about usable data worth knowing (a tiny test split)

    @property
    def ok(self):
        return all(row[3] is not False for row in self.rows)

    def add(self, check, expected, found, ok=None):
        self.rows.append((check, expected, found, ok))

    def refused(self, err):
        """Loading the splits as a run does refused them: a failed check, with `err` below the table."""
        self.annotation_error = str(err)
        self.add(LOADS, "loads", "refused (see below)", False)


def check_download(data_cfg, expected=None, full_decode=False, workers=16):
    """Report on the dataset the `data` section of a config describes; `expected`: split -> (images, captions)."""
    data_cfg = resolved_section("data", data_cfg)
    root, annotations = data_cfg["image_root"], data_cfg["annotations"]
    if not os.path.isdir(root):
        raise InputError(f"image root {root} is not a folder; pass --image-root DIR (or set data.image_root)")
    report = Report(data_cfg["name"])
    files = {split: _split_file(annotations, split) for split in SPLITS}
    try:  # a file that no run would read (an image in two splits, one BLIP list for all) is the whole report
        entries = {split: split_entries(path, split, os.path.abspath(root), data_cfg["allow_outside_root"],
                                        per_split=isinstance(annotations, dict)) for split, path in files.items()}
    except AnnotationError as err:
        if not all(path.is_file() for path in files.values()):
            raise  # nothing to check without the file
        report.refused(err)
        return report
    kinds = " + ".join(sorted({_format(path) for path in files.values()}))
    report.add("annotation format", "Karpathy or BLIP-style",
               kinds + (" (per-split files)" if isinstance(annotations, dict) else " (one file)"), True)
    images = {}  # image path -> its split, in order: the files to check, each once
    for split, listed in entries.items():
        paths = dict.fromkeys(os.path.normpath(os.path.join(root, e.image)) for e in listed)
        images.update(dict.fromkeys(paths, split))
        restval = sum(e.split == "restval" for e in listed)  # Karpathy files list each image once
        found = (len(paths), sum(len(e.captions) for e in listed))
        wanted = expected[split] if expected else (None, None)
        for kind, n, want in zip(("images", "captions"), found, wanted):
            note = f" ({restval:,} restval)" if kind == "images" and restval else ""
            report.add(f"{split} {kind}", "-" if want is None else f"{want:,}", f"{n:,}{note}",
                       None if want is None else n == want)
        if split != "train":
            captions = {}
            for e in listed:
                captions[e.image] = captions.get(e.image, 0) + len(e.captions)
            report.warnings += filter(None, [small_split_warning(split, list(captions.values()))])

    problems = _check_files(list(images), full_decode, workers)
    report.missing = [p for p, problem in zip(images, problems) if problem is _MISSING]
    report.unreadable = [(p, problem) for p, problem in zip(images, problems) if problem not in (None, _MISSING)]
    present = len(images) - len(report.missing)
    report.add("image files present", f"{len(images):,}", f"{present:,}", not report.missing)
    report.add("images readable" + (" (full decode)" if full_decode else " (fast check)"), f"{present:,}",
               f"{present - len(report.unreadable):,}", not report.unreadable)
    usable = [path for path, problem in zip(images, problems) if problem is None]
    report.copies = _copies_across_splits(usable, images, workers)
    report.add(f"copies across splits (same size and first {_HEAD // 1024} KiB)", "0", f"{len(report.copies):,}",
               not report.copies)

    if report.missing:  # load_split would only refuse the missing files listed above; its other checks wait
        report.add(LOADS, "loads", "not tried: files missing")
        return report
    try:
        for split in SPLITS:
            load_split(data_cfg, split)
        report.add(LOADS, "loads", "loads", True)
    except AnnotationError as err:
        report.refused(err)
    return report


def _split_file(annotations, split):
    """The annotation file holding `split`: the one Karpathy file, or the split's own file."""
    if not isinstance(annotations, dict):
        return Path(annotations)
    if split not in annotations:
        raise AnnotationError(f"data.annotations has no file for split '{split}'")
    return Path(annotations[split])


def _format(path):
    """The format data/annotations.py has just accepted in `path`: its first character tells the two apart."""
    with open(path, "rb") as f:
        while (chunk := f.read(4096)) and not chunk.strip():
            pass
    return "Karpathy JSON" if chunk.lstrip()[:1] == b"{" else "BLIP-style list"


_MISSING = object()
_HEAD = 4096  # bytes of each image compared to find copies: a copy matches, two photos practically never do


def _copies_across_splits(paths, split_of, workers):
    """[(path, its split, the same content's path in another split)]: an image copied from test into train is a
    leak the readers cannot see (they compare files, not contents)."""
    def key(path):
        with open(path, "rb") as f:
            return os.path.getsize(path), hashlib.sha256(f.read(_HEAD)).hexdigest()
    with ThreadPoolExecutor(workers) as pool:
        keys = list(pool.map(key, paths))
    first, copies = {}, []
    for path, content in zip(paths, keys):
        earlier = first.setdefault(content, path)
        if earlier is not path and split_of[earlier] != split_of[path]:
            copies.append((path, split_of[path], earlier, split_of[earlier]))
    return copies


def _check_files(paths, full_decode, workers):
    """Per path: None (fine), _MISSING, or a message saying why the image is unusable."""
    check = _decodes if full_decode else _opens
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda p: _MISSING if not os.path.isfile(p) else check(p), paths)
        return list(tqdm(results, total=len(paths), desc="checking images", unit="img", disable=None))


def _decodes(path):
    try:
        load_image(path)
    except ImageReadError as err:
        return str(err)
    return None


def _opens(path):
    """The fast check: the header parses, the size is within the limit a run applies, and a JPEG or PNG ends
    with its end marker (a cut-off download does not)."""
    try:
        with Image.open(path) as img:
            fmt, (width, height) = img.format, img.size
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError) as err:
        return f"image {path} does not open as an image ({err}); re-download it or remove it from the annotations"
    if width * height > MAX_PIXELS:
        return (f"image {path} is {width}×{height}, above the limit of {MAX_PIXELS / 1e6:g} megapixels; shrink it or "
                f"remove it from the annotations")
    marker = END_MARKERS.get(fmt)
    if marker:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - _TAIL))
            if not f.read().rstrip(b"\x00\xff").endswith(marker):
                return (f"image {path} looks truncated: it does not end with the {fmt} end marker "
                        f"{marker.hex().upper()}; re-download it (--full-decode tells whether it still decodes)")
    return None


def format_report(report, limit=LISTED):
    """The problem files (the first `limit` of each kind, and a count), then the summary table."""
    lines = []
    if report.missing:
        lines.append(f"{len(report.missing):,} image file(s) missing" + _first(report.missing, limit) + ":")
        lines += [f"  {p}" for p in report.missing[:limit]]
    if report.unreadable:
        lines.append(f"{len(report.unreadable):,} image file(s) unusable" + _first(report.unreadable, limit) + ":")
        lines += [f"  {message}" for _, message in report.unreadable[:limit]]
    if report.copies:
        lines.append(f"{len(report.copies):,} image(s) with the content of an image of another split (a leak: remove "
                     f"one of each pair)" + _first(report.copies, limit) + ":")
        lines += [f"  {a} ({sa}) = {b} ({sb})" for a, sa, b, sb in report.copies[:limit]]
    if report.annotation_error:
        lines.append(f"annotations refused: {report.annotation_error}")
    lines += report.warnings
    header = ("check", "expected", "found", "status")
    rows = [(c, e, f, {True: "ok", False: "FAIL", None: "-"}[ok]) for c, e, f, ok in report.rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    table = [" | ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    table.insert(1, "-+-".join("-" * w for w in widths))
    verdict = "all checks passed" if report.ok else "some checks FAILED: fix the download before running"
    return "\n".join(lines + ([""] if lines else []) + table + [f"{report.dataset}: {verdict}"])


def _first(items, limit):
    return f" (the first {limit} listed)" if len(items) > limit else ""


def data_section(dataset=None, config=None, image_root=None, annotations=None):
    """The `data` section to check: a dataset's configs/<dataset>/buffer.yaml, or any config, with overrides."""
    if (dataset is None) == (config is None):
        raise InputError("name a dataset (e.g. flickr30k or coco) or pass --config FILE, one of the two")
    if dataset is not None:
        config = CONFIGS / dataset / "buffer.yaml"
        if not config.is_file():
            known = ", ".join(sorted(p.parent.name for p in CONFIGS.glob("*/buffer.yaml")))
            raise InputError(f"unknown dataset '{dataset}': known ones are {known}; for another, pass --config FILE")
    data = dict(load_config(config).get("data") or {})
    data.update({k: v for k, v in (("image_root", image_root), ("annotations", annotations)) if v is not None})
    for key, flag in (("name", "--config"), ("image_root", "--image-root"), ("annotations", "--annotations")):
        if data.get(key) is None:
            raise ConfigError(f"{config}: data.{key} is not set; set it (or pass {flag})")
    return data


def _annotations_arg(values):
    """One file (Karpathy, or one list for every split), or split=FILE pairs for per-split files."""
    if values is None:
        return None
    pairs = [_PAIR.fullmatch(v) for v in values]
    if all(pairs):
        return {m[1]: m[2] for m in pairs}
    if len(values) == 1:
        return values[0]
    raise InputError(f"--annotations takes one file, or split=FILE for each split (e.g. train=a.json val=b.json "
                     f"test=c.json), not {' '.join(values)}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", nargs="?", help="flickr30k or coco: paths from configs/<dataset>/buffer.yaml")
    parser.add_argument("--config", help="a config whose data section names the dataset (instead of a dataset name)")
    parser.add_argument("--image-root", help="folder the annotations' image paths are relative to")
    parser.add_argument("--annotations", nargs="+", metavar="FILE", help="a Karpathy file, or train=FILE val=FILE "
                        "test=FILE (BLIP-style per-split files)")
    parser.add_argument("--full-decode", action="store_true", help="decode every image (as a run does) instead of "
                        "the fast header and end-marker check")
    parser.add_argument("--workers", type=int, default=16, help="threads checking files (default 16)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        raise InputError(f"--workers must be at least 1, not {args.workers}")
    data = data_section(args.dataset, args.config, args.image_root, _annotations_arg(args.annotations))
    files = data["annotations"]
    files = ", ".join(f"{k}={v}" for k, v in files.items()) if isinstance(files, dict) else files
    print(f"{data['name']}: annotations {files}; images under {data['image_root']}", flush=True)
    report = check_download(data, EXPECTED.get(data["name"]), args.full_decode, args.workers)
    print(format_report(report))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(run(main))
