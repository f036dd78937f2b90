"""Distillation end to end on a slice of the real Tux Paint data with the real offline encoders (32 px):
a killed run resumes to the very same set, the three methods, refused inputs, the artefact, evaluation."""
import copy
import functools
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open

import methods.matching as matching
from artefacts.distilled import FORMAT, DistilledSetError, load_distilled, save_distilled
from artefacts.export import export_distilled
from common.config import ConfigError
from common.visuals import to_uint8
from conftest import distill_config as distill_cfg
from conftest import file_digests, killed_at
from data.annotations import load_split, preprocess_caption, read_split
from methods.loop import Distillation
from methods.matching import initial_set
from methods.registry import resolve_method
from training.context import RunContext
from training.trajectories import TrajectoryError, expert_path

ROOT = Path(__file__).resolve().parents[1]
TUXPAINT = ROOT / "datasets" / "tuxpaint"


def _quiet(_msg):
    pass


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _temporaries(folder):
    return sorted(p.name for p in Path(folder).rglob("*.tmp"))


@pytest.fixture(scope="module")
def base_cfg(distill_base):
    return distill_base


@pytest.fixture(scope="module")
def ctx(base_cfg):
    return RunContext(base_cfg, splits=("train",), log=_quiet)


@pytest.fixture(scope="module")
def lors_run(base_cfg, ctx, tmp_path_factory):
    """LoRS (exact meta-gradient), 4 iterations without interruption: (cfg, out_dir, the returned set)."""
    cfg = distill_cfg(base_cfg, tmp_path_factory.mktemp("lors") / "A")
    dset = Distillation.from_context(ctx, cfg, log=_quiet).run()
    return cfg, Path(cfg["distill"]["out_dir"]), dset


def _assert_same_final(a, b):
    """Two distilled.safetensors files hold the same tensors (bit for bit), lrs, losses and metadata."""
    ta, tb = _tensors(a), _tensors(b)
    assert sorted(ta) == sorted(tb)
    for name in ta:
        assert torch.equal(ta[name], tb[name]), name
    da, db = load_distilled(a), load_distilled(b)
    assert da.lrs == db.lrs
    assert da.meta["losses"] == db.meta["losses"] and len(da.meta["losses"]) == da.meta["iteration"]
    strip = lambda m: {k: v for k, v in m.items() if k != "config"}  # noqa: E731  (configs differ in out_dir)
    assert strip(da.meta) == strip(db.meta)


# ---- 1. a killed run resumes to the same result ----------------------------------------------------------

def test_killed_run_resumes_to_the_uninterrupted_result(base_cfg, lors_run, tmp_path, monkeypatch):
    _, out_a, _ = lors_run
    cfg = distill_cfg(base_cfg, tmp_path / "B")
    out_b = tmp_path / "B"
    with killed_at(3):
        Distillation.from_context(RunContext(cfg, splits=("train",), log=_quiet), cfg, log=_quiet).run()
    checkpoint = out_b / "checkpoint.safetensors"
    saved, extras = load_distilled(checkpoint, with_extras=True)
    assert saved.meta["iteration"] == 2 and len(saved.meta["losses"]) == 2
    assert {"sampler_rng", "momentum_images", "momentum_lr_text"} <= set(extras)
    assert not (out_b / "distilled.safetensors").exists() and (out_b / "grid_00002.png").is_file()
    assert _temporaries(out_b) == []
    stale = out_b / ".checkpoint.safetensors.abc.tmp"
    stale.write_bytes(b"half-written by a killed process")
    pictures = {name: (out_b / name).read_bytes() for name in ("grid_00002.png", "similarity_00002.png")}
    for name in pictures:  # as if killed after the checkpoint was written, before its pictures were
        (out_b / name).unlink()

    steps, logged, real_step = [], [], Distillation.step

    def counted(self, iteration):
        steps.append(iteration)
        return real_step(self, iteration)

    monkeypatch.setattr(Distillation, "step", counted)
    Distillation.from_context(RunContext(cfg, splits=("train",), log=_quiet), cfg, log=logged.append).run()
    assert steps == [2, 3]  # resumed, not redone from the start
    assert any("at iteration 2" in line for line in logged)
    assert {name: (out_b / name).read_bytes() for name in pictures} == pictures  # redrawn, the same bytes
    _assert_same_final(out_a / "distilled.safetensors", out_b / "distilled.safetensors")
    assert saved.meta["losses"] == load_distilled(out_a / "distilled.safetensors").meta["losses"][:2]
    # the final checkpoints (set, momenta, sampler state) agree as well
    assert load_distilled(checkpoint).meta["iteration"] == 4
    ca, cb = _tensors(out_a / "checkpoint.safetensors"), _tensors(checkpoint)
    assert sorted(ca) == sorted(cb) and all(torch.equal(ca[k], cb[k]) for k in ca)
    assert _temporaries(out_b) == []


