import numpy as np
import pytest
import torch
from PIL import Image

from data.images import ImageReadError, RandomAugment, build_transform, load_image


def test_corrupt_image_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(ImageReadError, match=r"broken\.jpg cannot be decoded.*remove it from the annotations"):
        load_image(bad)


def test_truncated_image_is_named(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (64, 64), (10, 200, 30)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageReadError, match=r"cut\.png cannot be decoded"):
        load_image(cut)


def test_missing_image_is_named(tmp_path):
    with pytest.raises(ImageReadError, match=r"nothere\.png not found"):
        load_image(tmp_path / "nothere.png")


def test_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (255, 0, 0, 255))
    img.save(tmp_path / "stamp.png")
    rgb = load_image(tmp_path / "stamp.png")
    assert rgb.mode == "RGB"
    assert rgb.getpixel((0, 0)) == (255, 255, 255) and rgb.getpixel((1, 0)) == (255, 0, 0)


def test_test_transform_resizes_and_normalises_with_the_given_constants():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    x = build_transform(8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))(img)
    assert x.shape == (3, 8, 8)
    assert torch.allclose(x[0], torch.ones(8, 8)) and torch.allclose(x[1], torch.full((8, 8), -2.0))


def test_train_transform_is_random_but_seeded():
    img = Image.effect_noise((48, 48), 64).convert("RGB")
    t = build_transform(16, (0.5,) * 3, (0.5,) * 3, train=True, randaugment=True)
    torch.manual_seed(1)
    a = t(img)
    torch.manual_seed(1)
    b = t(img)
    torch.manual_seed(2)
    c = t(img)
    assert a.shape == (3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)


def _striped(size=20):
    """An image whose every column has its own colour (so a shift is visible)."""
    img = Image.new("RGB", (size, size))
    img.putdata([(10 * x % 256, 200, 40) for y in range(size) for x in range(size)])
    return img


def test_randomaugment_translation_moves_by_five_pixels_and_fills_grey():
    img = _striped()
    out = np.asarray(RandomAugment(level=5).apply("translate_x", img))
    src = np.asarray(img)
    grey = (out == 128).all(axis=2).all(axis=0)  # columns that are all fill
    assert grey.sum() == 5 and (grey[:5].all() or grey[-5:].all())
    kept = out[:, 5:] if grey[:5].all() else out[:, :-5]
    assert np.array_equal(kept, src[:, :-5] if grey[:5].all() else src[:, 5:])


def test_randomaugment_shear_keeps_the_top_row_and_level_five_enhancements_are_identities():
    img = _striped()
    augment = RandomAugment(level=5)
    sheared = np.asarray(augment.apply("shear_x", img))
    assert np.array_equal(sheared[0], np.asarray(img)[0]) and not np.array_equal(sheared, np.asarray(img))
    for name in ("brightness", "sharpness", "identity"):
        assert np.array_equal(np.asarray(augment.apply(name, img)), np.asarray(img))


def test_randomaugment_applies_each_of_two_draws_with_probability_one_half():
    img, augment, unchanged = _striped(), RandomAugment(num_ops=2, level=5), 0
    torch.manual_seed(0)
    for _ in range(400):
        unchanged += np.array_equal(np.asarray(augment(img)), np.asarray(img))
    # unchanged: both skipped (¼) or only no-op ops drawn (identity, brightness, sharpness: 3 of 10) ≈ 0.4
    expected = sum(p_skip * p_noop for p_skip, p_noop in ((0.25, 1), (0.5, 0.3), (0.25, 0.09)))
    assert abs(unchanged / 400 - expected) < 0.08
