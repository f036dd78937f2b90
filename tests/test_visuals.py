import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from common.visuals import _font, _wrap, save_grid, save_heatmap, to_uint8

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def normalise(pixels):
    """(N,H,W,3) uint8 -> (N,3,H,W) float32, as the data pipeline does."""
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def solid(n, color, size=8):
    return np.tile(np.array(color, dtype=np.uint8), (n, size, size, 1))


def test_to_uint8_inverts_normalisation_exactly():
    pixels = np.random.default_rng(0).integers(0, 256, size=(4, 5, 7, 3), dtype=np.uint8)
    pixels[0, 0, 0], pixels[0, 0, 1] = (0, 0, 0), (255, 255, 255)
    back = to_uint8(normalise(pixels), MEAN, STD)
    assert back.dtype == np.uint8 and back.shape == pixels.shape
    assert np.array_equal(back, pixels)


def test_to_uint8_clamps_out_of_range_values():
    x = torch.zeros(1, 3, 1, 2)
    x[..., 0], x[..., 1] = -50.0, 50.0
    back = to_uint8(x, MEAN, STD)
    assert back[0, 0, 0].tolist() == [0, 0, 0] and back[0, 0, 1].tolist() == [255, 255, 255]


def test_to_uint8_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(N,3,H,W\)"):
        to_uint8(torch.zeros(2, 4, 4, 3), MEAN, STD)


def test_grid_is_a_png_that_grows_with_rows_and_shows_the_images(tmp_path):
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    save_grid(small, solid(3, (255, 0, 0)), ["a red square"] * 3, columns=10, tile=32)
    save_grid(big, solid(25, (255, 0, 0)), [f"red {i}" for i in range(25)], columns=10, tile=32)
    with Image.open(small) as a, Image.open(big) as b:
        assert a.format == b.format == "PNG"
        assert b.height > 2.5 * a.height  # 3 rows vs 1
        assert b.width > a.width  # 10 columns vs 3
        px = np.asarray(b.convert("RGB")).reshape(-1, 3)
    red = (px[:, 0] == 255) & (px[:, 1] == 0) & (px[:, 2] == 0)
    assert red.sum() >= 25 * 32 * 32  # every tile fully drawn, resized to tile×tile
    assert (px == 255).all(axis=1).any()  # white background
    assert (px.max(axis=1) < 100).any()  # dark caption text


def test_grid_tiles_have_their_own_colours(tmp_path):
    images = np.concatenate([solid(1, (0, 0, 255)), solid(1, (0, 255, 0))])
    save_grid(tmp_path / "g.png", images, ["blue", "green"], tile=16)
    px = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    left, right = px[:, : px.shape[1] // 2].reshape(-1, 3), px[:, px.shape[1] // 2:].reshape(-1, 3)
    assert (left == [0, 0, 255]).all(axis=1).sum() == 16 * 16 and not (left == [0, 255, 0]).all(axis=1).any()
    assert (right == [0, 255, 0]).all(axis=1).sum() == 16 * 16


def test_long_captions_wrap_to_three_lines_within_the_tile():
    font = _font()
    lines = _wrap("a very long caption " * 20 + "Supercalifragilisticexpialidocious" * 3, font, 96)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(font.getlength(line) <= 96 for line in lines)
    assert _wrap("short one", font, 96) == ["short one"]
    long_word = _wrap("x" * 200, font, 40, max_lines=100)
    assert len(long_word) > 1 and "".join(long_word) == "x" * 200


def test_grid_caption_count_must_match_and_nothing_is_written(tmp_path):
    path = tmp_path / "grid.png"
    with pytest.raises(ValueError, match=r"3 images but 2 captions"):
        save_grid(path, solid(3, (1, 2, 3)), ["a", "b"])
    assert list(tmp_path.iterdir()) == []


def test_heatmap_is_a_readable_png(tmp_path):
    path = tmp_path / "s.png"
    save_heatmap(path, torch.eye(50) + 0.01 * torch.randn(50, 50), "learned similarity")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 100 and img.height > 100
        assert len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)) > 20  # not blank


def test_failed_heatmap_keeps_the_old_file_and_leaves_no_temporaries(tmp_path):
    path = tmp_path / "s.png"
    path.write_bytes(b"previous")
    with pytest.raises(ValueError, match="2-D"):
        save_heatmap(path, torch.zeros(2, 3, 4), "bad")
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]


def half_write(self, fp, *args, **kw):
    with open(fp, "wb") as f:
        f.write(b"\x89PNG half")
    raise OSError("disk full")


@pytest.mark.parametrize("which", ["grid", "heatmap"])
def test_crash_while_writing_keeps_the_old_file(tmp_path, monkeypatch, which):
    path = tmp_path / "out.png"
    path.write_bytes(b"previous")
    if which == "grid":
        monkeypatch.setattr(Image.Image, "save", half_write)
        write = lambda: save_grid(path, solid(2, (9, 9, 9)), ["a", "b"])  # noqa: E731
    else:
        monkeypatch.setattr(Figure, "savefig", half_write)
        write = lambda: save_heatmap(path, torch.eye(3), "s")  # noqa: E731
    with pytest.raises(OSError, match="disk full"):
        write()
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
