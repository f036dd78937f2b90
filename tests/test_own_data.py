"""docs/own-data.md end to end: 40 images drawn here, one annotation file, a config based on the demo's, then
data.prepare, buffer.py, distill.py and evaluate.py as the guide writes them, at tiny lengths."""
import json
import os
import subprocess
import sys

import pytest
from PIL import Image, ImageDraw

from conftest import ROOT, TUXPAINT, without_progress_bars

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (230, 210, 20),
           "black": (10, 10, 10)}
SHAPES = ("circle", "square", "triangle", "cross", "bar", "ring", "dot", "frame")
SPLITS = ["train"] * 24 + ["val"] * 8 + ["test"] * 8


def draw(shape, colour, path):
    image = Image.new("RGB", (48, 48), "white")
    pen = ImageDraw.Draw(image)
    box = (8, 8, 40, 40)
    {"circle": lambda: pen.ellipse(box, fill=colour), "square": lambda: pen.rectangle(box, fill=colour),
     "triangle": lambda: pen.polygon([(24, 6), (42, 42), (6, 42)], fill=colour),
     "cross": lambda: (pen.rectangle((20, 4, 28, 44), fill=colour), pen.rectangle((4, 20, 44, 28), fill=colour)),
     "bar": lambda: pen.rectangle((4, 18, 44, 30), fill=colour),
     "ring": lambda: pen.ellipse(box, outline=colour, width=5),
     "dot": lambda: pen.ellipse((18, 18, 30, 30), fill=colour),
     "frame": lambda: pen.rectangle(box, outline=colour, width=5)}[shape]()
    image.save(path)


def make_dataset(folder):
    """40 images (24 train, 8 val, 8 test), two captions each, in the guide's layout."""
    (folder / "images").mkdir(parents=True)
    entries = []
    for i, split in enumerate(SPLITS):
        colour, shape = list(COLOURS)[i % len(COLOURS)], SHAPES[i // len(COLOURS)]
        name = f"{colour}_{shape}.png"
        draw(shape, COLOURS[colour], folder / "images" / name)
        entries.append({"filename": name, "split": split,
                        "sentences": [{"raw": f"A {colour} {shape}."}, {"raw": f"a {shape} drawn in {colour}"}]})
    (folder / "annotations.json").write_text(json.dumps({"images": entries}))


def run(tmp_path, *args):
    done = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, without_progress_bars(done.stderr)
    return done.stdout + done.stderr


@pytest.mark.skipif(not TUXPAINT.exists(), reason="the demo's weights come with `make venv`; run `make data` too")
def test_own_images_to_an_evaluated_distilled_set(tmp_path):
    make_dataset(tmp_path / "my_data")
    (tmp_path / "my_data" / "lors.yaml").write_text(
        f"base: {ROOT / 'configs' / 'tuxpaint' / 'lors.yaml'}\nout_root: runs/my_data\n"
        "data:\n  name: my_data\n  annotations: my_data/annotations.json\n  image_root: my_data/images\n"
        "distill:\n  budget: 10\n")
    config = ["--config", "my_data/lors.yaml"]
    tiny = ["--buffer.num_experts", "1", "--buffer.epochs", "2", "--distill.max_start_epoch", "2",
            "--distill.iterations", "2", "--evaluate.students", "1", "--evaluate.epochs", "2"]

    checked = run(tmp_path, "-m", "data.prepare", *config)
    assert "IR@5 62%" in checked  # 8 test images: a random ranking finds the image in the top 5 five times in 8
    run(tmp_path, str(ROOT / "buffer.py"), *config, *tiny)
    distilled = run(tmp_path, str(ROOT / "distill.py"), *config, *tiny)
    assert "distill.mini_batch_size" in distilled and "9 synthetic pairs" in distilled  # capped with a note
    out = tmp_path / "runs" / "my_data"
    assert (out / "buffer" / "expert_000.safetensors").exists() and (out / "lors_10" / "distilled.safetensors").exists()
    run(tmp_path, str(ROOT / "evaluate.py"), *config, *tiny, "--distilled", "runs/my_data/lors_10/distilled.safetensors")
    results = list((out / "eval").glob("lors_10-*.json"))
    assert len(results) == 1
    entry = json.loads(results[0].read_text())
    assert "lors_10" in json.dumps(entry) and not (tmp_path / "runs" / "tuxpaint").exists()