def test_a_rerun_and_a_resumed_run_write_the_same_bytes(base_cfg, ctx, tmp_path):
    """Artefacts can be checked by their hash: a run, and the same run into the same folder killed and resumed,
    give set and checkpoint files with one sha256 each (no timing or per-process order in them)."""
    cfg = distill_cfg(base_cfg, tmp_path / "run", iterations=2, checkpoint_every=1)
    files = ("distilled.safetensors", "checkpoint.safetensors")

    def hashes():
        return [hashlib.sha256((tmp_path / "run" / name).read_bytes()).hexdigest() for name in files]

    Distillation.from_context(ctx, cfg, log=_quiet).run()
    first = hashes()
    shutil.rmtree(tmp_path / "run")  # the second run, into the same folder, is killed and resumed on the way
    with killed_at(1):
        Distillation.from_context(ctx, cfg, log=_quiet).run()
    Distillation.from_context(ctx, cfg, log=_quiet).run()
    assert hashes() == first


def test_set_returned_after_resume_describes_the_finished_run(base_cfg, ctx, tmp_path):
    out = tmp_path / "run"
    Distillation.from_context(ctx, distill_cfg(base_cfg, out, iterations=1, checkpoint_every=1), log=_quiet).run()
    returned = Distillation.from_context(ctx, distill_cfg(base_cfg, out, iterations=2, checkpoint_every=1),
                                      log=_quiet).run()
    assert load_distilled(out / "distilled.safetensors").meta["iteration"] == 2
    assert returned.meta.get("iteration", 2) == 2  # an uninterrupted run's set has no "iteration" at all


# ---- 2. the three methods --------------------------------------------------------------------------------

@pytest.mark.parametrize("method, metagrad, kind, loss, reserve", [
    ("mtt-vl", None, "identity", "infonce", 0),
    ("tesla-vl", None, "identity", "infonce", 0),
    ("lors", "exact", "lowrank", "wbce", 1),
])
def test_methods_learn_their_kind_of_set(base_cfg, ctx, tmp_path, method, metagrad, kind, loss, reserve):
    cfg = distill_cfg(base_cfg, tmp_path / method, method=method, metagrad=metagrad, iterations=2)
    dset = Distillation.from_context(ctx, cfg, log=_quiet).run()
    out = tmp_path / method
    saved = load_distilled(out / "distilled.safetensors", ctx.identity())
    n = cfg["distill"]["budget"] - reserve
    expected_metagrad = {"mtt-vl": "unroll", "tesla-vl": "tesla", "lors": "exact"}[method]
    for d in (dset, saved):
        assert len(d) == n == d.similarity.n == d.text_features.shape[0]
        assert d.images.shape == (n, 3, 32, 32)
        assert d.similarity.kind == kind
        assert (d.meta["method"], d.meta["loss"], d.meta["metagrad"]) == (method, loss, expected_metagrad)
        assert len(d.meta["captions"]) == n and set(d.meta["captions"]) <= set(ctx.splits["train"].captions)
    assert saved.meta["iteration"] == 2 and len(saved.meta["losses"]) == 2
    assert all(np.isfinite(saved.meta["losses"]))
    start = initial_set(ctx, resolve_method(cfg["distill"]), n)  # iteration 0: real pairs
    assert torch.equal(start.images, initial_set(ctx, resolve_method(cfg["distill"]), n).images)
    assert not torch.equal(saved.images, start.images)
    assert not torch.equal(saved.text_features, start.text_features)
    assert saved.lrs != start.lrs and all(v > 0 for v in saved.lrs.values())
    if kind == "lowrank":
        assert not torch.allclose(saved.similarity.matrix(), torch.eye(n))  # S was learned
    assert (out / "grid_00002.png").is_file() and (out / "checkpoint.safetensors").is_file()
    assert (out / "similarity_00002.png").is_file() == (kind != "identity")
    assert _temporaries(out) == []


