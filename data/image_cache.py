"""Decoded images stored once as uint8 in a memory-mapped file (`data.image_cache: true`), so that a loader worker
reads pixels instead of decoding and shrinking a JPEG for every caption of every epoch.

One file per (dataset, split, view, stored size) under `<cache_dir>/images/`, holding each image once (not once per
caption), after the deterministic start of the transform:

- eval view (build_transform's test transform: bicubic resize to S×S): the transform's own resize, S×S. The rest of
  the transform on a stored image gives tensors **exactly equal** to the uncached path (re-resizing an S×S image to
  S×S leaves it unchanged).
- train view (random-resized crop, flip, optional RandomAugment): the image shrunk (bicubic) so that its shorter
  side is TRAIN_SIDE × S (256 px for 224), aspect kept, never enlarged; the whole train transform then runs on it.
  An **approximation**: crops follow the same distribution (area 0.5–1, ratio 3/4–4/3) but are cut from the
  shrunk image, so they are resampled twice (slightly softer, for images larger than the stored size) and, for the
  same seed, not the same crops as the uncached path. Flip and RandomAugment act on the 224-px crop as before.
  Images whose shorter side is at most the stored one are stored as decoded: their train view is exactly the
  uncached one.

The file records what it was made from (the images' paths, sizes and modification times; the view, the stored size
and resize; CACHE_VERSION); a file whose record differs, or that is damaged or truncated, is rebuilt (and the reason
printed), never read. It is a safetensors file (metadata, `index` = (offset, height, width) per image, `pixels` = all
images' RGB bytes one after the other), written beside and renamed into place when complete. Flickr30K's 29k training
images take about 8 GB in the train view at 224 px (256×341 for a 500×375 image), its 1,000 test images 150 MB in
the eval view.
"""
import json
import os
import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from tqdm import tqdm

from common.errors import ConfigError
from common.io import atomic_path, hash_strings, read_tensor_file
from data.images import ImageReadError, load_image

# Bump when what is stored changes (load_image, the train view's shrink): every existing cache is then rebuilt.
CACHE_VERSION = 1
TRAIN_SIDE = 8 / 7  # train view: stored shorter side over the image size (224 -> 256: room for the crop)


def cached_images(split, transform, cache_dir, num_workers=0, log=print):
    """StoredImages of `split` for `transform` (one of build_transform's), from the cache when it is current,
    else built first (decoding with `num_workers` loader workers)."""
    store = Store.of(transform)
    path = Path(cache_dir) / "images" / f"{split.cache_stem}_{store.name}.safetensors"
    record = {"dataset": split.dataset, "split": split.split, "images": image_list_fingerprint(split),
              "view": store.name, "stored": store.description, "version": CACHE_VERSION}
    if path.is_file():
        stale = _stale_fields(path, record, len(split.image_paths))
        if not stale:
            return StoredImages(path)
        log(f"image cache {path} is stale ({', '.join(stale)}): rebuilding")
    else:
        log(f"image cache {path}: building ({len(split.image_paths)} images)")
    _build(path, split.image_paths, store, record, num_workers)
    return StoredImages(path)


def image_list_fingerprint(split):
    """Identifies the split's image files: their paths, sizes and modification times, in order."""
    parts = []
    for image_path in split.image_paths:
        try:
            stat = os.stat(image_path)
        except FileNotFoundError as err:
            raise ImageReadError(f"image {image_path} not found; check data.image_root or download the images") from err
        parts += [image_path, stat.st_size, stat.st_mtime_ns]
    return hash_strings(*parts)


class Store:
    """What the cache keeps of an image: the transform's own S×S resize (eval view, `resize`), or the image shrunk
    so that its shorter side is `side` (train view)."""

    def __init__(self, resize=None, side=None):
        self.resize, self.side = resize, side
        if resize is not None:
            self.name, self.description = f"eval{resize.size[0]}x{resize.size[1]}", repr(resize)
        else:
            self.name, self.description = f"train{side}", f"shorter side {side}, bicubic, never enlarged"

    @classmethod
    def of(cls, transform):
        """The Store of a transform made by build_transform."""
        first = transform.transforms[0] if isinstance(transform, T.Compose) and transform.transforms else None
        if isinstance(first, T.Resize) and not isinstance(first.size, int) and len(first.size) == 2:
            return cls(resize=first)
        if isinstance(first, T.RandomResizedCrop):
            return cls(side=round(TRAIN_SIDE * min(first.size)))
        raise ConfigError(f"data.image_cache: a transform starting with {type(first).__name__} has no cached form: "
                         f"only build_transform's (an S×S resize or a random-resized crop first) are cached; set "
                         f"data.image_cache: false")

    def shape(self, size):
        """(height, width) stored for an image of `size` (width, height)."""
        if self.resize is not None:
            return tuple(self.resize.size)
        scale = min(1.0, self.side / min(size))  # never enlarged
        return round(size[1] * scale), round(size[0] * scale)

    def __call__(self, img):
        if self.resize is not None:
            return self.resize(img)
        height, width = self.shape(img.size)
        return img if (width, height) == img.size else img.resize((width, height), Image.BICUBIC)


