"""Bad data is refused with a message naming the file / entry and what to do; good data still loads."""
import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import write_images
from data.annotations import AnnotationError, load_split, read_split
from data.images import ImageReadError, load_image


def _karpathy(folder, entries, name="k.json"):
    """A Karpathy file of (filename, split) entries, one caption each."""
    images = [{"filename": f, "split": s, "sentences": [{"raw": f"caption {i}"}]} for i, (f, s) in enumerate(entries)]
    (folder / name).write_text(json.dumps({"images": images}))
    return folder / name


def _blip(root):
    return {s: str(root / f"blip_{s}.json") for s in ("train", "val", "test")}


# ---------------------------------------------------------------- image paths and the image root

@pytest.mark.parametrize("escaping", ["../outside.png", "sub/../../outside.png", "ABSOLUTE"])
def test_image_path_leaving_the_root_is_refused_unless_allowed(handmade, escaping):
    write_images(handmade, ["outside.png"])
    name = str(handmade / "outside.png") if escaping == "ABSOLUTE" else escaping
    ann = _karpathy(handmade, [("a.png", "train"), (name, "test")])
    with pytest.raises(AnnotationError, match=rf"k\.json: entry 1 \({name}\) points outside the image root "
                                              rf"{handmade / 'img'}; .*data\.allow_outside_root: true"):
        read_split(ann, "test", handmade / "img", "toy")
    split = read_split(ann, "test", handmade / "img", "toy", allow_outside_root=True)
    assert [p.rsplit("/", 1)[1] for p in split.image_paths] == ["outside.png"]
    data_cfg = {"name": "toy", "annotations": str(ann), "image_root": str(handmade / "img"), "allow_outside_root": True}
    assert load_split(data_cfg, "test").image_paths == split.image_paths


def test_paths_inside_the_root_stay_accepted(handmade):
    write_images(handmade / "img" / "sub", ["x.png"])
    ann = _karpathy(handmade, [("./a.png", "train"), ("sub/x.png", "train"), ("sub/../b.png", "train"),
                               (str(handmade / "img" / "e.png"), "test")])
    train = read_split(ann, "train", handmade / "img", "toy")
    assert [p.split("/img/", 1)[1] for p in train.image_paths] == ["a.png", "sub/x.png", "b.png"]
    assert read_split(ann, "test", handmade / "img", "toy").image_paths == (str(handmade / "img" / "e.png"),)


# ---------------------------------------------------------------- one split per image

def test_image_in_two_karpathy_splits_is_refused(handmade):
    ann = _karpathy(handmade, [("a.png", "train"), ("b.png", "train"), ("./b.png", "test")])
    for split in ("train", "test"):  # whichever split is asked for: the file itself is wrong
        with pytest.raises(AnnotationError, match=r"k\.json: image \./b\.png is listed in entry 1 \(split 'train'\) "
                                                  r"and in entry 2 \(split 'test'\); .*one split only"):
            read_split(ann, split, handmade / "img", "toy")


def test_image_in_restval_and_train_is_a_repeat_within_train(handmade):
    ann = _karpathy(handmade, [("a.png", "restval"), ("a.png", "train")])
    with pytest.raises(AnnotationError, match=r"image a\.png is listed in entry 0 \(split 'restval'\) and in entry 1 "
                                              r"\(split 'train'\); list it once, with all its captions"):
        read_split(ann, "train", handmade / "img", "toy")


@pytest.mark.parametrize("link", ["file", "folder", "hard"])
def test_an_image_reached_twice_through_links_is_one_image(tmp_path, link):
    """Splits are disjoint by the file, not by the path string: a train symlink (or hard link) to a test image, or a
    train folder that links to the test folder, is refused; a link to an image of no other split still reads."""
    write_images(tmp_path / "img" / "test", ["t.png"])
    write_images(tmp_path / "img" / "train", ["a.png"])
    root = tmp_path / "img"
    if link == "folder":
        (root / "also").symlink_to(root / "test", target_is_directory=True)
        twin = "also/t.png"
    else:
        twin = "train/t2.png"
        (root / twin).hardlink_to(root / "test" / "t.png") if link == "hard" else \
            (root / twin).symlink_to(root / "test" / "t.png")
    ann = _karpathy(tmp_path, [("train/a.png", "train"), (twin, "train"), ("test/t.png", "test")])
    with pytest.raises(AnnotationError, match=rf"image test/t\.png is listed in entry 1 \(as {twin}: the same file\) "
                                              r"\(split 'train'\) and in entry 2 \(split 'test'\); an image must "
                                              r"belong to one split only"):
        read_split(ann, "test", root, "toy")
    write_images(tmp_path / "elsewhere", ["e.png"])
    (root / "train" / "e.png").symlink_to(tmp_path / "elsewhere" / "e.png")
    ok = _karpathy(tmp_path, [("train/a.png", "train"), ("train/e.png", "train"), ("test/t.png", "test")])
    assert len(read_split(ok, "train", root, "toy").image_paths) == 2


