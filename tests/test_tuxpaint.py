"""Tests for data/tuxpaint.py on a tiny fake stamps tree (no network, no apt)."""

import json
import os
import shutil

import pytest
from PIL import Image

from common.cli import run
from conftest import file_digests
from data import tuxpaint


def _stamp(root, rel, size=(40, 20), color=(255, 0, 0, 255), caption=None):
    png = root / f"{rel}.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", size, color).save(png)
    if caption is not None:
        png.with_suffix(".txt").write_text(caption, encoding="utf-8")
    return png


@pytest.fixture
def stamps(tmp_path):
    root = tmp_path / "stamps"
    _stamp(root, "animals/birds/frog", size=(600, 300),
           caption="A frog.\nde.utf8=Ein Frosch.\nen_AU.utf8=A frog.\nen_GB.utf8=A frog.\n")
    _stamp(root, "animals/birds/frog_mirror", size=(600, 300))  # no .txt: skipped
    _stamp(root, "food/apple", size=(30, 50), color=(0, 0, 0, 0),
           caption="A red color apple.\nen_GB.utf8=A red colour apple.\n"
                   "en_AU.utf8=A red colour apple.\nen_AU=A red apple, mate.\n")
    _stamp(root, "food/empty", caption="\nen_GB.utf8=Something.\n")  # empty first line
    (root / "food" / "orphan.txt").write_text("No picture.\n")  # .txt without .png
    (root / "food" / "vector.svg").write_text("<svg/>")
    return root


def test_read_captions_keeps_only_differing_variants(stamps):
    assert tuxpaint.read_stamp_captions(stamps / "animals/birds/frog.txt") == ["A frog."]
    assert tuxpaint.read_stamp_captions(stamps / "food/apple.txt") == [
        "A red color apple.", "A red colour apple.", "A red apple, mate."]
    assert tuxpaint.read_stamp_captions(stamps / "food/empty.txt") == []


def test_read_captions_tolerates_bad_utf8(tmp_path):
    txt = tmp_path / "x.txt"
    txt.write_bytes(b"A caf\xe9.\n")
    assert tuxpaint.read_stamp_captions(txt) == ["A caf\ufffd."]


def test_find_stamps_pairs_and_skips(stamps):
    found = tuxpaint.find_stamps(stamps)
    rels = [p.relative_to(stamps).as_posix() for p, _ in found]
    assert rels == ["animals/birds/frog.png", "food/apple.png"]
    assert found[0][1] == ["A frog."]


def test_composite_on_white():
    img = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 255))
    out = tuxpaint.composite_on_white(img)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (255, 0, 0)


def test_composite_handles_palette_and_gray_alpha():
    pal = Image.new("RGBA", (1, 1), (0, 0, 0, 0)).convert("P")
    assert tuxpaint.composite_on_white(pal).getpixel((0, 0)) == (255, 255, 255)
    la = Image.new("LA", (1, 1), (0, 255))
    assert tuxpaint.composite_on_white(la).getpixel((0, 0)) == (0, 0, 0)


def test_downscale_never_upscales():
    assert tuxpaint.downscale(Image.new("RGB", (600, 300)), 256).size == (256, 128)
    assert tuxpaint.downscale(Image.new("RGB", (300, 600)), 256).size == (128, 256)
    assert tuxpaint.downscale(Image.new("RGB", (30, 50)), 256).size == (30, 50)


def test_split_sizes_and_determinism():
    names = [f"dir/img{i:03d}.png" for i in range(250)]
    a = tuxpaint.split_samples(names, seed=0)
    assert a == tuxpaint.split_samples(names, seed=0)
    assert a != tuxpaint.split_samples(names, seed=1)
    assert (a.count("test"), a.count("val"), a.count("train")) == (100, 100, 50)
    assert len(a) == len(names) and set(a) == {"train", "val", "test"}
    # Input order does not matter: each name keeps its split.
    b = tuxpaint.split_samples(list(reversed(names)), seed=0)
    assert dict(zip(names, a)) == dict(zip(reversed(names), b))
    assert tuxpaint.split_samples(250, seed=0).count("train") == 50


def test_build_dataset_writes_consistent_json(stamps, tmp_path):
    out = tmp_path / "out"
    tuxpaint.build_dataset(stamps, out, max_side=256, seed=0, n_test=1, n_val=0)
    data = json.loads((out / "dataset_tuxpaint.json").read_text(encoding="utf-8"))
    assert data["dataset"] == "tuxpaint"
    by_name = {e["filename"]: e for e in data["images"]}
    assert set(by_name) == {"frog.png", "apple.png"}
    assert sorted(e["split"] for e in data["images"]) == ["test", "train"]
    assert [e["imgid"] for e in data["images"]] == [0, 1]

    frog = by_name["frog.png"]
    assert frog["filepath"] == "animals/birds"
    assert frog["sentences"] == [{"raw": "A frog."}]
    assert [s["raw"] for s in by_name["apple.png"]["sentences"]] == tuxpaint.read_stamp_captions(
        stamps / "food/apple.txt")
    for e in data["images"]:
        with Image.open(out / "images" / e["filepath"] / e["filename"]) as img:
            assert img.mode == "RGB" and max(img.size) <= 256
    with Image.open(out / "images/animals/birds/frog.png") as img:
        assert img.size == (256, 128) and img.getpixel((0, 0)) == (255, 0, 0)
    with Image.open(out / "images/food/apple.png") as img:
        assert img.size == (30, 50) and img.getpixel((0, 0)) == (255, 255, 255)
    assert "tuxpaint-stamps-default" in (out / "README.txt").read_text()
    assert not list(out.glob("*.tmp"))