# ---- 3. bad input: a clear error, nothing overwritten --------------------------------------------------------

def test_empty_buffer_is_refused(base_cfg, ctx, tmp_path):
    cfg = distill_cfg(base_cfg, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    cfg["buffer"]["out_dir"] = str(tmp_path / "empty")
    with pytest.raises(TrajectoryError, match="no expert files"):
        Distillation.from_context(ctx, cfg, log=_quiet)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_damaged_expert_file_is_named(base_cfg, ctx, tmp_path, damage):
    buffer = tmp_path / "buffer"
    buffer.mkdir()
    for index in (0, 1):
        expert_path(buffer, index).write_bytes(expert_path(base_cfg["buffer"]["out_dir"], index).read_bytes())
    whole = expert_path(buffer, 1).read_bytes()
    expert_path(buffer, 1).write_bytes(b"" if damage == "empty" else whole[:len(whole) // 2])
    cfg = distill_cfg(base_cfg, tmp_path / "out")
    cfg["buffer"]["out_dir"] = str(buffer)
    with pytest.raises(TrajectoryError, match=r"expert_001\.safetensors is unreadable"):
        Distillation.from_context(ctx, cfg, log=_quiet)
    assert not (tmp_path / "out").exists()


def test_buffer_of_another_image_size_is_refused(base_cfg, tmp_path):
    cfg = distill_cfg(base_cfg, tmp_path / "out")
    cfg["data"]["image_size"] = 64
    message = r"expert_000\.safetensors was made with image_size = 32, but this run uses 64"
    with pytest.raises(TrajectoryError, match=message):
        Distillation.from_context(RunContext(cfg, splits=("train",), log=_quiet), cfg, log=_quiet)
    assert not (tmp_path / "out").exists()


def test_budget_larger_than_the_training_split_is_refused(base_cfg, ctx, tmp_path):
    cfg = distill_cfg(base_cfg, tmp_path / "out", budget=10000)
    available = len(ctx.splits["train"].captions)
    message = rf"9999 synthetic pairs \(lors\), but the training split has {available} pairs"
    with pytest.raises(ValueError, match=message):
        Distillation.from_context(ctx, cfg, log=_quiet)
    assert not (tmp_path / "out").exists()


def test_nan_stops_the_run_and_writes_nothing(base_cfg, ctx, lors_run, tmp_path, monkeypatch):
    out = tmp_path / "nan"
    Distillation.from_context(ctx, distill_cfg(base_cfg, out, iterations=2), log=_quiet).run()
    before = file_digests(out)
    assert {"checkpoint.safetensors", "distilled.safetensors", "grid_00002.png"} <= set(before)

    real = matching.meta_gradient
    calls = []

    def nan_on_second_call(*args, **kwargs):
        loss, syn_grads, lr_grads = real(*args, **kwargs)
        calls.append(loss.item())
        return (loss * float("nan") if len(calls) == 2 else loss), syn_grads, lr_grads

    monkeypatch.setattr(matching, "meta_gradient", nan_on_second_call)
    longer = distill_cfg(base_cfg, out, iterations=4)
    # resumed at 2: iteration 2 goes through (not a checkpoint), iteration 3 (0-based) gets the NaN
    with pytest.raises(FloatingPointError, match=r"distillation iteration 3: the matching loss is nan; nothing was "
                                                 r"written after the last checkpoint"):
        Distillation.from_context(ctx, longer, log=_quiet).run()
    assert len(calls) == 2
    after = file_digests(out)
    assert after == before  # checkpoint, config, first run's distilled set and pictures untouched, nothing new
    assert _temporaries(out) == []

    monkeypatch.setattr(matching, "meta_gradient", real)  # the same command, once the cause is gone
    Distillation.from_context(ctx, longer, log=_quiet).run()
    _assert_same_final(lors_run[1] / "distilled.safetensors", out / "distilled.safetensors")


@pytest.mark.parametrize("key, value", [("syn_steps", 3), ("lr_teacher", 0.2), ("precision", "bf16")])
def test_resume_with_other_settings_is_refused_but_more_iterations_extend(base_cfg, ctx, tmp_path, key, value):
    out = tmp_path / "run"
    first = Distillation.from_context(ctx, distill_cfg(base_cfg, out, iterations=2), log=_quiet).run()
    before = file_digests(out)
    with pytest.raises(ValueError, match=rf"holds a run with other settings \(distill\.{key} differ\)"):
        Distillation.from_context(ctx, distill_cfg(base_cfg, out, iterations=3, **{key: value}), log=_quiet).run()
    assert file_digests(out) == before  # config.yaml included

    logged = []
    Distillation.from_context(ctx, distill_cfg(base_cfg, out, iterations=3), log=logged.append).run()
    assert any("at iteration 2" in line for line in logged)
    extended = load_distilled(out / "distilled.safetensors")
    assert extended.meta["iteration"] == 3 and len(extended.meta["losses"]) == 3
    assert extended.meta["losses"][:2] == load_distilled(out / "checkpoint.safetensors").meta["losses"][:2]
    assert not torch.equal(extended.images, first.images)


def test_a_run_resumes_with_activation_checkpointing_switched_on(base_cfg, ctx, lors_run, tmp_path):
    out = tmp_path / "run"
    Distillation.from_context(ctx, distill_cfg(base_cfg, out, iterations=2), log=_quiet).run()
    resumed = Distillation.from_context(ctx, distill_cfg(base_cfg, out, iterations=4, checkpoint_activations=True),
                                     log=_quiet)
    assert isinstance(resumed.method.student.image.backbone.blocks[0][0].forward, functools.partial)  # it is on
    final = resumed.run()
    _, _, uninterrupted = lors_run  # checkpointing off throughout
    assert torch.allclose(final.images, uninterrupted.images, atol=1e-5)
    assert final.lrs == pytest.approx(uninterrupted.lrs, rel=1e-5)


def test_load_distilled_refuses_other_identity_and_damage(lors_run, ctx, tmp_path):
    _, out, _ = lors_run
    path = out / "distilled.safetensors"
    assert len(load_distilled(path, ctx.identity())) == 5
    assert len(load_distilled(path, {**ctx.identity(), "dataset": "coco"})) == 5  # a set from another dataset is fine
    with pytest.raises(DistilledSetError, match="was made with image_size = 32, but this run uses 64"):
        load_distilled(path, {**ctx.identity(), "image_size": 64})
    whole = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DistilledSetError, match=r"cut\.safetensors is unreadable .*truncated or damaged"):
        load_distilled(tmp_path / "cut.safetensors", ctx.identity())
    with pytest.raises(DistilledSetError, match="not found"):
        load_distilled(tmp_path / "missing.safetensors")
    assert _digest(path) == hashlib.sha256(whole).hexdigest()


# ---- 4. the artefact ------------------------------------------------------------------------------------------

def test_artefact_round_trip_and_export(lors_run, ctx, tmp_path):
    _, _, dset = lors_run
    path = tmp_path / "copy.safetensors"
    save_distilled(path, dset)
    back = load_distilled(path, ctx.identity())
    assert torch.equal(back.images, dset.images) and torch.equal(back.text_features, dset.text_features)
    assert sorted(back.similarity.params) == ["sim_diag", "sim_left", "sim_right"]
    for name, tensor in dset.similarity.params.items():
        assert torch.equal(back.similarity.params[name], tensor)
    assert back.similarity.spec() == dset.similarity.spec()
    assert torch.equal(back.similarity.matrix(), dset.similarity.matrix())
    assert back.lrs == dset.lrs and isinstance(back.lrs["image"], float)
    assert back.meta == {**dset.meta, "format": FORMAT}

    folder = tmp_path / "export"
    export_distilled(dset, folder)
    pngs = sorted((folder / "images").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:04d}.png" for i in range(len(dset))]
    expected = to_uint8(dset.images, dset.meta["mean"], dset.meta["std"])
    for i, png in enumerate(pngs):
        assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), expected[i])
    assert _temporaries(folder) == []
    data_cfg = {"name": "exported", "annotations": str(folder / "dataset.json"), "image_root": str(folder / "images")}
    for split in (load_split(data_cfg, "train"), read_split(folder / "dataset.json", "train", folder / "images", "x")):
        assert len(split.image_paths) == len(dset) == len(split.captions)
        assert list(split.captions) == [preprocess_caption(c) for c in dset.meta["captions"]]
        assert list(split.caption_image) == list(range(len(dset)))
    source = json.loads((folder / "dataset.json").read_text())["source"]
    assert source["method"] == "lors" and source["image_size"] == 32

    no_captions = copy.copy(dset)
    no_captions.meta = {k: v for k, v in dset.meta.items() if k != "captions"}
    with pytest.raises(DistilledSetError, match="no caption per pair"):
        export_distilled(no_captions, tmp_path / "none")


