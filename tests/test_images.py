import pytest
import torch
from PIL import Image

from data.images import ImageReadError, build_transform, load_image


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