def test_no_json_when_image_writing_fails(stamps, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_save, calls = tuxpaint.save_image, []

    def failing_save(img, path):
        calls.append(path)
        if len(calls) > 1:
            raise OSError("disk full")
        real_save(img, path)

    monkeypatch.setattr(tuxpaint, "save_image", failing_save)
    with pytest.raises(OSError):
        tuxpaint.build_dataset(stamps, out)
    assert len(calls) == 2
    assert not (out / "dataset_tuxpaint.json").exists()
    assert not list(out.glob("*.tmp"))


def test_no_temp_file_left_when_json_writing_fails(stamps, tmp_path, monkeypatch):
    out = tmp_path / "out"

    real_replace = os.replace

    def interrupted_at_the_index(source, target):
        if str(target).endswith(".json"):
            raise RuntimeError("interrupted")
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", interrupted_at_the_index)
    with pytest.raises(RuntimeError):
        tuxpaint.build_dataset(stamps, out)
    assert not (out / "dataset_tuxpaint.json").exists()
    assert not list(out.glob("*.tmp"))


def test_main_skips_when_ready_and_force_rebuilds(stamps, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_tuxpaint.json").write_text("{}")
    monkeypatch.setattr(tuxpaint, "fetch_stamps", lambda cache: pytest.fail("should not fetch"))
    assert tuxpaint.main(["--out", str(out)]) == 0
    assert "ready" in capsys.readouterr().out

    monkeypatch.setattr(tuxpaint, "fetch_stamps", lambda cache: stamps)
    assert tuxpaint.main(["--out", str(out), "--force"]) == 0
    assert "2 images, 4 captions" in capsys.readouterr().out
    assert len(json.loads((out / "dataset_tuxpaint.json").read_text())["images"]) == 2


def test_fetch_stamps_without_apt_names_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tuxpaint.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as stop:
        run(tuxpaint.main, ["--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")])
    msg = capsys.readouterr().err
    assert stop.value.code == 2 and msg.startswith("error: cannot obtain the Debian package tuxpaint-stamps-default "
                                                   "(apt-get not found)")


def test_fetch_stamps_reuses_extracted_tree(tmp_path, monkeypatch):
    root = tmp_path / "cache" / "extracted" / "usr/share/tuxpaint/stamps"
    root.mkdir(parents=True)
    monkeypatch.setattr(tuxpaint.shutil, "which", lambda name: None)  # would fail if used
    assert tuxpaint.fetch_stamps(tmp_path / "cache") == root


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb to build a .deb")
def test_fetch_stamps_accepts_user_deb(stamps, tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(stamps, pkg / "usr/share/tuxpaint/stamps")
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text(
        "Package: fake-stamps\nVersion: 1\nArchitecture: all\n"
        "Maintainer: t <t@t>\nDescription: test\n")
    cache = tmp_path / "cache"
    cache.mkdir()
    import subprocess
    subprocess.run(["dpkg-deb", "--build", str(pkg), str(cache / "mine.deb")],
                   check=True, capture_output=True)
    root = tuxpaint.fetch_stamps(cache)
    assert (root / "food/apple.png").is_file()
    assert not (cache / "extracted.tmp").exists()


def test_a_folder_the_tool_did_not_write_is_never_emptied(stamps, tmp_path, monkeypatch, capsys):
    """--out pointing at a user's folder (no index, no build marker) is refused with its images intact; a folder
    the tool built before is rebuilt; an empty stamps cache and a tiny --max-side are refused."""
    out = tmp_path / "mine"
    _stamp(out, "images/holiday")
    (out / "notes.txt").write_text("the user's notes")
    before = file_digests(out)
    monkeypatch.setattr(tuxpaint, "fetch_stamps", lambda cache: pytest.fail("checked before the download"))
    for target, message in ((out, "holds files that this tool did not write"),
                            (out / "notes.txt", "is a file, not a folder")):
        with pytest.raises(SystemExit) as stop:
            run(tuxpaint.main, ["--out", str(target)])
        assert stop.value.code == 2 and f"error: --out {target} {message}" in capsys.readouterr().err
        assert file_digests(out) == before
    monkeypatch.setattr(tuxpaint, "fetch_stamps", lambda cache: stamps)

    built = tmp_path / "built"
    tuxpaint.build_dataset(stamps, built, n_test=1, n_val=0)
    (built / "dataset_tuxpaint.json").unlink()  # as if a rebuild was killed before its index
    tuxpaint.build_dataset(stamps, built, n_test=1, n_val=0)
    assert (built / "dataset_tuxpaint.json").exists()

    monkeypatch.setattr(tuxpaint, "fetch_stamps", lambda cache: tmp_path / "empty")
    with pytest.raises(SystemExit) as stop:
        run(tuxpaint.main, ["--out", str(tmp_path / "new")])
    assert stop.value.code == 2 and "no Tux Paint stamps under" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    with pytest.raises(SystemExit) as stop:
        run(tuxpaint.main, ["--out", str(tmp_path / "new"), "--max-side", "0"])
    assert stop.value.code == 2 and "--max-side must be at least 16 px, not 0" in capsys.readouterr().err
