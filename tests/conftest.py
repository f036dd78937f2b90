"""Shared fixtures: hand-made tiny datasets, and a small slice of the real Tux Paint data with the real
offline encoders (EfficientNet-Lite0 + MiniLM) at 32 px."""
import contextlib
import hashlib
import importlib
import importlib.util
import io
import json
import os
import random
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub id must fail at once, not after retries

TUXPAINT = ROOT / "datasets" / "tuxpaint"


def run_tool(*args):
    """`python *args` (a script or `-m module`, from the repository root) in this process: the entry point's `main`
    through `common.cli.run`; its exit status, stdout and stderr. For refusals and reports, which come before any
    compute, where a new interpreter per case would only add its start-up."""
    from common.cli import run
    if args[0] == "-m":
        module, argv = importlib.import_module(args[1]), args[2:]
    else:  # a top-level script, loaded from its file (`evaluate` is also the name of a PyPI package)
        spec = importlib.util.spec_from_file_location(f"tool_{Path(args[0]).stem}", ROOT / args[0])
        module, argv = importlib.util.module_from_spec(spec), args[1:]
        spec.loader.exec_module(module)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            run(module.main, [str(a) for a in argv])
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    return SimpleNamespace(returncode=code, stdout=stdout.getvalue(), stderr=stderr.getvalue())