# ---- 5. periodic evaluation ----------------------------------------------------------------------------------

def test_periodic_evaluation_logs_val_recall(base_cfg, ctx, tmp_path):
    cfg = distill_cfg(base_cfg, tmp_path / "run", iterations=2, eval_every=2, eval_students=2)
    with pytest.raises(ValueError, match="evaluates on the val split"):
        Distillation.from_context(ctx, cfg, log=_quiet)  # ctx has no val split
    logged = []
    Distillation.from_context(RunContext(base_cfg, splits=("train", "val"), log=_quiet), cfg, log=logged.append).run()
    lines = [line for line in logged if "val mean recall" in line]
    assert len(lines) == 1 and lines[0].startswith("iteration 2: ") and "(2 students)" in lines[0]
    assert 0.0 <= float(lines[0].split("val mean recall ")[1].split()[0]) <= 100.0


def test_student_lrs_start_per_tower_when_lr_teacher_names_them(base_cfg, ctx, tmp_path):
    cfg = distill_cfg(base_cfg, tmp_path / "run", iterations=0, lr_teacher={"image": 0.01, "text": 0.2})
    assert Distillation.from_context(ctx, cfg, log=_quiet).run().lrs == pytest.approx({"image": 0.01, "text": 0.2})
    with pytest.raises(ConfigError, match=r"distill.lr_teacher must be a number > 0, or \{image: …, text: …\}"):
        Distillation.from_context(ctx, distill_cfg(base_cfg, tmp_path / "bad", lr_teacher={"image": 0.1}), log=_quiet)


