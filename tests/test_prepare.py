"""data/prepare.py: the download checker, on small trees of real Tux Paint images with planted faults."""
import json
import re
import shutil

import pytest
import yaml

from common.cli import run
from conftest import TUXPAINT
from data import prepare
from data.images import load_image
from data.prepare import check_download, format_report, main


@pytest.fixture
def tree(tmp_path, tux_slice):
    """8 real images (4 train, one of them restval; 2 val; 2 test), even-numbered ones converted to JPEG, and a
    Karpathy file over them. Returns the data section and the expected counts per split."""
    source = json.loads(tux_slice.read_text())["images"]
    picked = [e for split, n in (("train", 4), ("val", 2), ("test", 2))
              for e in [x for x in source if x["split"] == split][:n]]
    root = tmp_path / "images"
    root.mkdir()
    entries, expected = [], {}
    for i, entry in enumerate(picked):
        original = TUXPAINT / "images" / entry["filepath"] / entry["filename"]
        name = f"{i:02d}.jpg" if i % 2 == 0 else f"{i:02d}.png"
        if i % 2 == 0:
            load_image(original).save(root / name, quality=90)
        else:
            shutil.copy(original, root / name)
        entries.append({"filename": name, "split": "restval" if i == 3 else entry["split"],
                        "sentences": entry["sentences"]})
        images, captions = expected.get(entry["split"], (0, 0))
        expected[entry["split"]] = (images + 1, captions + len(entry["sentences"]))
    annotations = tmp_path / "dataset.json"
    annotations.write_text(json.dumps({"images": entries}))
    return {"name": "tuxtree", "annotations": str(annotations), "image_root": str(root)}, expected


def _config(tmp_path, data):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    return str(path)


def _failed(report):
    return {check for check, _, _, ok in report.rows if ok is False}


def test_a_clean_tree_passes(tree, tmp_path, capsys):
    data, expected = tree
    root = tmp_path / "images"
    with open(root / "04.jpg", "ab") as f:
        f.write(bytes(64))  # padding after the end marker is allowed
    report = check_download(data, expected)
    assert report.ok and not report.missing and not report.unreadable
    rows = {check: (wanted, found, ok) for check, wanted, found, ok in report.rows}
    assert rows["annotation format"] == ("Karpathy or BLIP-style", "Karpathy JSON (one file)", True)
    assert rows["train images"] == ("4", "4 (1 restval)", True)  # restval counts as train
    assert rows["val images"] == ("2", "2", True) and rows["test captions"][2] is True
    assert rows["image files present"] == ("8", "8", True)
    assert rows["images readable (fast check)"] == ("8", "8", True)
    assert rows["annotations load as in a run"][2] is True

    assert main(["--config", _config(tmp_path, data)]) == 0
    out = capsys.readouterr().out
    assert "tuxtree: all checks passed" in out and "FAIL" not in out
    assert re.search(r"^train images +\| - +\| 4 \(1 restval\) +\| -$", out, re.M)  # reported, not judged
    for split in ("val", "test"):  # usable, but 2 images each: said, with the chance levels
        assert re.search(rf"^warning: the {split} split has only 2 images, so recall over it says little: a random "
                         rf"ranking scores IR@1 50%, IR@5 100%", out, re.M)
    assert len(report.warnings) == 2


def test_blip_style_per_split_files_are_recognised(tree, tmp_path, capsys):
    data, expected = tree
    karpathy = json.loads((tmp_path / "dataset.json").read_text())["images"]
    files = {}
    for split in ("train", "val", "test"):
        mine = [e for e in karpathy if {"restval": "train"}.get(e["split"], e["split"]) == split]
        if split == "train":  # one entry per caption
            items = [{"image": e["filename"], "caption": s["raw"]} for e in mine for s in e["sentences"]]
        else:
            items = [{"image": e["filename"], "caption": [s["raw"] for s in e["sentences"]]} for e in mine]
        files[split] = tmp_path / f"{split}.json"
        files[split].write_text(json.dumps(items))
    report = check_download({**data, "annotations": {k: str(v) for k, v in files.items()}}, expected)
    assert report.ok
    assert report.rows[0][2] == "BLIP-style list (per-split files)"
    assert [r[2] for r in report.rows[1:7]] == [f"{n}" for split in ("train", "val", "test") for n in expected[split]]

    assert main(["--config", _config(tmp_path, data), "--annotations", *(f"{k}={v}" for k, v in files.items())]) == 0
    assert "BLIP-style list (per-split files)" in capsys.readouterr().out


