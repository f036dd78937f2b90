"""Image–caption annotations: both formats in common use, read into one `CaptionSplit`.

- Karpathy's single file `dataset_{flickr30k,coco}.json`: {"images": [{"filename", "filepath"?, "split",
  "sentences": [{"raw"}]}]}; split "restval" counts as train (COCO).
- BLIP-style per-split lists: train = one {"image", "caption": str} per caption, val/test = one
  {"image", "caption": [str, ...]} per image. Either shape is accepted in any split file.

The format is recognised from the file's content, so a config only names the file(s). Bad data stops with an
`AnnotationError` naming the file and entry: a value of the wrong type, an unknown split name, an image path
that leaves the image root, an image listed in two splits (or twice in a Karpathy file) under any path that reaches
the same file (a symlink, a linked folder, a hard link), one BLIP-style list given for all splits without split
fields.
"""
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from itertools import combinations
from pathlib import Path
from typing import NamedTuple

from common.config import resolved_section
from common.errors import InputError
from common.io import hash_strings

# Bump when preprocess_caption changes: cached text features depend on it.
PREPROCESS_VERSION = 1
_PUNCTUATION = re.compile(r'[.!"()*#:;~]')
SPLITS = ("train", "val", "test")
KARPATHY_SPLITS = ("train", "restval", "val", "test")
# The dataset name becomes part of cache file names, so it must not hold a path separator or start with a dot.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_JSON_TYPES = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string",
               list: "list", dict: "object"}


class AnnotationError(InputError):
    pass


class _Entry(NamedTuple):
    index: int         # position in its file, for messages
    image: str         # path as written in the file, relative to the image root
    split: str         # as written in the file ("restval" stays "restval")
    captions: list     # raw captions
    source: Path       # its annotation file
    location: str = ""  # normalised absolute image path, as written
    identity: tuple = ()  # the file itself (device and inode), however a path or link reaches it


def preprocess_caption(text, max_words=30):
    """Lowercase, punctuation . ! " ( ) * # : ; ~ to spaces, collapse whitespace, keep `max_words` words."""
    words = _PUNCTUATION.sub(" ", text.lower()).split()
    return " ".join(words[:max_words])


@dataclass(frozen=True)
class CaptionSplit:
    """One split of a dataset: images, their captions (flat, grouped by image) and the maps between them."""
    dataset: str
    split: str
    image_paths: tuple        # absolute paths, one per image
    captions: tuple           # preprocessed captions, grouped by image
    caption_image: tuple      # caption index -> image index
    source: str               # annotation file, for error messages

    @cached_property
    def image_captions(self):
        """image index -> list of its caption indices."""
        out = [[] for _ in self.image_paths]
        for c, i in enumerate(self.caption_image):
            out[i].append(c)
        return out

    @cached_property
    def cache_stem(self):
        """The start of its cache files' names: dataset, split and the annotation file, so that two datasets of one
        name (the Tux Paint split seeds, a copy of one's own data) keep a cache each instead of rebuilding each
        other's."""
        return f"{self.dataset}_{self.split}_{hash_strings(os.path.abspath(self.source))[:8]}"

    @cached_property
    def fingerprint(self):
        """Identifies the content (image names and captions), e.g. as part of a cache key."""
        names = [os.path.basename(p) for p in self.image_paths]
        return hash_strings(self.dataset, self.split, *names, *self.captions, *self.caption_image)


def read_split(annotations, split, image_root, dataset, max_words=30, allow_outside_root=False):
    """Read one split. `annotations` is a Karpathy file, or a mapping split -> BLIP-style file.

    Every image path must stay inside `image_root` unless `allow_outside_root`; an image may belong to one split
    only (with a mapping, the other splits' files are read to check this)."""
    if split not in SPLITS:
        raise AnnotationError(f"unknown split '{split}'; expected one of {', '.join(SPLITS)}")
    root = os.path.abspath(image_root)
    if isinstance(annotations, dict):
        unknown = [repr(s) for s in annotations if s not in SPLITS]
        if unknown:
            raise AnnotationError(f"data.annotations names unknown split(s) {', '.join(unknown)}; "
                                  f"the known ones are {', '.join(SPLITS)}")
        if split not in annotations:
            raise AnnotationError(f"data.annotations has no file for split '{split}'")
        path = Path(annotations[split])
        entries = split_entries(path, split, root, allow_outside_root, per_split=True)
        for other, other_file in annotations.items():
            if other != split:
                _refuse_shared_images(entries, split_entries(Path(other_file), other, root, allow_outside_root,
                                                             per_split=True))
    else:
        path = Path(annotations)
        entries = split_entries(path, split, root, allow_outside_root, per_split=False)
    if not entries:
        raise AnnotationError(f"{path}: no images in split '{split}'")
    return _build_split(entries, split, Path(image_root), dataset, str(path), max_words)


