import json

import pytest

from data.annotations import AnnotationError, preprocess_caption, read_split


def test_caption_preprocessing():
    assert preprocess_caption('A Dog. Runs!  "fast" (really)*#:;~ ok') == "a dog runs fast really ok"
    assert preprocess_caption("  Tabs\tand\nnewlines  ") == "tabs and newlines"
    assert preprocess_caption(" ".join(f"w{i}" for i in range(40))) == " ".join(f"w{i}" for i in range(30))
    assert preprocess_caption("one two three", max_words=2) == "one two"
    assert preprocess_caption("commas, and-hyphens stay") == "commas, and-hyphens stay"


def _blip(root):
    return {s: str(root / f"blip_{s}.json") for s in ("train", "val", "test")}


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_both_formats_give_the_same_split(handmade, split):
    karpathy = read_split(handmade / "karpathy.json", split, handmade / "img", "toy")
    blip = read_split(_blip(handmade), split, handmade / "img", "toy")
    assert karpathy.image_paths == blip.image_paths
    assert karpathy.captions == blip.captions
    assert karpathy.caption_image == blip.caption_image
    assert karpathy.fingerprint == blip.fingerprint


def test_train_view_includes_restval_and_maps_both_ways(handmade):
    train = read_split(handmade / "karpathy.json", "train", handmade / "img", "toy")
    assert [p.rsplit("/", 1)[1] for p in train.image_paths] == ["a.png", "b.png", "c.png"]
    assert train.captions == ("a dog runs", "the dog running", "a red big ball",
                              "two cats sleeping", "cats", "a cat pair")
    assert train.caption_image == (0, 0, 1, 2, 2, 2)
    assert train.image_captions == [[0, 1], [2], [3, 4, 5]]


def test_filepath_is_joined_to_the_image_root(tmp_path):
    from conftest import write_images
    write_images(tmp_path / "img" / "val2014", ["x.jpg"])
    ann = {"images": [{"filepath": "val2014", "filename": "x.jpg", "split": "test", "sentences": [{"raw": "X"}]}]}
    (tmp_path / "k.json").write_text(json.dumps(ann))
    split = read_split(tmp_path / "k.json", "test", tmp_path / "img", "toy")
    assert split.image_paths == (str(tmp_path / "img" / "val2014" / "x.jpg"),)


def test_invalid_json_names_the_file(handmade):
    bad = handmade / "broken.json"
    bad.write_text('{"images": [')
    with pytest.raises(AnnotationError, match=r"broken\.json is not valid JSON"):
        read_split(bad, "train", handmade / "img", "toy")


def test_missing_keys_name_the_entry_and_the_keys(handmade):
    ann = json.loads((handmade / "karpathy.json").read_text())
    del ann["images"][1]["sentences"]
    (handmade / "k.json").write_text(json.dumps(ann))
    with pytest.raises(AnnotationError, match=r"k\.json: entry 1 lacks key\(s\) sentences"):
        read_split(handmade / "k.json", "train", handmade / "img", "toy")
    (handmade / "b.json").write_text(json.dumps([{"image": "a.png"}]))
    with pytest.raises(AnnotationError, match=r"b\.json: entry 0 lacks key\(s\) caption"):
        read_split({"train": handmade / "b.json"}, "train", handmade / "img", "toy")


def test_image_with_no_captions_is_named(handmade):
    ann = json.loads((handmade / "karpathy.json").read_text())
    ann["images"][1]["sentences"] = []
    (handmade / "k.json").write_text(json.dumps(ann))
    with pytest.raises(AnnotationError, match=r"image b\.png has no captions"):
        read_split(handmade / "k.json", "train", handmade / "img", "toy")


def test_caption_empty_after_preprocessing_is_named(handmade):
    (handmade / "b.json").write_text(json.dumps([{"image": "a.png", "caption": ["ok", " ... "]}]))
    with pytest.raises(AnnotationError, match=r"caption 1 of image a\.png is empty"):
        read_split({"test": handmade / "b.json"}, "test", handmade / "img", "toy")


def test_missing_image_file_is_named_with_what_to_do(handmade):
    (handmade / "img" / "b.png").unlink()
    with pytest.raises(AnnotationError, match=r"1 image\(s\) of split 'train'.*missing.*b\.png.*data\.image_root"):
        read_split(handmade / "karpathy.json", "train", handmade / "img", "toy")


def test_unknown_format_and_empty_split(handmade):
    (handmade / "odd.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(AnnotationError, match="not a known annotation format"):
        read_split(handmade / "odd.json", "train", handmade / "img", "toy")
    (handmade / "none.json").write_text(json.dumps({"images": []}))
    with pytest.raises(AnnotationError, match="no images in split 'test'"):
        read_split(handmade / "none.json", "test", handmade / "img", "toy")
