"""The decoded-image cache (data.image_cache): exact eval view, reuse, rebuilds, the train view."""
import dataclasses
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

import data.image_cache as image_cache
from data.annotations import read_split
from data.images import SplitImages, build_transform
from training.fit import split_images

TUXPAINT = Path(__file__).resolve().parents[1] / "datasets" / "tuxpaint"
STATS = ((0.48, 0.46, 0.41), (0.27, 0.26, 0.28))


def tux_split(tux_slice, name):
    return read_split(tux_slice, name, TUXPAINT / "images", "tuxslice")


def items(dataset):
    return [dataset[i] for i in range(len(dataset))]


def cache_file(folder):
    files = list((Path(folder) / "images").glob("*.safetensors"))
    assert len(files) == 1, files
    return files[0]


@pytest.mark.parametrize("size", [32, 96])
def test_eval_view_is_exactly_the_uncached_one(tux_slice, tmp_path, size):
    split = tux_split(tux_slice, "test")
    transform = build_transform(size, *STATS)
    uncached = items(SplitImages(split, transform, per_caption=False))
    cached = items(split_images(split, transform, False, image_cache=tmp_path))
    assert len(cached) == len(split.image_paths) == 8
    for (x, i), (y, j) in zip(uncached, cached):
        assert i == j and x.shape == (3, size, size) and torch.equal(x, y)


def test_cache_is_reused_then_rebuilt_when_images_resize_version_or_size_change(tux_slice, tmp_path, monkeypatch):
    split, transform, logs = tux_split(tux_slice, "test"), build_transform(32, *STATS), []
    image_cache.cached_images(split, transform, tmp_path, log=logs.append)
    path = cache_file(tmp_path)
    first = path.stat()
    assert len(logs) == 1 and "building (8 images)" in logs[0]

    image_cache.cached_images(split, transform, tmp_path, log=logs.append)  # current: read, not rebuilt
    again = path.stat()
    assert len(logs) == 1 and (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)

    fewer = dataclasses.replace(split, image_paths=split.image_paths[:5], caption_image=(), captions=())
    stored = image_cache.cached_images(fewer, transform, tmp_path, log=logs.append)
    assert len(stored) == 5 and path.stat().st_ino != first.st_ino
    assert "is stale (images changed, number of images changed)" in logs[-1]

    monkeypatch.setattr(image_cache, "CACHE_VERSION", image_cache.CACHE_VERSION + 1)
    image_cache.cached_images(fewer, transform, tmp_path, log=logs.append)
    assert "is stale (version changed)" in logs[-1]

    bilinear = T.Compose([T.Resize((32, 32), interpolation=T.InterpolationMode.BILINEAR), T.ToTensor()])
    image_cache.cached_images(fewer, bilinear, tmp_path, log=logs.append)
    assert "is stale (stored changed)" in logs[-1]

    bigger = image_cache.cached_images(fewer, build_transform(40, *STATS), tmp_path, log=logs.append)
    assert "building" in logs[-1] and bigger.path != path and bigger[0].size == (40, 40)
    assert len(logs) == 5


def test_a_changed_image_file_makes_the_cache_stale(tux_slice, tmp_path):
    split = tux_split(tux_slice, "test")
    copies = []
    for k, source in enumerate(split.image_paths[:3]):
        copies.append(str(shutil.copy(source, tmp_path / f"{k}.png")))
    mine = dataclasses.replace(split, image_paths=tuple(copies), caption_image=(0, 1, 2), captions=("a", "b", "c"))
    transform, logs = build_transform(32, *STATS), []
    image_cache.cached_images(mine, transform, tmp_path / "cache", log=logs.append)
    shutil.copy(split.image_paths[5], copies[1])  # same name, other content
    stored = image_cache.cached_images(mine, transform, tmp_path / "cache", log=logs.append)
    assert "is stale (images changed)" in logs[-1]
    expected = items(SplitImages(mine, transform, per_caption=False))
    assert all(torch.equal(transform(stored[i]), expected[i][0]) for i in range(3))


def test_truncated_cache_file_is_rebuilt(tux_slice, tmp_path):
    split, transform, logs = tux_split(tux_slice, "test"), build_transform(32, *STATS), []
    image_cache.cached_images(split, transform, tmp_path, log=logs.append)
    path = cache_file(tmp_path)
    size = path.stat().st_size
    os.truncate(path, size - 100)
    stored = image_cache.cached_images(split, transform, tmp_path, log=logs.append)
    assert "is stale (file unreadable): rebuilding" in logs[-1] and path.stat().st_size == size
    uncached = items(SplitImages(split, transform, per_caption=False))
    assert all(torch.equal(transform(stored[i]), x) for i, (x, _) in enumerate(uncached))


