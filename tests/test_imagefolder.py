"""The Hugging Face `imagefolder` export (`python -m artefacts.export FILE OUT --format imagefolder`): the real
`datasets` library loads it offline; its card names what the set is and its measured recall; `read_folder` (what
evaluate.py calls for a folder) gives back the set as distilled, or the encoded captions when it must; the export
refuses what the Karpathy export refuses."""
import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import artefacts.export as export_cli
from artefacts.distilled import DistilledSet, DistilledSetError, load_distilled, renormalised, save_distilled
from artefacts.export import export_distilled, read_folder
from artefacts.folder import EXPORT_FORMAT
from artefacts.imagefolder import card, export_imagefolder
from common.cli import run
from common.io import read_tensor_file
from common.visuals import to_uint8
from conftest import file_digests
from data.annotations import preprocess_caption
from training.context import RunContext
from training.metrics import format_table
from training.similarity import Similarity

# 8-bit PNGs hold each pixel to within half a step of 1/255; 1/255 (in [0, 1] pixel units) leaves room for rounding
PIXEL_TOLERANCE = 1 / 255
WRITES = ["README.md", "features.safetensors", "images", "metadata.jsonl"]


def _set(n=4, seed=0, size=8, width=6, mean=(0.4, 0.45, 0.5), std=(0.2, 0.25, 0.3), **meta):
    """A learned-looking set: pixels inside [0, 1] (so the PNGs clip nothing), a low-rank S with both factors
    non-zero, learned lrs."""
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.rand(n, 3, size, size, generator=gen)
    shape = (1, 3, 1, 1)
    images = (pixels - torch.tensor(mean).view(shape)) / torch.tensor(std).view(shape)
    sim = Similarity("lowrank", n, rank=2, alpha=0.5, generator=gen)
    sim.params["sim_right"] = torch.randn(n, 2, generator=gen)
    base = {"method": "lors", "metagrad": "tesla", "budget": n, "dataset": "tuxslice", "loss": "infonce",
            "image_encoder": "tf_efficientnet_lite0", "image_weights": "1111aaaa", "text_encoder": "all-MiniLM-L6-v2",
            "text_weights": "2222bbbb", "image_size": size, "mean": list(mean), "std": list(std),
            "captions": [f"A red ball number {i}." for i in range(n)]}
    return DistilledSet(images, torch.randn(n, width, generator=gen), sim, {"image": 0.0125, "text": 0.25},
                        {**base, **meta})


def _pixels(dset):
    """The set's images in [0, 1] pixel units."""
    shape = (1, 3, 1, 1)
    return dset.images * torch.tensor(dset.meta["std"]).view(shape) + torch.tensor(dset.meta["mean"]).view(shape)


def _export(tmp_path, dset, *args, name="out"):
    path = tmp_path / "set.safetensors"
    save_distilled(path, dset)
    export_cli.main([str(path), str(tmp_path / name), "--format", "imagefolder", *args])
    return path, tmp_path / name


def _front_matter(text):
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


# ---- 1. the real `datasets` library loads it ----------------------------------------------------------------------

def test_datasets_loads_the_export_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError as err:
        pytest.fail(f"the Hugging Face `datasets` library is not installed ({err}): run "
                    f"`pip install -r requirements-extras.txt` (make test does)")
    dset = _set(n=5)
    _, out = _export(tmp_path, dset)
    expected = to_uint8(dset.images, dset.meta["mean"], dset.meta["std"])
    # as documented for local folders, and through the card's `configs` (how the Hub loads the uploaded folder)
    for loaded in (datasets.load_dataset("imagefolder", data_dir=str(out), split="train",
                                         cache_dir=str(tmp_path / "hf-cache")),
                   datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "hf-cache-card"))):
        assert loaded.num_rows == 5 and loaded.column_names == ["image", "caption", "pair_index"]
        assert sorted(loaded["pair_index"]) == [0, 1, 2, 3, 4]
        for row in loaded:
            i = row["pair_index"]
            assert row["caption"] == dset.meta["captions"][i]
            pixels = np.asarray(row["image"].convert("RGB"))
            assert np.array_equal(pixels, np.asarray(Image.open(out / "images" / f"{i:04d}.png").convert("RGB")))
            assert np.array_equal(pixels, expected[i])


# ---- 2. the dataset card ----------------------------------------------------------------------------------------

def _recall(base):
    return {k: [base + offset, 1.5] for offset, k in enumerate(("ir@1", "ir@5", "ir@10", "tr@1", "tr@5", "tr@10"))} \
        | {"mean": [base + 2.5, 0.5]}