def test_planted_faults_are_named_exactly(tree, tmp_path, capsys):
    data, expected = tree
    root = tmp_path / "images"
    (root / "05.png").unlink()                                         # missing (val)
    whole = (root / "00.jpg").read_bytes()
    (root / "00.jpg").write_bytes(whole[: len(whole) // 2])            # cut-off download
    (root / "02.jpg").write_bytes(b"<html><body>404 Not Found</body></html>")  # an error page saved as .jpg
    expected = {**expected, "train": (5, expected["train"][1])}        # one train image short

    report = check_download(data, expected)
    assert not report.ok
    assert report.missing == [str(root / "05.png")]
    assert [path for path, _ in report.unreadable] == [str(root / "00.jpg"), str(root / "02.jpg")]
    truncated, not_image = (message for _, message in report.unreadable)
    assert "looks truncated" in truncated and "FFD9" in truncated
    assert "does not open as an image" in not_image
    assert _failed(report) == {"train images", "image files present", "images readable (fast check)"}
    rows = {check: (wanted, found) for check, wanted, found, _ in report.rows}
    assert rows["image files present"] == ("8", "7") and rows["images readable (fast check)"] == ("7", "5")
    assert rows["annotations load as in a run"] == ("loads", "not tried: files missing")

    assert main(["--config", _config(tmp_path, data)]) == 1  # no expected counts there: the files alone fail it
    out = capsys.readouterr().out
    assert f"1 image file(s) missing:\n  {root / '05.png'}\n" in out
    assert "2 image file(s) unusable:" in out and "some checks FAILED" in out


def test_the_list_of_missing_files_is_capped(tree, tmp_path):
    data, _ = tree
    for image in (tmp_path / "images").iterdir():
        image.unlink()
    text = format_report(check_download(data), limit=3)
    assert "8 image file(s) missing (the first 3 listed):" in text
    assert sum(line.startswith(f"  {tmp_path / 'images'}") for line in text.splitlines()) == 3


def test_full_decode_catches_a_corrupted_middle_the_fast_check_passes(tree, tmp_path):
    data, _ = tree
    path = tmp_path / "images" / "06.jpg"
    jpeg = bytearray(path.read_bytes())
    scan = jpeg.index(b"\xff\xda")  # start of scan: the compressed pixels follow
    middle = (scan + len(jpeg)) // 2
    jpeg[middle:middle + 2] = b"\xff\xd8"  # a stray start-of-image marker inside the pixel data
    path.write_bytes(bytes(jpeg))

    assert check_download(data).ok  # header and end marker are intact
    report = check_download(data, full_decode=True)
    assert not report.ok and not report.missing
    assert [path for path, _ in report.unreadable] == [str(tmp_path / "images" / "06.jpg")]
    assert "cannot be decoded" in report.unreadable[0][1]
    assert _failed(report) == {"images readable (full decode)"}


def test_the_fast_check_applies_the_pixel_limit_of_a_run(tree, tmp_path, monkeypatch):
    data, _ = tree
    monkeypatch.setattr(prepare, "MAX_PIXELS", 100)
    report = check_download(data)
    assert len(report.unreadable) == 8 and "above the limit of 0.0001 megapixels" in report.unreadable[0][1]


def test_annotations_a_run_refuses_fail_the_check(tree, tmp_path, capsys):
    data, _ = tree
    karpathy = json.loads((tmp_path / "dataset.json").read_text())
    karpathy["images"][4]["sentences"].append({"raw": "..."})  # empty once punctuation is removed
    (tmp_path / "dataset.json").write_text(json.dumps(karpathy))
    report = check_download(data)
    assert _failed(report) == {"annotations load as in a run"}
    assert "empty after preprocessing" in report.annotation_error
    assert "annotations refused:" in format_report(report)


@pytest.mark.parametrize("argv, message", [
    (["flickr"], "unknown dataset 'flickr': known ones are coco, flickr30k"),
    ([], "name a dataset (e.g. flickr30k or coco) or pass --config FILE"),
    (["flickr30k", "--image-root", "."],  # the annotation paths come from configs/flickr30k/buffer.yaml
     "annotation file datasets/flickr30k/annotations/flickr30k_train.json not found"),
    (["coco", "--image-root", "nowhere"], "image root nowhere is not a folder"),
    (["coco", "--annotations", "a.json", "b.json"], "--annotations takes one file, or split=FILE for each split"),
])
def test_argument_errors_end_in_one_line_and_status_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no dataset downloaded here
    with pytest.raises(SystemExit) as stop:
        run(main, argv)
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")


def test_a_test_image_copied_into_train_is_a_leak_it_reports(tree, tmp_path):
    """The readers compare files (a link is caught there); a byte copy under another name is caught here."""
    data, expected = tree
    root = tmp_path / "images"
    shutil.copy(root / "07.png", root / "copy_of_07.png")  # 07: a test image
    content = json.loads((tmp_path / "dataset.json").read_text())
    content["images"].append({"filename": "copy_of_07.png", "split": "train", "sentences": [{"raw": "a copy"}]})
    (tmp_path / "dataset.json").write_text(json.dumps(content))
    report = check_download(data)
    assert _failed(report) == {"copies across splits (same size and first 4 KiB)"}
    assert report.copies == [(str(root / "07.png"), "test", str(root / "copy_of_07.png"), "train")]  # train read first
    assert re.search(r"1 image\(s\) with the content of an image of another split", format_report(report))


@pytest.mark.parametrize("leak", ["a train link to a test image", "one BLIP list for every split"])
def test_a_leak_a_run_would_refuse_fails_the_check(tree, tmp_path, capsys, leak):
    data, _ = tree
    content = json.loads((tmp_path / "dataset.json").read_text())["images"]
    if leak.startswith("a train link"):
        test_image = next(e["filename"] for e in content if e["split"] == "test")
        (tmp_path / "images" / "twin.png").symlink_to(tmp_path / "images" / test_image)
        content.append({"filename": "twin.png", "split": "train", "sentences": [{"raw": "a twin"}]})
        (tmp_path / "dataset.json").write_text(json.dumps({"images": content}))
        message = f"(as {test_image}: the same file)"
    else:
        (tmp_path / "dataset.json").write_text(json.dumps(
            [{"image": e["filename"], "caption": s["raw"]} for e in content for s in e["sentences"]]))
        message = "is one BLIP-style list given for every split"
    report = check_download(data)
    assert "annotations load as in a run" in _failed(report) and message in report.annotation_error
    assert main(["--config", _config(tmp_path, data)]) == 1 and message in capsys.readouterr().out