def _read_json(path):
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} not found; check data.annotations in the config")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path} is not valid JSON ({err}); re-download or regenerate it") from err


def split_entries(path, split, root, allow_outside_root, per_split):
    """The checked entries of `split` in the file at `path`, whichever its format; `per_split`: the file is one of
    a mapping split -> file (a BLIP-style list then holds that split), not the one file of every split."""
    content = _read_json(path)
    if isinstance(content, dict) and "images" in content:
        entries = _karpathy_entries(content, path)
    elif isinstance(content, list):
        entries = _blip_entries(content, split, path, per_split)
    else:
        raise AnnotationError(
            f"{path}: not a known annotation format (expected a Karpathy file with an 'images' list, "
            f"or a BLIP-style list of {{'image', 'caption'}} entries)")
    entries = [_locate(e, root, allow_outside_root) for e in entries]
    if isinstance(content, dict):  # Karpathy lists each image once, with all its captions
        _refuse_repeated_images(entries)
    elif not per_split:  # one list with split fields: BLIP repeats an image per caption, but within one split
        by_split = {}
        for entry in entries:
            by_split.setdefault(_train_or_same(entry.split), []).append(entry)
        for a, b in combinations(by_split, 2):
            _refuse_shared_images(by_split[a], by_split[b])
    return [e for e in entries if _train_or_same(e.split) == split]


def _train_or_same(split):
    return "train" if split == "restval" else split


def _karpathy_entries(content, path):
    if not isinstance(content["images"], list):
        raise AnnotationError(f"{path}: 'images' must be a list of image entries, found {_found(content['images'])}")
    entries, unknown_splits = [], {}
    for i, item in enumerate(content["images"]):
        _require(item, ("filename", "split", "sentences"), path, i, "Karpathy")
        folder = _string(item.get("filepath", ""), path, i, "filepath")
        image = os.path.join(folder, _string(item["filename"], path, i, "filename"))
        sentences = item["sentences"]
        if not isinstance(sentences, list) or any(not isinstance(s, dict) or "raw" not in s for s in sentences):
            raise AnnotationError(f"{path}: image entry {i} ({image}): every sentence needs a 'raw' caption")
        captions = [_string(s["raw"], path, i, f"sentence {k} 'raw'") for k, s in enumerate(sentences)]
        if item["split"] not in KARPATHY_SPLITS:
            unknown_splits.setdefault(json.dumps(item["split"]), i)
        entries.append(_Entry(i, image, item["split"], captions, path))
    if unknown_splits:  # otherwise those images would silently belong to no split
        raise AnnotationError(
            f"{path}: unknown split name(s) {', '.join(unknown_splits)} (first in entry "
            f"{min(unknown_splits.values())}); the known ones are {', '.join(KARPATHY_SPLITS)}: rename them")
    return entries


def _blip_entries(content, split, path, per_split):
    if not per_split and not all(isinstance(item, dict) and item.get("split") in KARPATHY_SPLITS for item in content):
        raise AnnotationError(
            f"{path} is one BLIP-style list given for every split, and not every entry has a 'split' field (one of "
            f"{', '.join(KARPATHY_SPLITS)}): every image would be in train, val and test; give one file per split "
            f"(data.annotations: {{train: FILE, val: FILE, test: FILE}}), or a split field in every entry")
    entries = []
    for i, item in enumerate(content):
        _require(item, ("image", "caption"), path, i, "BLIP-style")
        image = _string(item["image"], path, i, "image")
        captions = item["caption"]
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise AnnotationError(f"{path}: entry {i} ({image}): 'caption' must be a string or a list of strings, "
                                  f"found {_found(item['caption'])}")
        entries.append(_Entry(i, image, split if per_split else item["split"], captions, path))
    return entries


def _require(entry, keys, path, index, fmt):
    if not isinstance(entry, dict):
        raise AnnotationError(f"{path}: entry {index} is not an object ({fmt} format)")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise AnnotationError(
            f"{path}: entry {index} lacks key(s) {', '.join(missing)} "
            f"({fmt} entries need {', '.join(keys)})")


def _string(value, path, index, key):
    if not isinstance(value, str):
        raise AnnotationError(f"{path}: entry {index}: {key} must be a string, found {_found(value)}; fix the entry")
    return value


