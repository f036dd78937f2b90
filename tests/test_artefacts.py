"""Artefact hygiene: a damaged or inconsistent distilled set or expert file is refused with a message naming the
file and what is wrong; an export never half-writes, never mixes old and new images, never clobbers a foreign
folder unasked."""
import hashlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import artefacts.export as export_cli
from artefacts.distilled import DistilledSet, DistilledSetError, load_distilled, save_distilled
from artefacts.export import export_distilled
from artefacts.folder import EXPORT_FORMAT
from common.cli import run
from common.errors import OutputError
from common.visuals import to_uint8
from conftest import ROOT, file_digests, run_tool
from training.experts import ExpertPool
from training.similarity import Similarity
from training.trajectories import TrajectoryError, buffer_stats, expert_path, load_expert, read_snapshots, save_expert

SIZE, WIDTH = 8, 6


def _set(n=4, seed=0, similarity=None, texts=None, lrs=None, **meta):
    """A tiny consistent set of `n` pairs; keyword arguments replace parts of it to make it inconsistent."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, SIZE, SIZE, generator=gen)
    texts = torch.randn(n, WIDTH, generator=gen) if texts is None else texts
    base = {"method": "lors", "image_size": SIZE, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
            "captions": [f"pair {seed}-{i}" for i in range(n)]}
    return DistilledSet(images, texts, similarity or Similarity("identity", n),
                        lrs if lrs is not None else {"image": 0.1, "text": 0.01}, {**base, **meta})


def _saved(tmp_path, dset, name="set.safetensors"):
    path = tmp_path / name
    save_distilled(path, dset)
    return path


def _refused(path, match, **kwargs):
    before = file_digests(path.parent)
    with pytest.raises(DistilledSetError, match=match):
        load_distilled(path, **kwargs)
    assert file_digests(path.parent) == before


# ---- reading a distilled set ------------------------------------------------------------------------------------

def test_a_consistent_set_loads_with_every_check(tmp_path):
    dset = _set(similarity=Similarity("lowrank", 4, rank=2, generator=torch.Generator().manual_seed(1)))
    back = load_distilled(_saved(tmp_path, dset), {"image_size": SIZE}, keys=("image_size",), text_dim=WIDTH)
    assert torch.equal(back.images, dset.images) and back.lrs == dset.lrs
    assert torch.equal(back.similarity.matrix(), dset.similarity.matrix())


def test_more_text_features_than_images_is_refused(tmp_path):
    path = _saved(tmp_path, _set(texts=torch.randn(5, WIDTH)))
    _refused(path, r"set\.safetensors: text_features has 5 rows but images has 4; the file is inconsistent "
                   r"\(re-export or re-run the distillation\)")


def test_images_that_are_not_n_3_s_s_are_refused(tmp_path):
    dset = _set()
    dset.images = dset.images[:, :1]
    _refused(_saved(tmp_path, dset), r"images has shape \(4, 1, 8, 8\), not \(N, 3, S, S\)")


def test_images_of_another_size_than_the_run_or_the_metadata_are_refused(tmp_path):
    _refused(_saved(tmp_path, _set()), r"images are 8×8 pixels, but this run uses image_size 16",
             identity={"image_size": 16}, keys=())
    _refused(_saved(tmp_path, _set(image_size=16), "meta.safetensors"),
             r"meta\.safetensors: images are 8×8 pixels but its metadata says image_size 16")


def test_text_features_of_another_width_than_the_evaluators_are_refused(tmp_path):
    _refused(_saved(tmp_path, _set()), r"text_features are 6-d, but this run's text encoder gives 7-d", text_dim=7)


def test_a_similarity_that_does_not_fit_the_set_is_refused(tmp_path):
    _refused(_saved(tmp_path, _set(similarity=Similarity("full", 5))),
             r"its similarity is for 5 pairs but images has 4")
    crooked = Similarity("lowrank", 4, rank=2, params={"sim_diag": torch.ones(4), "sim_left": torch.ones(4, 3),
                                                         "sim_right": torch.zeros(4, 3)})
    _refused(_saved(tmp_path, _set(similarity=crooked), "rank.safetensors"), r"lowrank similarity has factors .*"
                                                                             r"expected .*'sim_left': \(4, 2\)")


@pytest.mark.parametrize("name, value", [("images", float("nan")), ("text_features", float("inf")),
                                         ("sim_left", float("nan"))])
def test_non_finite_tensors_are_refused_by_name(tmp_path, name, value):
    dset = _set(similarity=Similarity("lowrank", 4, rank=2))
    tensor = {"images": dset.images, "text_features": dset.text_features, **dset.similarity.params}[name]
    tensor.view(-1)[3] = value
    _refused(_saved(tmp_path, dset), rf"set\.safetensors: {name} holds NaN or Inf values")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_set_of_another_float_type_is_refused_by_name(tmp_path, dtype):
    """Training computes in fp32: a float64 set used to pass the checks and fail inside the students."""
    dset = _set()
    dset.images = dset.images.to(dtype)
    _refused(_saved(tmp_path, dset), rf"images is {str(dtype)[6:]}, not float32; the file is inconsistent")


@pytest.mark.parametrize("change, match", [
    ({"lrs": {"image": -0.1, "text": 0.01}}, r"lrs is .*, not null or \{image: η > 0, text: η > 0\}"),
    ({"lrs": {"image": 0.1}}, r"lrs is \{'image': 0\.1\}"),
    ({"captions": ["a", "b", "c"]}, r"captions has 3 entries but images has 4"),
    ({"captions": [1, 2, 3, 4]}, r"captions is not a list of strings"),
    ({"mean": [0.5, 0.5]}, r"mean is \[0\.5, 0\.5\], not a list of 3 numbers"),
    ({"std": "imagenet"}, r"std is 'imagenet', not a list of 3 numbers"),
    ({"std": [0.25, 0.0, 0.25]}, r"every channel's std must be > 0"),
], ids=["negative-lr", "missing-lr", "caption-count", "caption-type", "short-mean", "std-text", "zero-std"])
def test_malformed_metadata_is_refused(tmp_path, change, match):
    _refused(_saved(tmp_path, _set(**change)), match + ".*the file is inconsistent")


# ---- export -----------------------------------------------------------------------------------------------------

def _pngs(folder):
    return sorted(p.name for p in (folder / "images").iterdir())


def _assert_export_of(dset, folder):
    assert _pngs(folder) == [f"{i:04d}.png" for i in range(len(dset))]
    expected = to_uint8(dset.images, dset.meta["mean"], dset.meta["std"])
    for i, name in enumerate(_pngs(folder)):
        assert np.array_equal(np.asarray(Image.open(folder / "images" / name).convert("RGB")), expected[i])
    written = json.loads((folder / "dataset.json").read_text())
    assert written["format"] == EXPORT_FORMAT
    assert [e["sentences"][0]["raw"] for e in written["images"]] == dset.meta["captions"]
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []  # no build folder left


def test_a_good_set_exports_and_re_exports_leave_exactly_the_new_images(tmp_path):
    folder = tmp_path / "export"
    export_distilled(_set(n=6), folder)
    _assert_export_of(_set(n=6), folder)
    smaller = _set(n=3, seed=1)
    export_distilled(smaller, folder)
    _assert_export_of(smaller, folder)


def test_export_refuses_non_finite_pixels_before_writing(tmp_path):
    folder = tmp_path / "export"
    export_distilled(_set(), folder)
    before = file_digests(tmp_path)
    broken = _set(seed=1)
    broken.images[2, 0, 0, 0] = float("nan")
    for target in (folder, tmp_path / "new"):
        with pytest.raises(DistilledSetError, match=r"cannot export to .*: the set's images hold NaN or Inf"):
            export_distilled(broken, target)
    assert file_digests(tmp_path) == before and not (tmp_path / "new").exists()


def _foreign_folder(tmp_path):
    folder = tmp_path / "theirs"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "zebra.png").write_bytes(b"not ours")
    (folder / "dataset.json").write_text(json.dumps({"images": []}))
    (folder / "notes.txt").write_text("keep me")
    return folder


def test_export_refuses_a_foreign_non_empty_folder_unless_overwrite(tmp_path):
    folder = _foreign_folder(tmp_path)
    before = file_digests(folder)
    with pytest.raises(DistilledSetError, match=r"export folder .*theirs is not empty \(dataset\.json, images, "
                                                r"notes\.txt\) and is not a previous export; .*--overwrite"):
        export_distilled(_set(), folder)
    assert file_digests(folder) == before
    export_distilled(_set(), folder, overwrite=True)
    _assert_export_of(_set(), folder)
    assert (folder / "notes.txt").read_text() == "keep me"
    with pytest.raises(OutputError, match=r"export folder .*notes\.txt is a file, not a folder"):
        export_distilled(_set(), folder / "notes.txt", overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me"


def test_a_failed_export_leaves_the_previous_one_intact(tmp_path, monkeypatch):
    folder = tmp_path / "export"
    export_distilled(_set(), folder)
    before = file_digests(tmp_path)
    saves, real_save = [], Image.Image.save

    def failing_save(image, *args, **kwargs):
        saves.append(1)
        if len(saves) == 3:
            raise OSError("disk full")
        return real_save(image, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        export_distilled(_set(n=5, seed=1), folder)
    assert file_digests(tmp_path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["export"]


def test_the_export_command_refuses_and_overwrites(tmp_path, capsys):
    path = _saved(tmp_path, _set())
    folder = _foreign_folder(tmp_path)
    before = file_digests(folder)
    with pytest.raises(SystemExit) as exit_info:
        run(export_cli.main, [str(path), str(folder)])
    assert exit_info.value.code == 2
    assert re.match(r"^error: export folder .*theirs is not empty .*--overwrite", capsys.readouterr().err)
    assert file_digests(folder) == before
    export_cli.main([str(path), str(folder), "--overwrite"])
    assert "4 pairs exported to" in capsys.readouterr().out
    _assert_export_of(_set(), folder)


def test_the_export_command_refuses_a_damaged_set(tmp_path, capsys):
    dset = _set()
    dset.images[0, 0, 0, 0] = float("inf")
    path = _saved(tmp_path, dset)
    with pytest.raises(SystemExit) as exit_info:
        run(export_cli.main, [str(path), str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert re.match(r"^error: distilled set .*set\.safetensors: images holds NaN or Inf", capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


# ---- expert trajectories ----------------------------------------------------------------------------------------

def test_a_non_finite_expert_file_is_named(tmp_path):
    thetas = {"image": [torch.full((5,), float(e)) for e in range(4)], "text": [torch.zeros(3) for _ in range(4)]}
    thetas["image"][2][1] = float("nan")
    path = expert_path(tmp_path, 0)
    save_expert(path, thetas, {})
    assert read_snapshots(path, [0, 3])["image"][:, 0].tolist() == [0.0, 3.0]  # the epochs read are clean
    diverged = r"expert_000\.safetensors holds non-finite values in the image tower at epoch 2; .*retrain it"
    with pytest.raises(TrajectoryError, match=diverged):
        read_snapshots(path, [1, 2])
    with pytest.raises(TrajectoryError, match=diverged):
        ExpertPool(tmp_path, {}, {}, last_epoch=3).segment(0, 0, 2, "cpu")
    with pytest.raises(TrajectoryError, match=r"holds epochs 0\.\.3, not epoch 4"):
        read_snapshots(path, [0, 4])
    # every other reader refuses it too: the whole-file reader (coresets, RepBlend) and the buffer diagnostic
    with pytest.raises(TrajectoryError, match=diverged):
        load_expert(path)
    save_expert(expert_path(tmp_path, 1), {k: [t.nan_to_num() for t in v] for k, v in thetas.items()}, {})
    with pytest.raises(TrajectoryError, match=diverged):
        buffer_stats(tmp_path)
    result = run_tool("-m", "training.trajectories", tmp_path)
    assert result.returncode == 2 and "holds non-finite values" in result.stderr and "static" not in result.stdout


def test_one_set_saved_in_three_processes_has_one_sha256(tmp_path):
    """safetensors orders metadata keys per process; save_tensors sorts them, so a set can be checked by its hash
    (without the sort, three processes gave three hashes)."""
    code = ("import sys, torch\nfrom common.io import save_tensors, read_tensor_file\n"
            "t = {f't{i}': torch.arange(i + 3, dtype=torch.float32) for i in range(6)}\n"
            "meta = {f'k{i}': {'v': i, 'text': 'é/\"q\"'} for i in range(12)}\n"
            "save_tensors(sys.argv[1], t, meta)\nassert read_tensor_file(sys.argv[1])[0] == meta\n")
    hashes = set()
    for i in range(3):
        path = tmp_path / f"set_{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, check=True)
        hashes.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(hashes) == 1