def test_tensorboard_logs_of_a_distillation_and_its_evaluation(base_cfg, tmp_path):
    """log.tensorboard end to end: distill.py logs each iteration's matching loss (the losses the set records),
    lrs and gradient norms, the grid and S heat map at each checkpoint, val recall every eval_every; evaluate.py the
    students' curves its JSON holds. Read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import evaluate

    def read(folder):
        run = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
        run.Reload()
        return ({t: [(e.step, e.value) for e in run.Scalars(t)] for t in run.Tags()["scalars"]},
                {t: [e.step for e in run.Images(t)] for t in run.Tags()["images"]})

    board = tmp_path / "tb"
    cfg = distill_cfg(base_cfg, tmp_path / "run", eval_every=2, eval_students=1)
    cfg["log"] = {"tensorboard": str(board)}
    dset = Distillation.from_context(RunContext(cfg, splits=("train", "val"), log=_quiet), cfg, log=_quiet).run()
    scalars, images = read(board / "run")
    f32 = lambda x: float(np.float32(x))  # noqa: E731  (events store float32)
    losses = load_distilled(tmp_path / "run" / "distilled.safetensors").meta["losses"]
    assert scalars["loss/matching"] == [(i + 1, f32(v)) for i, v in enumerate(losses)]
    assert [s for s, _ in scalars["lr/image"]] == [1, 2, 3, 4] and scalars["lr/image"][-1][1] == f32(dset.lrs["image"])
    assert {"grad_norm/images", "grad_norm/texts", "grad_norm/lr_image", "similarity/diag_mean"} <= set(scalars)
    assert [s for s, _ in scalars["recall_val/mean"]] == [2, 4]
    assert images == {"checkpoint/grid": [2, 4], "checkpoint/similarity": [2, 4]}

    cfg_file = tmp_path / "eval.yaml"
    cfg_file.write_text(yaml.safe_dump({**cfg, "evaluate": {**cfg["evaluate"], "checkpoint_every": 1}}))
    (entry,) = evaluate.main(["--config", str(cfg_file), "--distilled", str(tmp_path / "run" / "distilled.safetensors"),
                              "--out", str(tmp_path / "scores.json")])
    (run,) = (board / "eval" / "scores").iterdir()
    scalars, _ = read(run)
    curve = entry["curves"][0]
    assert scalars["recall_test/mean"] == [(e, f32(r["mean"])) for e, r in zip(curve["epochs"], curve["test"])]
    assert [s for s, _ in scalars["recall_val/tr@1"]] == curve["epochs"] == [0, 1, 2]