def _found(value):
    text = json.dumps(value, default=str)
    text = text if len(text) <= 60 else text[:57] + "..."
    return "null" if value is None else f"{_JSON_TYPES.get(type(value), type(value).__name__)} {text}"


def _locate(entry, root, allow_outside_root):
    """`entry` with its normalised absolute path, which must lie inside `root` unless allowed otherwise."""
    # Lexical, not resolving links: a data folder the user linked in from another disk stays inside the root.
    location = os.path.normpath(os.path.join(root, entry.image))
    if not allow_outside_root and os.path.commonpath([root, location]) != root:
        raise AnnotationError(
            f"{entry.source}: entry {entry.index} ({entry.image}) points outside the image root {root}; fix the "
            f"path, or set data.allow_outside_root: true if the images really live elsewhere")
    return entry._replace(location=location, identity=_file_identity(location))


def _file_identity(location):
    """What makes two paths one image: the same file (device, inode), whether reached through a symlink, a linked
    folder or a hard link; the resolved path when the file cannot be asked (a missing file is refused later)."""
    try:
        found = os.stat(location)
        return ("file", found.st_dev, found.st_ino)
    except OSError:
        return ("path", os.path.realpath(location))


def _refuse_repeated_images(entries):
    first = {}
    for entry in entries:
        earlier = first.setdefault(entry.identity, entry)
        if earlier is not entry:
            same_split = _train_or_same(earlier.split) == _train_or_same(entry.split)
            advice = ("list it once, with all its captions under 'sentences'" if same_split
                      else "an image must belong to one split only: remove it from one of them")
            same = "" if earlier.location == entry.location else f" (as {earlier.image}: the same file)"
            raise AnnotationError(
                f"{entry.source}: image {entry.image} is listed in entry {earlier.index}{same} (split "
                f"'{earlier.split}') and in entry {entry.index} (split '{entry.split}'); {advice}")


def _refuse_shared_images(entries, other_entries):
    other = {e.identity: e for e in reversed(other_entries)}  # an image's first entry, to name in the message
    for entry in entries:
        if entry.identity in other:
            clash = other[entry.identity]
            same = "" if clash.location == entry.location else f" (as {clash.image}: the same file)"
            raise AnnotationError(
                f"image {entry.image} is in both split '{entry.split}' ({entry.source}, entry {entry.index}) and "
                f"split '{clash.split}' ({clash.source}, entry {clash.index}){same}; an image must belong to one "
                f"split only: remove it from one of them")


def _build_split(entries, split, image_root, dataset, source, max_words):
    groups = {}  # location -> (image as first written, raw captions); repeats are BLIP's one-caption-per-entry
    for entry in entries:
        groups.setdefault(entry.location, (entry.image, []))[1].extend(entry.captions)
    image_paths, captions, caption_image = [], [], []
    for index, (relpath, raw_captions) in enumerate(groups.values()):
        if not raw_captions:
            raise AnnotationError(f"{source}: image {relpath} has no captions; add one or remove the image")
        for k, raw in enumerate(raw_captions):
            caption = preprocess_caption(raw, max_words)
            if not caption:
                raise AnnotationError(
                    f"{source}: caption {k} of image {relpath} is empty after preprocessing ({raw!r}); fix or remove it")
            captions.append(caption)
            caption_image.append(index)
        image_paths.append(os.path.normpath(os.path.join(image_root, relpath)))  # the path checked against the root
    missing = [p for p in image_paths if not os.path.isfile(p)]
    if missing:
        raise AnnotationError(
            f"{len(missing)} image(s) of split '{split}' listed in {source} are missing under {image_root}, "
            f"e.g. {missing[0]}; check data.image_root or download the images")
    return CaptionSplit(dataset, split, tuple(image_paths), tuple(captions), tuple(caption_image), source)


def annotation_files(data_cfg):
    """The annotation file(s) of a config's `data` section: inputs that no output of a run may replace."""
    files = data_cfg["annotations"]
    files = files.values() if isinstance(files, dict) else [files]
    return [f for f in files if isinstance(f, (str, Path))]


def load_split(data_cfg, split):
    """`read_split` from the `data` section of a config."""
    name = data_cfg.get("name")
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
        raise AnnotationError(
            f"data.name must be a plain name (a letter or digit, then letters, digits, '_', '.' or '-'), found "
            f"{_found(name)}; it becomes part of cache file names, so pick one such as 'coco'")
    data_cfg = resolved_section("data", data_cfg)
    return read_split(data_cfg["annotations"], split, data_cfg["image_root"], name, data_cfg["max_words"],
                      data_cfg["allow_outside_root"])