def test_the_card_names_the_set_its_files_and_its_measured_recall(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # evaluate.py records the paths it was given: here, relative ones
    dset = _set()
    save_distilled(tmp_path / "set.safetensors", dset)
    ours = {"last epoch": _recall(31.0), "val-selected": _recall(33.0)}
    results = {"dataset": "tuxslice", "split": "test", "config": {"evaluate": {"epochs": 100}},
               "results": [{"model": "other", "source": "other.safetensors", "students": 5,
                            "protocols": {"last epoch": _recall(90.0)}},
                           {"model": "lors (4 pairs)", "source": "./set.safetensors", "students": 2,
                            "protocols": ours}]}
    (tmp_path / "results.json").write_text(json.dumps(results))
    export_cli.main(["set.safetensors", "out", "--format", "imagefolder", "--evaluation", "results.json"])
    text = (tmp_path / "out" / "README.md").read_text()
    front = _front_matter(text)
    assert front["license"] == "unknown" and front["size_categories"] == ["n<1K"]
    assert front["task_categories"] == ["image-to-text", "text-to-image"]
    assert front["configs"] == [{"config_name": "default",
                                 "data_files": [{"split": "train", "path": ["metadata.jsonl", "images/*.png"]}]}]
    for line in ["| method | `lors` (tesla) |", "| budget | 4 pairs |",
                 "| distilled from | tuxslice, file `set.safetensors` |",
                 "| image encoder | `tf_efficientnet_lite0`, weights `1111aaaa`, 8×8 pixels, normalised with mean "
                 "[0.4, 0.45, 0.5] and std [0.2, 0.25, 0.3] |",
                 "| text encoder | `all-MiniLM-L6-v2`, weights `2222bbbb` |",
                 "| learned learning rates | image 0.0125, text 0.25 |",
                 "| text features | `text_features` (4×6) in `features.safetensors` |"]:
        assert line in text.splitlines()
    assert re.search(r"\| similarity matrix S \| low rank 2, α 0\.5: .*`sim_diag`.*`sim_left`.*`sim_right`.* in "
                     r"`features\.safetensors`", text)
    assert "from `results.json` written by evaluate.py" in text
    assert "over 2 students, each trained on this set for 100 epochs, at the set's learned lrs" in text  # how measured
    assert "| licence | `unknown`, the source data's: the images and captions derive from tuxslice |" in text
    assert format_table(list(ours.items())) in text  # this set's recall, not the other set's
    assert "| last epoch | 31.0 ± 1.5 | 32.0 ± 1.5 | 33.0 ± 1.5 | 34.0 ± 1.5 | 35.0 ± 1.5 | 36.0 ± 1.5 | " \
           "33.5 ± 0.5 |" in text and "90.0" not in text
    coreset = DistilledSet(dset.images, dset.text_features, Similarity("identity", 4), None,
                           {**dset.meta, "method": "random"})
    plain = card(coreset)
    assert _front_matter(card(replace(coreset, meta={**coreset.meta, "dataset": "tuxpaint"})))["license"] == "gpl-2.0"
    assert _front_matter(card(coreset, license="cc-by-4.0"))["license"] == "cc-by-4.0"  # own data: --license
    assert "| learned learning rates | none |" in plain and "| similarity matrix S | S = I (not learned" in plain
    assert "Not measured for this card (export with `--evaluation RESULTS.json`" in plain


def test_an_evaluation_without_this_set_is_refused_before_writing(tmp_path, capsys):
    path = tmp_path / "set.safetensors"
    save_distilled(path, _set())
    (tmp_path / "results.json").write_text(json.dumps({"results": [{"source": "elsewhere.safetensors"}]}))
    (tmp_path / "broken.json").write_text("{")
    for evaluation, message in (("results.json", r"results\.json holds no result for .*set\.safetensors \(its "
                                                 r"sets: elsewhere\.safetensors\); run evaluate\.py --distilled"),
                                ("broken.json", r"broken\.json cannot be read as JSON")):
        with pytest.raises(SystemExit) as exit_info:
            run(export_cli.main, [str(path), str(tmp_path / "out"), "--format", "imagefolder",
                                 "--evaluation", str(tmp_path / evaluation)])
        assert exit_info.value.code == 2
        assert re.match(r"^error: --evaluation .*" + message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


# ---- 3. read back as evaluate.py does ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ctx(slice_config, tmp_path_factory):
    cfg = slice_config("buffer.yaml", tmp_path_factory.mktemp("imagefolder") / "buffer")
    cfg["data"]["image_size"] = 32
    return RunContext(cfg, splits=(), log=lambda _msg: None)


def _read(ctx, folder):
    """What evaluate.py's load_set does with a folder."""
    return read_folder(folder, ctx.text_encoder, ctx.test_transform, ctx.artefact_identity())


def _set_for(ctx, **meta):
    """A set distilled for this run's encoders and image size, in another pixel normalisation than the run's."""
    identity = {k: ctx.artefact_identity()[k] for k in export_cli.IDENTITY_KEYS}
    return _set(n=6, size=32, width=ctx.text_encoder.hidden_size, **{**identity, **meta})


def test_the_export_reads_back_as_the_artefact_evaluates(ctx, tmp_path):
    dset = _set_for(ctx)
    path, out = _export(tmp_path, dset)
    artefact = renormalised(load_distilled(path, ctx.identity(), text_dim=ctx.text_encoder.hidden_size),
                            ctx.mean, ctx.std)
    back = _read(ctx, out)
    assert back.meta["text_features"] == "learned (features.safetensors)"
    assert (back.meta["mean"], back.meta["std"]) == (list(ctx.mean), list(ctx.std))
    assert (_pixels(back) - _pixels(artefact)).abs().max() <= PIXEL_TOLERANCE
    assert (_pixels(back) - _pixels(dset)).abs().max() <= PIXEL_TOLERANCE
    assert torch.equal(back.text_features, dset.text_features)
    assert back.similarity.spec() == dset.similarity.spec()
    assert back.similarity.params.keys() == dset.similarity.params.keys()
    assert all(torch.equal(back.similarity.params[k], v) for k, v in dset.similarity.params.items())
    assert torch.equal(back.similarity.matrix(), artefact.similarity.matrix())
    assert back.lrs == dset.lrs == artefact.lrs
    assert {k: back.meta[k] for k in ("method", "metagrad", "budget", "loss", "dataset")} == \
        {"method": "lors", "metagrad": "tesla", "budget": 6, "loss": "infonce", "dataset": "tuxslice"}
    assert back.meta["captions"] == [preprocess_caption(c) for c in dset.meta["captions"]]
    stored, _ = read_tensor_file(out / "features.safetensors")
    assert stored["format"] == EXPORT_FORMAT and "captions" not in stored and stored["lrs"] == dset.lrs


def test_without_matching_features_the_captions_are_encoded(ctx, tmp_path):
    other = _set_for(ctx, text_weights="0000ffff")
    _, out = _export(tmp_path, other, name="other")
    encoded = ctx.text_encoder.encode([preprocess_caption(c) for c in other.meta["captions"]], progress=False)
    encoder = ctx.artefact_identity()["text_encoder"]
    for folder, reason in ((out, f"features.safetensors is for text encoder {encoder} (weights 0000ffff), this run "
                                 f"has {encoder} (weights {ctx.text_encoder.weights_hash})"),
                           (None, "no features.safetensors")):
        if folder is None:
            (out / "features.safetensors").unlink()
            folder = out
        back = _read(ctx, folder)
        assert back.meta["text_features"] == f"encoded captions ({reason})"
        assert torch.allclose(back.text_features, encoded, atol=1e-6)
        assert back.similarity.kind == "identity" and back.lrs is None and len(back) == 6
        assert (_pixels(back) - _pixels(other)).abs().max() <= PIXEL_TOLERANCE


@pytest.mark.parametrize("edit, index, image", [
    (lambda rows: (rows[0].update(pair_index=1), rows[1].update(pair_index=0)), 0, "images/0001.png"),
    (lambda rows: rows[1].update(file_name="images/0000.png"), 1, "images/0000.png"),
], ids=["swapped-pair-index", "two-rows-one-file"])
def test_rows_re_paired_with_other_features_are_refused(ctx, tmp_path, edit, index, image):
    """features.safetensors records each exported image's sha256: an edited metadata.jsonl cannot pair an image
    with another pair's text features and be evaluated."""
    _, out = _export(tmp_path, _set_for(ctx))
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    edit(rows)
    (out / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DistilledSetError, match=rf"metadata\.jsonl: the row with pair_index {index} names "
                                                rf"{image}, which is not the image exported as pair {index}"):
        _read(ctx, out)


# ---- 4. refusals and re-exports ---------------------------------------------------------------------------------

def _foreign_folder(tmp_path):
    folder = tmp_path / "theirs"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "zebra.png").write_bytes(b"not ours")
    (folder / "README.md").write_text("# their card")
    (folder / "notes.txt").write_text("keep me")
    return folder


def test_a_foreign_folder_is_refused_unless_overwrite(tmp_path, capsys):
    path = tmp_path / "set.safetensors"
    save_distilled(path, _set())
    folder = _foreign_folder(tmp_path)
    before = file_digests(folder)
    with pytest.raises(SystemExit) as exit_info:
        run(export_cli.main, [str(path), str(folder), "--format", "imagefolder"])
    assert exit_info.value.code == 2
    assert re.match(r"^error: export folder .*theirs is not empty \(README\.md, images, notes\.txt\) and is not a "
                    r"previous export; .*--overwrite .* to replace its images/, metadata\.jsonl, README\.md and "
                    r"features\.safetensors", capsys.readouterr().err)
    assert file_digests(folder) == before
    export_cli.main([str(path), str(folder), "--format", "imagefolder", "--overwrite"])
    assert "4 pairs exported to" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == sorted(WRITES + ["notes.txt"])
    assert sorted(p.name for p in (folder / "images").iterdir()) == [f"{i:04d}.png" for i in range(4)]
    assert (folder / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no build folder left


def test_a_bad_format_or_a_card_without_one_is_refused(tmp_path, capsys):
    path = tmp_path / "set.safetensors"
    save_distilled(path, _set())
    for args, message in ((["--format", "parquet"], r"argument --format: invalid choice: 'parquet' \(choose from "
                                                     r"'?karpathy'?, '?imagefolder'?\)"),
                          (["--evaluation", "r.json"], r"--evaluation and --license go into the dataset card, "
                                                       r"which only --format imagefolder writes"),
                          (["--license", "mit"], r"--evaluation and --license go into the dataset card")):
        with pytest.raises(SystemExit) as exit_info:
            run(export_cli.main, [str(path), str(tmp_path / "out"), *args])
        assert exit_info.value.code == 2 and re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_non_finite_pixels_or_a_failed_write_leave_the_previous_export(tmp_path, monkeypatch):
    _, out = _export(tmp_path, _set())
    before = file_digests(tmp_path)
    broken = _set(seed=1)
    broken.images[1, 2, 3, 4] = float("nan")
    with pytest.raises(DistilledSetError, match=r"cannot export to .*out: the set's images hold NaN or Inf"):
        export_imagefolder(broken, out)

    def full_disk(*_args, **_kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("artefacts.imagefolder.save_tensors", full_disk)
    with pytest.raises(OSError, match="disk full"):
        export_imagefolder(_set(n=3, seed=2), out)
    assert file_digests(tmp_path) == before


def test_re_exports_replace_the_other_formats_files(tmp_path):
    folder = tmp_path / "export"
    export_distilled(_set(n=5), folder)
    export_imagefolder(_set(n=3, seed=1), folder)
    assert sorted(p.name for p in folder.iterdir()) == WRITES
    assert len(list((folder / "images").iterdir())) == 3
    export_distilled(_set(n=2, seed=2), folder)
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "images"]
    (folder / "metadata.jsonl").write_text("")
    with pytest.raises(DistilledSetError, match=r"holds both metadata\.jsonl .* and dataset\.json"):
        read_folder(folder, None, None, {})


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows[1].update(pair_index=7),
     r"metadata\.jsonl: pair_index does not number its 3 rows 0\.\.2 once each"),
    (lambda rows: rows[0].update(file_name="../set.safetensors"),
     r"metadata\.jsonl: line 1 has file_name '\.\./set\.safetensors', not a path relative to .*out inside it"),
    (lambda rows: rows[2].update(caption=None), r"metadata\.jsonl: line 3 has caption None, not a string or a list"),
    (lambda rows: rows[2].update(file_name="images/9999.png"),
     r"1 image\(s\) listed in .*metadata\.jsonl are missing, e\.g\. .*9999\.png; export the set again"),
], ids=["pair-index", "outside", "caption", "missing-image"])
def test_a_damaged_metadata_file_is_refused_by_line(tmp_path, edit, message):
    _, out = _export(tmp_path, _set(n=3))
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    edit(rows)
    (out / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(DistilledSetError, match=message):
        read_folder(out, None, None, {})


def test_a_killed_exports_build_folder_is_removed_by_the_next_export(tmp_path):
    stale = tmp_path / ".out.export-k1ll3d"
    (stale / "images").mkdir(parents=True)
    (stale / "images" / "0000.png").write_bytes(b"half-written")
    _, out = _export(tmp_path, _set(n=3))
    assert not stale.exists() and (out / "metadata.jsonl").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "set.safetensors"]