def test_one_blip_list_for_every_split_needs_split_fields(handmade):
    entries = json.loads((handmade / "blip_train.json").read_text())
    (handmade / "all.json").write_text(json.dumps(entries))
    with pytest.raises(AnnotationError, match=r"all\.json is one BLIP-style list given for every split, and not every "
                                              r"entry has a 'split' field .*every image would be in train, val and "
                                              r"test; give one file per split"):
        read_split(handmade / "all.json", "test", handmade / "img", "toy")
    tagged = [{**e, "split": "train" if e["image"] != "c.png" else "test"} for e in entries]
    (handmade / "all.json").write_text(json.dumps(tagged))
    assert [p.rsplit("/", 1)[1] for p in read_split(handmade / "all.json", "test", handmade / "img", "toy")
            .image_paths] == ["c.png"]
    both = tagged + [{"image": "c.png", "caption": "again", "split": "train"}]
    (handmade / "all.json").write_text(json.dumps(both))
    with pytest.raises(AnnotationError, match=r"image c\.png is in both split"):
        read_split(handmade / "all.json", "train", handmade / "img", "toy")


def test_image_in_two_blip_split_files_is_refused(handmade):
    train = read_split(_blip(handmade), "train", handmade / "img", "toy")  # one entry per caption is normal
    assert len(train.image_paths) == 3 and len(train.captions) == 6
    test = json.loads((handmade / "blip_test.json").read_text())
    (handmade / "blip_test.json").write_text(json.dumps(test + [{"image": "./c.png", "caption": ["cats"]}]))
    with pytest.raises(AnnotationError, match=r"image \./c\.png is in both split 'test' \(.*blip_test\.json, entry 1\) "
                                              r"and split 'train' \(.*blip_train\.json, entry 3\); .*one split only"):
        read_split(_blip(handmade), "test", handmade / "img", "toy")
    with pytest.raises(AnnotationError, match=r"image c\.png is in both split 'train' .* and split 'test'"):
        read_split(_blip(handmade), "train", handmade / "img", "toy")


# ---------------------------------------------------------------- split names

def test_unknown_split_names_are_listed_with_the_known_ones(handmade):
    ann = _karpathy(handmade, [("a.png", "train"), ("b.png", "Train"), ("d.png", "validation"), ("e.png", "Train")])
    with pytest.raises(AnnotationError, match=r'k\.json: unknown split name\(s\) "Train", "validation" \(first in '
                                              r"entry 1\); the known ones are train, restval, val, test"):
        read_split(ann, "train", handmade / "img", "toy")
    files = {**_blip(handmade), "validation": str(handmade / "blip_val.json")}
    with pytest.raises(AnnotationError, match=r"data\.annotations names unknown split\(s\) 'validation'; "
                                              r"the known ones are train, val, test"):
        read_split(files, "train", handmade / "img", "toy")


# ---------------------------------------------------------------- value types

@pytest.mark.parametrize("fmt, key, value, message", [
    ("karpathy", "filename", 42, r"entry 1: filename must be a string, found number 42"),
    ("karpathy", "filename", None, r"entry 1: filename must be a string, found null"),
    ("karpathy", "filepath", ["x"], r'entry 1: filepath must be a string, found list \["x"\]'),
    ("karpathy", "raw", 7, r"entry 1: sentence 0 'raw' must be a string, found number 7"),
    ("blip", "image", ["a.png"], r'entry 1: image must be a string, found list \["a\.png"\]'),
    ("blip", "caption", [1, 2], r"entry 1 \(a\.png\): 'caption' must be a string or a list of strings, "
                                r"found list \[1, 2\]"),
    ("blip", "caption", None, r"entry 1 \(a\.png\): 'caption' must be a string or a list of strings, found null"),
])
def test_non_string_names_and_captions_name_the_entry_and_what_was_found(handmade, fmt, key, value, message):
    if fmt == "karpathy":
        content = json.loads((handmade / "karpathy.json").read_text())
        entry = content["images"][1]
        (entry["sentences"][0] if key == "raw" else entry)[key] = value
    else:
        content = json.loads((handmade / "blip_train.json").read_text())
        content[1][key] = value
    (handmade / "bad.json").write_text(json.dumps(content))
    annotations = handmade / "bad.json" if fmt == "karpathy" else {"train": handmade / "bad.json"}
    with pytest.raises(AnnotationError, match=r"bad\.json: " + message):
        read_split(annotations, "train", handmade / "img", "toy")


def test_karpathy_images_must_be_a_list(handmade):
    (handmade / "bad.json").write_text(json.dumps({"images": None}))
    with pytest.raises(AnnotationError, match=r"bad\.json: 'images' must be a list of image entries, found null"):
        read_split(handmade / "bad.json", "train", handmade / "img", "toy")


# ---------------------------------------------------------------- dataset name

@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", None, 3])
def test_dataset_name_must_be_a_plain_name(handmade, name):
    data_cfg = {"name": name, "annotations": str(handmade / "karpathy.json"), "image_root": str(handmade / "img")}
    with pytest.raises(AnnotationError, match=r"data\.name must be a plain name .*found .*cache file names"):
        load_split(data_cfg, "train")


