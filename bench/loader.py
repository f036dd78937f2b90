"""Expert data loading on Flickr-sized inputs: images per second of the real loader against what the model needs.

    python bench/loader.py [--config configs/flickr30k/buffer.yaml] [--jpeg-dir /tmp/bench_loader_jpegs]
        [--images 500] [--workers 0 1 2] [--cache off|on|both] [--view train|eval]

Synthetic 500×375 JPEGs (quality 90, smooth noise so that they compress like photos, ~5 captions each as Flickr30K)
are written once to --jpeg-dir and reused by later runs. They are read through the path experts use
(training.fit.pair_loader: SplitImages + build_transform with the config's image size, pixel statistics and
RandomAugment as its recipe resolves them; batch buffer.batch_size), with N DataLoader workers, without and/or with
the decoded-image cache (data.image_cache; built once under <jpeg-dir>/cache, its build time printed).

Per setting, one epoch (the short last batch dropped), timed from the loader's start (worker start-up included):
images/s, and the CPU time per image of the main process and its workers together, whose inverse is the rate of one
busy core: unlike images/s it holds on a CPU shared with other jobs. The model's need is --step-seconds per batch
(0.086 s: NFNet-l0 + BERT-base, 224 px, batch 128, on an H100, bench/buffer.py); the cores (workers) that would take
are extrapolated linearly from the one-core rate (real scaling is at best linear). Prints figures only; asserts
nothing.
"""
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, when run as a script

CAPTIONS_PER_IMAGE = 5
JPEG_SIZE, JPEG_QUALITY = (500, 375), 90


def parse(argv):
    from common.config import parse_args
    from methods import method_keys

    def extra(p):
        p.add_argument("--jpeg-dir", default="/tmp/bench_loader_jpegs", help="synthetic JPEGs, made once, reused")
        p.add_argument("--images", type=int, default=500, help="synthetic images (5 captions each)")
        p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
        p.add_argument("--batch-size", type=int, help="default: buffer.batch_size")
        p.add_argument("--cache", choices=("off", "on", "both"), default="both", help="data.image_cache")
        p.add_argument("--view", choices=("train", "eval"), default="train",
                       help="train: the expert transform (buffer.augment); eval: the test transform")
        p.add_argument("--step-seconds", type=float, default=0.086, help="model time per batch (H100 figure)")

    if "--config" not in argv:
        argv = ["--config", "configs/flickr30k/buffer.yaml", *argv]
    return parse_args(argv, description=__doc__, extra=extra, method_keys=method_keys())


def synthetic_jpegs(folder, count, seed=0):
    """Paths of `count` 500×375 JPEGs in `folder`, written where missing: coarse noise enlarged smoothly plus fine
    noise, so that they have photo-like detail and file size (~120 KiB)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i:05d}.jpg" for i in range(count)]
    rng = np.random.default_rng(seed)
    for path in paths:
        coarse = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize(JPEG_SIZE, Image.BICUBIC), dtype=np.int16)
        fine = rng.integers(-40, 41, smooth.shape, dtype=np.int16)
        if not path.is_file():
            Image.fromarray(np.clip(smooth + fine, 0, 255).astype(np.uint8)).save(path, quality=JPEG_QUALITY)
    return paths


def synthetic_split(paths):
    from data.annotations import CaptionSplit
    caption_image = tuple(i for i in range(len(paths)) for _ in range(CAPTIONS_PER_IMAGE))
    captions = tuple(f"caption {c} of image {i}" for c, i in enumerate(caption_image))
    return CaptionSplit("bench", "train", tuple(map(str, paths)), captions, caption_image, "synthetic")


def transform_of(cfg, view):
    """The expert transform of the config (or its test transform), as RunContext builds it, with its description."""
    from data.images import build_transform
    from networks.encoders import ImageTower
    from training.recipe import expert_recipe, pixel_stats
    recipe, size = expert_recipe(cfg), cfg["data"]["image_size"]
    # a random-init tower: its statistics are those of the pretrained one
    mean, std = pixel_stats(recipe, ImageTower(cfg["model"]["image_encoder"], None))
    train = view == "train" and cfg["buffer"]["augment"]
    randaugment = train and recipe["data.randaugment"]
    what = (f"train view ({size} px, random-resized crop + flip{' + RandomAugment(2, 5)' if randaugment else ''})"
            if train else f"eval view ({size} px, resize)")
    return build_transform(size, mean, std, train=train, randaugment=randaugment), what


def cpu_seconds():
    """CPU time of this process and of its finished children (loader workers count once joined)."""
    return sum(r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF,
                                                                        resource.RUSAGE_CHILDREN)))


def measure(split, transform, workers, batch, image_cache):
    """(images/s, CPU seconds per image) over one epoch of a fresh loader, timed from its start."""
    from training.fit import pair_loader
    loader = pair_loader(split, transform, batch, seed=0, num_workers=workers, drop_last=True,
                         image_cache=image_cache)
    start, cpu, seen = time.perf_counter(), cpu_seconds(), 0
    for images, _ in loader:  # to the end: the workers are joined, so their CPU time is counted
        seen += len(images)
    return seen / (time.perf_counter() - start), (cpu_seconds() - cpu) / seen


def main(argv=None):
    cfg, args = parse(list(sys.argv[1:] if argv is None else argv))
    torch.set_num_threads(1)
    batch = args.batch_size or cfg["buffer"]["batch_size"]
    jpeg_dir = Path(args.jpeg_dir)
    start = time.perf_counter()
    paths = synthetic_jpegs(jpeg_dir, args.images)
    mean_kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
    split = synthetic_split(paths)
    transform, what = transform_of(cfg, args.view)
    print(f"{len(paths)} JPEGs {JPEG_SIZE[0]}×{JPEG_SIZE[1]} (mean {mean_kb:.0f} KiB) in {jpeg_dir} "
          f"({time.perf_counter() - start:.1f} s to make or find); {what}; batch {batch}; {os.cpu_count()} cores")
    need = batch / args.step_seconds
    print(f"the model needs {need:,.0f} images/s ({args.step_seconds} s per batch of {batch}, H100)")
    caches = {"off": [None], "on": [jpeg_dir / "cache"], "both": [None, jpeg_dir / "cache"]}[args.cache]
    rows = []
    for image_cache in caches:
        if image_cache is not None:
            from data.image_cache import cached_images
            start = time.perf_counter()
            cached_images(split, transform, image_cache, num_workers=max(args.workers))
            print(f"image cache ready in {time.perf_counter() - start:.1f} s ({max(args.workers)} workers; "
                  f"near 0: reused)")
        for workers in args.workers:
            rows.append((image_cache is not None, workers, *measure(split, transform, workers, batch, image_cache),
                         os.getloadavg()[0]))
    print(f"\n{'cache':<6} {'workers':>7} {'images/s':>9} {'per worker':>11} {'CPU ms/image':>13} "
          f"{'images/s/core':>14} {'cores for need*':>16} {'load avg':>9}")
    for cached, workers, per_s, cpu, load in rows:
        print(f"{'on' if cached else 'off':<6} {workers:>7} {per_s:>9.1f} {per_s / max(workers, 1):>11.1f} "
              f"{cpu * 1e3:>13.2f} {1 / cpu:>14.1f} {need * cpu:>16.1f} {load:>9.2f}")
    print(f"* {need:,.0f} images/s × CPU time per image: a linear extrapolation from one busy core (main process "
          f"and workers together). images/s and per worker (workers 0: the main process) are wall-clock rates: with "
          f"a load average above {os.cpu_count()} (the core count) other jobs shared the CPU and they are low.")


if __name__ == "__main__":
    main()