class StoredImages:
    """Images of one cache file as PIL RGB images, read through a memory map opened lazily in each process (a
    DataLoader worker maps the file itself instead of receiving a copy of the pixels)."""

    def __init__(self, path):
        self.path = Path(path)
        with open(self.path, "rb") as f:
            header = struct.unpack("<Q", f.read(8))[0]
        with safe_open(str(self.path), framework="pt") as f:
            self.index = f.get_tensor("index").numpy()
            self.total = f.get_slice("pixels").get_shape()[0]
        self.start, self.pixels = 8 + header + self.index.nbytes, None

    def __len__(self):
        return len(self.index)

    def __getitem__(self, i):
        if self.pixels is None:
            self.pixels = np.memmap(self.path, np.uint8, "r", offset=self.start, shape=(self.total,))
        offset, height, width = self.index[i].tolist()
        return Image.fromarray(self.pixels[offset:offset + height * width * 3].reshape(height, width, 3), "RGB")

    def __getstate__(self):
        return {**self.__dict__, "pixels": None}


class _Stored(Dataset):
    """What the cache stores for each image, as a uint8 (height, width, 3) array."""

    def __init__(self, paths, store):
        self.paths, self.store = paths, store

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return np.array(self.store(load_image(self.paths[i])))  # writable: the loader makes a tensor of it


def _build(path, image_paths, store, record, num_workers):
    """Write the cache file beside `path` and rename it into place once every image is in."""
    shapes = [store.shape(_image_size(p)) for p in image_paths]
    ends = np.cumsum([h * w * 3 for h, w in shapes], dtype=np.int64)
    index = np.array([[end - h * w * 3, h, w] for end, (h, w) in zip(ends.tolist(), shapes)], dtype=np.int64)
    total = int(ends[-1]) if len(ends) else 0
    header = {"__metadata__": {k: json.dumps(v) for k, v in record.items()},
              "index": {"dtype": "I64", "shape": [len(shapes), 3], "data_offsets": [0, index.nbytes]},
              "pixels": {"dtype": "U8", "shape": [total], "data_offsets": [index.nbytes, index.nbytes + total]}}
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)  # data aligned to 8 bytes, as safetensors writes it
    start = 8 + len(blob) + index.nbytes
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)) + blob + index.tobytes())
            f.truncate(start + total)
        if total:
            pixels = np.memmap(tmp, np.uint8, "r+", offset=start, shape=(total,))
            loader = DataLoader(_Stored(image_paths, store), batch_size=None, num_workers=num_workers)
            for i, image in enumerate(tqdm(loader, desc=f"image cache {path.name}", leave=False)):
                offset, height, width = index[i].tolist()
                if tuple(image.shape) != (height, width, 3):  # decoding disagrees with the file's header
                    raise ImageReadError(f"image {image_paths[i]} decodes to {tuple(image.shape)}, not the "
                                         f"{(height, width, 3)} its header gives; re-save it or remove it")
                pixels[offset:offset + image.numel()] = image.reshape(-1).numpy()
            pixels.flush()
            del pixels


def _image_size(image_path):
    """(width, height) from the file's header, without decoding."""
    try:
        with Image.open(image_path) as img:
            return img.size
    except (OSError, UnidentifiedImageError, SyntaxError):
        load_image(image_path)  # raises the loader's own message for this file
        raise


def _stale_fields(path, record, count):
    """Why the file at `path` may not be read for `record` and `count` images (empty: it may)."""
    try:
        meta, shapes = read_tensor_file(path)
        index_shape, total = shapes["index"], shapes["pixels"][0]
        with safe_open(str(path), framework="pt") as f:
            last = f.get_tensor("index")[-1].tolist() if count else [0, 0, 0]
    except Exception:  # unreadable or truncated file: treated as stale, it is rebuilt atomically
        return ["file unreadable"]
    stale = [f"{k} changed" for k, v in record.items() if meta.get(k) != v]
    if list(index_shape) != [count, 3] or last[0] + last[1] * last[2] * 3 != total:
        stale.append("number of images changed")
    return stale