def test_plain_dataset_names_load(handmade):
    for name in ("flickr30k", "coco_2014-v1.0"):
        data_cfg = {"name": name, "annotations": str(handmade / "karpathy.json"), "image_root": str(handmade / "img")}
        assert load_split(data_cfg, "val").dataset == name


def test_a_long_caption_loads_cut_to_max_words(handmade):
    long = " ".join(f"word{i}" for i in range(5000))
    images = [{"filename": "a.png", "split": "train", "sentences": [{"raw": long}]}]
    (handmade / "long.json").write_text(json.dumps({"images": images}))
    split = read_split(handmade / "long.json", "train", handmade / "img", "toy", max_words=30)
    assert list(split.captions) == [" ".join(f"word{i}" for i in range(30))]


# ---------------------------------------------------------------- image size

def _png_claiming(path, width, height):
    """A 1×1 PNG whose header claims width×height: decoding it would fail, so only a header check refuses it."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts after signature, length and type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))
    return path


def test_image_above_the_pixel_limit_is_refused_from_its_header(tmp_path):
    huge = _png_claiming(tmp_path / "huge.png", 8000, 6000)
    with pytest.raises(ImageReadError, match=r"huge\.png is 8000×6000 \(48\.0 megapixels\), above the limit of "
                                             r"40 megapixels; shrink it or remove it"):
        load_image(huge)


@pytest.mark.parametrize("side", [10_000, 20_000])  # Pillow warns above ~89 MP, fails above ~179 MP
def test_pillow_decompression_bomb_alarms_name_the_file(tmp_path, side):
    bomb = _png_claiming(tmp_path / "bomb.png", side, side)
    with pytest.raises(ImageReadError, match=r"bomb\.png is refused as a possible decompression bomb"):
        load_image(bomb)


# ---------------------------------------------------------------- deep grey images

@pytest.mark.parametrize("dtype, suffix", [("<u2", "png"), (">u2", "tif"), ("<i4", "tif")])
def test_sixteen_bit_grey_is_scaled_not_clipped_to_white(tmp_path, dtype, suffix):
    values = np.array([[0, 257 * 10, 32896, 65535]], dtype=dtype)
    path = tmp_path / f"deep.{suffix}"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode in ("I;16", "I;16B", "I")
    rgb = load_image(path)
    assert rgb.mode == "RGB" and [rgb.getpixel((x, 0)) for x in range(4)] == [(0,) * 3, (10,) * 3, (128,) * 3,
                                                                               (255,) * 3]


def test_float_grey_in_unit_range_is_scaled_and_other_ranges_refused(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "unit.tif")
    rgb = load_image(tmp_path / "unit.tif")
    assert [rgb.getpixel((x, 0)) for x in range(3)] == [(0,) * 3, (128,) * 3, (255,) * 3]
    Image.fromarray(np.array([[0.0, 3.0]], dtype=np.float32)).save(tmp_path / "wide.tif")
    with pytest.raises(ImageReadError, match=r"wide\.tif holds floating-point pixels spanning \[0, 3\], not \[0, 1\]"):
        load_image(tmp_path / "wide.tif")


def test_32_bit_integers_beyond_16_bits_are_refused(tmp_path):
    Image.fromarray(np.array([[0, 100_000]], dtype=np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(ImageReadError, match=r"wide\.tif holds 32-bit integer pixels spanning \[0, 100000\], outside "
                                             r"the 16-bit range"):
        load_image(tmp_path / "wide.tif")


# ---------------------------------------------------------------- what stays accepted

@pytest.mark.parametrize("mode, colour, rgb", [("CMYK", (0, 255, 255, 0), (255, 0, 0)), ("1", 1, (255, 255, 255)),
                                               ("LA", (128, 255), (128, 128, 128)), ("RGBA", (0, 0, 255, 255),
                                                                                       (0, 0, 255))])
def test_other_colour_modes_load_as_rgb(tmp_path, mode, colour, rgb):
    path = tmp_path / f"mode.{'jpg' if mode == 'CMYK' else 'png'}"
    Image.new(mode, (3, 2), colour).save(path, **({"quality": 100} if mode == "CMYK" else {}))
    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == (3, 2)
    assert all(abs(a - b) <= 2 for a, b in zip(loaded.getpixel((1, 1)), rgb))


def test_palette_images_load_with_their_colours(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putdata([0, 1])
    image.save(tmp_path / "palette.png")
    loaded = load_image(tmp_path / "palette.png")
    assert [loaded.getpixel((x, 0)) for x in range(2)] == [(10, 20, 30), (200, 100, 50)]


def test_a_36_megapixel_image_is_below_the_limit_and_loads(tmp_path):
    Image.new("RGB", (6000, 6000), (1, 2, 3)).save(tmp_path / "big.png")
    loaded = load_image(tmp_path / "big.png")
    assert loaded.size == (6000, 6000) and loaded.getpixel((5999, 5999)) == (1, 2, 3)