def test_train_view_stores_a_shrunk_image_and_is_seeded(tux_slice, tmp_path):
    split = tux_split(tux_slice, "train")
    transform = build_transform(48, *STATS, train=True, randaugment=True)
    stored = image_cache.cached_images(split, transform, tmp_path, log=lambda *_: None)
    side = round(image_cache.TRAIN_SIDE * 48)  # 55
    for i, image_path in enumerate(split.image_paths):
        with Image.open(image_path) as original:
            width, height = original.size
        shrunk = stored[i]
        assert min(shrunk.size) == min(side, width, height)  # never enlarged
        assert abs(shrunk.size[0] / shrunk.size[1] - width / height) < 0.05
    dataset = split_images(split, transform, True, image_cache=tmp_path)
    torch.manual_seed(0)
    a = items(dataset)
    torch.manual_seed(0)
    b = items(dataset)
    torch.manual_seed(1)
    c = items(dataset)
    assert len(a) == len(split.captions)
    assert all(x.shape == (3, 48, 48) and x.dtype == torch.float32 for x, _ in a)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))
    assert not all(torch.equal(x, y) for (x, _), (y, _) in zip(a, c))


def test_stored_images_pickle_without_their_pixels(tux_slice, tmp_path):
    """A DataLoader worker started by spawn receives the dataset pickled: it must map the file, not copy it."""
    split, transform = tux_split(tux_slice, "test"), build_transform(96, *STATS)
    stored = image_cache.cached_images(split, transform, tmp_path, log=lambda *_: None)
    first = stored[0]  # maps the file in this process
    copy = pickle.loads(pickle.dumps(stored))
    assert len(pickle.dumps(stored)) < 96 * 96 * 3 and copy.pixels is None
    assert copy[0].tobytes() == first.tobytes()


def test_other_transforms_are_refused(tux_slice, tmp_path):
    split = tux_split(tux_slice, "test")
    with pytest.raises(ValueError, match="a transform starting with ToTensor has no cached form.*image_cache: false"):
        image_cache.cached_images(split, T.Compose([T.ToTensor()]), tmp_path)


def test_pair_loader_with_a_worker_reads_the_cache_as_the_files(tux_slice, tmp_path):
    """Built by a loader worker, read through a memory map in another: the same batches as the uncached loader."""
    from training.fit import pair_loader
    split, transform = tux_split(tux_slice, "train"), build_transform(32, *STATS)
    plain = list(pair_loader(split, transform, 16, seed=3))
    cached = list(pair_loader(split, transform, 16, seed=3, num_workers=1, image_cache=tmp_path))
    assert len(plain) == len(cached) > 1
    for (x, i), (y, j) in zip(plain, cached):
        assert torch.equal(i, j) and torch.equal(x, y)


def test_train_view_of_images_not_shrunk_is_exactly_the_uncached_one(tux_slice, tmp_path):
    """Tux Paint stamps are at most 256 px, the stored side at 224: stored as decoded, same crops for the same seed."""
    split = tux_split(tux_slice, "train")
    transform = build_transform(224, *STATS, train=True, randaugment=True)
    cached = split_images(split, transform, True, image_cache=tmp_path)
    torch.manual_seed(0)
    a = [cached[i][0] for i in range(12)]
    torch.manual_seed(0)
    b = [SplitImages(split, transform, per_caption=True)[i][0] for i in range(12)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_buffer_with_the_cache_scores_its_untrained_expert_exactly_as_without(tiny_cfg, tmp_path):
    """data.image_cache reaches the experts' loaders through RunContext: the cache file is built in cache_dir, and
    epoch 0 (the pretrained student, scored on the exact eval view) has the very recall of an uncached buffer."""
    import copy

    from training.experts import run_buffer
    cfg = copy.deepcopy(tiny_cfg)
    cfg["buffer"].update(num_experts=1, epochs=1)
    cfg["cache_dir"] = str(tmp_path / "cache")
    plain = run_buffer({**cfg, "buffer": {**cfg["buffer"], "out_dir": str(tmp_path / "plain")}}, log=lambda _: None)
    cfg["data"]["image_cache"] = True
    cached = run_buffer({**cfg, "buffer": {**cfg["buffer"], "out_dir": str(tmp_path / "cached")}}, log=lambda _: None)
    assert sorted(p.name.split("_")[0] for p in (tmp_path / "cache" / "images").iterdir()) == ["tuxslice", "tuxslice"]
    assert cached[0]["test_recall"]["0"] == plain[0]["test_recall"]["0"]
