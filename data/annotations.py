"""Image–caption annotations: both formats in common use, read into one `CaptionSplit`.

- Karpathy's single file `dataset_{flickr30k,coco}.json`: {"images": [{"filename", "filepath"?, "split",
  "sentences": [{"raw"}]}]}; split "restval" counts as train (COCO).
- BLIP-style per-split lists: train = one {"image", "caption": str} per caption, val/test = one
  {"image", "caption": [str, ...]} per image. Either shape is accepted in any split file.

The format is recognised from the file's content, so a config only names the file(s).
"""
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from utils.io import hash_strings

# Bump when preprocess_caption changes: cached text features depend on it.
PREPROCESS_VERSION = 1
_PUNCTUATION = re.compile(r'[.!"()*#:;~]')
SPLITS = ("train", "val", "test")


class AnnotationError(ValueError):
    pass


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
    def fingerprint(self):
        """Identifies the content (image names and captions), e.g. as part of a cache key."""
        names = [os.path.basename(p) for p in self.image_paths]
        return hash_strings(self.dataset, self.split, *names, *self.captions, *self.caption_image)


def read_split(annotations, split, image_root, dataset, max_words=30):
    """Read one split. `annotations` is a Karpathy file, or a mapping split -> BLIP-style file."""
    if split not in SPLITS:
        raise AnnotationError(f"unknown split '{split}'; expected one of {', '.join(SPLITS)}")
    if isinstance(annotations, dict):
        if split not in annotations:
            raise AnnotationError(f"data.annotations has no file for split '{split}'")
        path = Path(annotations[split])
    else:
        path = Path(annotations)
    content = _read_json(path)
    if isinstance(content, dict) and "images" in content:
        groups = _karpathy_groups(content, split, path)
    elif isinstance(content, list):
        groups = _blip_groups(content, path)
    else:
        raise AnnotationError(
            f"{path}: not a known annotation format (expected a Karpathy file with an 'images' list, "
            f"or a BLIP-style list of {{'image', 'caption'}} entries)")
    if not groups:
        raise AnnotationError(f"{path}: no images in split '{split}'")
    return _build_split(groups, split, Path(image_root), dataset, str(path), max_words)


def _read_json(path):
    if not path.is_file():
        raise AnnotationError(f"annotation file {path} not found; check data.annotations in the config")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{path} is not valid JSON ({err}); re-download or regenerate it") from err


def _karpathy_groups(content, split, path):
    wanted = {"train", "restval"} if split == "train" else {split}
    groups = {}
    for i, entry in enumerate(content["images"]):
        _require(entry, ("filename", "split", "sentences"), path, i, "Karpathy")
        if entry["split"] not in wanted:
            continue
        relpath = os.path.join(entry.get("filepath", ""), entry["filename"])
        sentences = entry["sentences"]
        if not isinstance(sentences, list) or any(not isinstance(s, dict) or "raw" not in s for s in sentences):
            raise AnnotationError(f"{path}: image entry {i} ({relpath}): every sentence needs a 'raw' caption")
        groups.setdefault(relpath, []).extend(s["raw"] for s in sentences)
    return groups


def _blip_groups(content, path):
    groups = {}
    for i, entry in enumerate(content):
        _require(entry, ("image", "caption"), path, i, "BLIP-style")
        captions = entry["caption"]
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise AnnotationError(f"{path}: entry {i} ({entry['image']}): 'caption' must be a string or a list of strings")
        groups.setdefault(entry["image"], []).extend(captions)
    return groups


def _require(entry, keys, path, index, fmt):
    if not isinstance(entry, dict):
        raise AnnotationError(f"{path}: entry {index} is not an object ({fmt} format)")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise AnnotationError(
            f"{path}: entry {index} lacks key(s) {', '.join(missing)} "
            f"({fmt} entries need {', '.join(keys)})")


def _build_split(groups, split, image_root, dataset, source, max_words):
    image_paths, captions, caption_image = [], [], []
    for index, (relpath, raw_captions) in enumerate(groups.items()):
        if not raw_captions:
            raise AnnotationError(f"{source}: image {relpath} has no captions; add one or remove the image")
        for k, raw in enumerate(raw_captions):
            caption = preprocess_caption(raw, max_words)
            if not caption:
                raise AnnotationError(
                    f"{source}: caption {k} of image {relpath} is empty after preprocessing ({raw!r}); fix or remove it")
            captions.append(caption)
            caption_image.append(index)
        image_paths.append(str(image_root / relpath))
    missing = [p for p in image_paths if not os.path.isfile(p)]
    if missing:
        raise AnnotationError(
            f"{len(missing)} image(s) of split '{split}' listed in {source} are missing under {image_root}, "
            f"e.g. {missing[0]}; check data.image_root or download the images")
    return CaptionSplit(dataset, split, tuple(image_paths), tuple(captions), tuple(caption_image), source)


def load_split(data_cfg, split):
    """`read_split` from the `data` section of a config."""
    return read_split(data_cfg["annotations"], split, data_cfg["image_root"], data_cfg["name"],
                      data_cfg.get("max_words", 30))