def write_images(folder, names, size=(20, 16)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for name in names:
        color = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", size, color).save(folder / name)


@pytest.fixture
def handmade(tmp_path):
    """Five images with 1–3 captions each, as a Karpathy file and as BLIP-style per-split files."""
    images = {"a.png": ("train", ["A dog runs.", "The dog: running!"]),
              "b.png": ("train", ["A red (big) ball"]),
              "c.png": ("restval", ["Two cats; sleeping", "cats", "a cat pair"]),
              "d.png": ("val", ["A tree."]),
              "e.png": ("test", ["A house", "a small house"])}
    write_images(tmp_path / "img", images)
    karpathy = {"images": [{"filename": f, "split": s, "sentences": [{"raw": c} for c in caps]}
                           for f, (s, caps) in images.items()]}
    (tmp_path / "karpathy.json").write_text(json.dumps(karpathy))
    blip_train = [{"image": f, "caption": c, "image_id": f}
                  for f, (s, caps) in images.items() if s in ("train", "restval") for c in caps]
    (tmp_path / "blip_train.json").write_text(json.dumps(blip_train))
    for split in ("val", "test"):
        entries = [{"image": f, "caption": caps} for f, (s, caps) in images.items() if s == split]
        (tmp_path / f"blip_{split}.json").write_text(json.dumps(entries))
    return tmp_path


@pytest.fixture(scope="session")
def tux_slice(tmp_path_factory):
    """A Karpathy file over 24 train / 8 val / 8 test real Tux Paint images."""
    source = TUXPAINT / "dataset_tuxpaint.json"
    if not source.is_file():
        pytest.fail(f"{source} missing: run `make data` (python -m data.tuxpaint --out datasets/tuxpaint) first")
    images = json.loads(source.read_text())["images"]
    keep, quota = [], {"train": 24, "val": 8, "test": 8}
    for entry in images:
        if quota.get(entry["split"], 0) > 0:
            quota[entry["split"]] -= 1
            keep.append(entry)
    path = tmp_path_factory.mktemp("tux") / "dataset_tuxslice.json"
    path.write_text(json.dumps({"images": keep}))
    return path


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    """One cache folder for the session: converted weights and text features are built once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def tiny_cfg(tux_slice, shared_cache, tmp_path):
    """The demo config shrunk to seconds: 32 px, 2 experts × 2 epochs, batch 8."""
    from common.config import load_config
    cfg = load_config(ROOT / "configs" / "tuxpaint" / "buffer.yaml")
    cfg["data"].update(name="tuxslice", annotations=str(tux_slice), image_root=str(TUXPAINT / "images"),
                       image_size=32)
    cfg["buffer"].update(out_dir=str(tmp_path / "buffer"), num_experts=2, epochs=2, batch_size=8, eval_every=1)
    cfg["cache_dir"] = str(shared_cache)
    cfg["device"] = "cpu"
    return cfg


@pytest.fixture(scope="session")
def slice_config(tux_slice, shared_cache):
    """slice_config(name, buffer_dir, **buffer): configs/tuxpaint/<name> on the slice, on the CPU, with a tiny expert
    section (1 expert × 2 epochs, batch 8, no test scoring) writing to buffer_dir."""
    from common.config import load_config

    def build(name, buffer_dir, **buffer):
        cfg = load_config(ROOT / "configs" / "tuxpaint" / name)
        cfg["data"].update(name="tuxslice", annotations=str(tux_slice), image_root=str(TUXPAINT / "images"))
        cfg["buffer"].update({"out_dir": str(buffer_dir), "num_experts": 1, "epochs": 2, "batch_size": 8,
                              "eval_every": 0, **buffer})
        cfg.update(cache_dir=str(shared_cache), device="cpu")
        return cfg
    return build


@pytest.fixture(scope="session")
def distill_base(tux_slice, shared_cache, tmp_path_factory):
    """`tiny_cfg` for the distillation tests, built once for the session, with its buffer (2 experts × 2 epochs,
    no test scoring) trained once."""
    from common.config import load_config
    from training.experts import run_buffer

    # load_config, not yaml.safe_load: the latter reads `weight_decay: 5e-4` as the string "5e-4"
    cfg = load_config(ROOT / "configs" / "tuxpaint" / "buffer.yaml")
    cfg["data"].update(name="tuxslice", annotations=str(tux_slice), image_root=str(TUXPAINT / "images"),
                       image_size=32)
    cfg["buffer"].update(out_dir=str(tmp_path_factory.mktemp("distill_buffer") / "buffer"), num_experts=2,
                         epochs=2, batch_size=8, eval_every=0)
    cfg.update(cache_dir=str(shared_cache), device="cpu")
    assert sorted(run_buffer(cfg, log=lambda _msg: None)) == [0, 1]
    return cfg


def distill_config(base_cfg, out_dir, **distill):
    """configs/tuxpaint/lors.yaml with the tiny data/model/buffer of `distill_base` and a tiny distill section
    (lr_sim 0.1: S measurably leaves the identity within a few iterations); 1-student, 2-epoch evaluation."""
    import copy

    from common.config import load_config
    cfg = load_config(ROOT / "configs" / "tuxpaint" / "lors.yaml")
    for key in ("data", "model", "buffer", "cache_dir", "device", "evaluate"):
        cfg[key] = copy.deepcopy(base_cfg[key])
    cfg["distill"].update(budget=6, syn_steps=2, mini_batch_size=3, iterations=4, checkpoint_every=2,
                          max_start_epoch=1, expert_epochs=1, eval_every=0, lr_sim=0.1, lr_lr=1e-5,
                          out_dir=str(out_dir))
    cfg["distill"].update(distill)
    cfg["evaluate"].update(students=1, epochs=2)
    return cfg


def file_digests(folder):
    """{relative path: sha256} of every file under `folder`: what a refused or stopped run must leave unchanged."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


@contextmanager
def killed_at(iteration):
    """Inside the block, distillation is killed (KeyboardInterrupt, as Ctrl-C) when it reaches `iteration`."""
    from methods.loop import Distillation
    real_step = Distillation.step

    def step(self, i):
        if i == iteration:
            raise KeyboardInterrupt
        return real_step(self, i)
    Distillation.step = step
    try:
        with pytest.raises(KeyboardInterrupt):
            yield
    finally:
        Distillation.step = real_step


def without_progress_bars(stderr, keep=3000):
    """The end of a tool's stderr without its tqdm lines, for an assertion message."""
    lines = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip() and "it/s]" not in line
             and "s/it]" not in line and "?it/s" not in line]
    return "\n".join(lines)[-keep:]
