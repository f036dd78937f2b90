"""Evaluation and coresets on a slice of the real Tux Paint data with the real offline encoders (32 px): the three
protocols, reproducibility, the PNG + JSON round trip, cross-architecture students, full data, coreset methods,
and refused inputs."""
import json
import re
from pathlib import Path

import pytest
import torch

import coreset
import evaluate
from artefacts.distilled import DistilledSetError, load_distilled, renormalised, save_distilled
from artefacts.export import export_distilled
from common.config import save_config
from common.errors import InputError
from data.annotations import AnnotationError
from evaluation import entries
from evaluation.students import PROTOCOLS, scorer, select, summarise, train_students
from methods import coresets
from methods.coresets import herding, k_center
from training.context import RunContext
from training.experts import expert_students, run_buffer
from training.trajectories import expert_path


def _quiet(_msg):
    pass


@pytest.fixture(scope="module")
def cfg(slice_config, tmp_path_factory):
    """The demo config on the slice: one expert × 2 epochs; students: 2 × 2 epochs, scored every epoch."""
    cfg = slice_config("buffer.yaml", tmp_path_factory.mktemp("eval_buffer") / "buffer")
    cfg["evaluate"].update(students=2, epochs=2, checkpoint_every=1)
    run_buffer(cfg, log=_quiet)
    return cfg


@pytest.fixture(scope="module")
def cfg_file(cfg, tmp_path_factory):
    path = tmp_path_factory.mktemp("eval_cfg") / "cfg.yaml"
    save_config(cfg, path)
    return path


@pytest.fixture(scope="module")
def random_set(cfg_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("sets") / "random_5.safetensors"
    coreset.main(["--config", str(cfg_file), "--method", "random", "--budget", "5", "--out", str(path)])
    return path


def _recall(mean):
    return {"ir@1": mean, "tr@1": mean, "mean": mean}


def _entry(result):
    return {k: result[k] for k in ("protocols", "epochs")}


# ---- the protocols ---------------------------------------------------------------------------------------------

def test_val_selection_picks_the_best_epoch_on_val_not_on_test():
    curve = {"epochs": [0, 10, 20, 30], "val": [_recall(v) for v in (1.0, 9.0, 4.0, 9.0)],
             "test": [_recall(v) for v in (2.0, 5.0, 8.0, 3.0)]}
    picks = select(curve)
    assert picks["val-selected"] == (10, curve["test"][1])   # val best at 10 (tie with 30: the earlier one)
    assert picks["as published"] == (20, curve["test"][2])   # test best at 20
    assert picks["last epoch"] == (30, curve["test"][3])
    other = {**curve, "val": [_recall(v) for v in (1.0, 2.0, 3.0, 0.5)]}
    summary = summarise([curve, other])
    assert summary["epochs"] == {"last epoch": [30, 30], "val-selected": [10, 20], "as published": [20, 20]}
    assert summary["protocols"]["val-selected"]["mean"] == pytest.approx((6.5, 2.1213203))
    assert summary["protocols"]["as published"]["mean"] == (8.0, 0.0)


def test_scoring_a_student_does_not_change_its_training(cfg):
    ctx = RunContext(cfg, splits=("train", "val", "test"), log=_quiet)
    dset = load_distilled(_make_random(ctx, 6))
    curve, record = scorer(ctx, ("val",))
    (a,) = train_students(ctx, dset, cfg["evaluate"], [1], on_checkpoint=lambda _k, e, s: record(e, s))
    (b,) = train_students(ctx, dset, cfg["evaluate"], [1])
    assert curve["epochs"] == [0, 1, 2] and len(curve["val"]) == 3
    for tower in ("image", "text"):
        assert torch.equal(a.flatten()[tower], b.flatten()[tower])


@pytest.mark.parametrize("loss", ["infonce", "wbce"])
def test_students_trained_together_match_students_trained_one_at_a_time(cfg, loss):
    """Without dropout (the one random draw that differs), stacking is only a different way to compute; with the
    LoRS loss too (wbce, under vmap)."""
    cfg = {**cfg, "model": {**cfg["model"], "text_dropout": 0.0}}
    ctx = RunContext(cfg, splits=("train",), log=_quiet)
    dset = load_distilled(_make_random(ctx, 6))
    dset.meta["loss"] = loss
    ecfg = {**cfg["evaluate"], "batch_size": 4}  # two batches an epoch, each student in its own order
    together = train_students(ctx, dset, ecfg, [0, 1])
    for seed, student in zip([0, 1], together):
        (alone,) = train_students(ctx, dset, ecfg, [seed])
        for tower in ("image", "text"):
            moved = (alone.flatten()[tower] - ctx.new_student(seed).flatten()[tower]).abs().max().item()
            diff = (student.flatten()[tower] - alone.flatten()[tower]).abs().max().item()
            assert diff < 1e-4 < moved / 50, (seed, tower, diff, moved)  # float noise (grouped convolutions)


def _make_random(ctx, n, path=None):
    from artefacts.pairs import random_pairs, real_pairs
    path = path or Path(ctx.cfg["buffer"]["out_dir"]).parent / f"random_{n}.safetensors"
    save_distilled(path, real_pairs(ctx.splits["train"], ctx.features["train"], ctx.test_transform,
                                    random_pairs(ctx.splits["train"], n, 0),
                                    {**ctx.artefact_identity(), "method": "random", "budget": n}))
    return path


def test_a_distillations_starting_point_and_bf16_are_labelled_as_such(random_set):
    dset = load_distilled(random_set)
    dset.meta.update(method="lors", metagrad="exact", budget=6)
    assert entries.describe(dset, "x")["model"] == "lors · exact (5 pairs)"
    dset.meta["config"] = {"distill": {"precision": "bf16"}}  # a set distilled in bf16 is labelled as such
    assert entries.describe(dset, "x")["model"] == "lors · exact, bf16 (5 pairs)"
    dset.meta["config"] = {"distill": {"precision": "fp32"}}
    dset.meta["iteration"] = 0
    described = entries.describe(dset, "x")
    assert described["model"] == "lors at iteration 0 (5 pairs)" and described["metagrad"] == "iteration 0"
    assert described["budget"] == 6 and described["pairs"] == 5
    dset.meta["config"]["distill"]["init"] = "kmeans"  # a start other than random real pairs is named, iteration 0 too
    assert entries.describe(dset, "x")["model"] == "lors at iteration 0, kmeans init (5 pairs)"
    del dset.meta["iteration"]
    assert entries.describe(dset, "x")["model"] == "lors · exact, kmeans init (5 pairs)"


def test_lr_grid_chooses_on_val_only_for_sets_without_a_learned_lr(cfg_file, random_set, tmp_path):
    """Each grid lr really trains its students (the curves differ); the chosen lr is the one best on val,
    which the label and the JSON say; a distilled set keeps its learned lr."""
    grid = ["--evaluate.lr_grid", "[0.001, 0.3]", "--evaluate.students", "1"]
    (entry,) = evaluate.main(["--config", str(cfg_file), "--distilled", str(random_set),
                              "--out", str(tmp_path / "grid.json"), *grid])
    val_best = {float(lr): score for lr, score in entry["lr_grid"].items()}
    assert set(val_best) == {0.001, 0.3} and val_best[0.001] != val_best[0.3]
    assert float(entry["lr"]) == max(val_best, key=val_best.get)
    assert entry["model"] == f"random (5 pairs), lr {entry['lr']} chosen on val"
    assert max(r["mean"] for r in entry["curves"][0]["val"]) == pytest.approx(val_best[float(entry["lr"])], abs=0.01)
    learned = load_distilled(random_set)
    learned.lrs = {"image": 0.05, "text": 0.05}
    learned.meta["iteration"] = 3
    save_distilled(tmp_path / "learned.safetensors", learned)
    (kept,) = evaluate.main(["--config", str(cfg_file), "--distilled", str(tmp_path / "learned.safetensors"),
                             "--out", str(tmp_path / "learned.json"), *grid])
    assert "lr" not in kept and "chosen on val" not in kept["model"]
    (per_tower,) = evaluate.main(["--config", str(cfg_file), "--distilled", str(random_set), "--out",
                                  str(tmp_path / "tower.json"), "--evaluate.lr_grid", "[{image: 0.001, text: 0.3}]",
                                  "--evaluate.students", "1"])
    assert per_tower["lr"] == "0.001 / 0.3" and set(per_tower["lr_grid"]) == {"0.001 / 0.3"}


# ---- evaluate.py ---------------------------------------------------------------------------------------------

def test_the_same_artefact_twice_gives_the_same_numbers_and_writes_json_md_png(cfg_file, random_set, tmp_path,
                                                                                capsys):
    first = evaluate.main(["--config", str(cfg_file), "--distilled", str(random_set), "--out", str(tmp_path / "a.json")])
    said = capsys.readouterr().out  # the slice's 8-image val and test splits are named as too small to say much
    assert "warning: the val split has only 8 images" in said and "warning: the test split has only 8 images" in said
    assert re.search(r"^student 1 of random \(5 pairs\): val mean recall [0-9.]+, test mean recall", said, re.M)
    assert re.fullmatch(r"random \(5 pairs\), lr [0-9.]+ / [0-9.]+", first[0]["model"])  # at what lr, unchosen
    again = evaluate.main(["--config", str(cfg_file), "--distilled", str(random_set), "--out", str(tmp_path / "b.json")])
    assert [_entry(e) for e in first] == [_entry(e) for e in again]
    entry = first[0]
    assert entry["method"] == "random" and entry["budget"] == 5 and entry["pairs"] == 5 and entry["students"] == 2
    assert set(entry["protocols"]) == set(PROTOCOLS)
    assert [c["epochs"] for c in entry["curves"]] == [[0, 1, 2]] * 2
    for curve in entry["curves"]:  # "last epoch" is each student's final test score
        assert curve["test"][-1]["mean"] in [c["test"][-1]["mean"] for c in entry["curves"]]
    assert entry["protocols"]["last epoch"]["mean"][0] == pytest.approx(
        sum(c["test"][-1]["mean"] for c in entry["curves"]) / 2)
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["dataset"] == "tuxslice" and saved["config"]["evaluate"]["epochs"] == 2
    assert saved["results"][0]["protocols"] == json.loads(json.dumps(entry["protocols"]))
    markdown = (tmp_path / "a.md").read_text()
    assert [line for line in markdown.splitlines() if line.startswith("## ")] == [
        "## last epoch", "## val-selected",
        "## as published (checkpoint chosen on test: for comparison with the LoRS tables only)"]
    assert "| random (5 pairs), lr 0.1 / 0.1, 2 students |" in markdown
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_exported_folder_evaluates_like_its_artefact(cfg, cfg_file, random_set, tmp_path):
    ctx = RunContext(cfg, splits=("val", "test"), log=_quiet)
    original = load_distilled(random_set)
    export_distilled(original, tmp_path / "export")
    imported = entries.load_set(ctx, tmp_path / "export")
    assert torch.equal(imported.images, original.images)
    assert torch.allclose(imported.text_features, original.text_features, atol=1e-5)
    assert imported.meta["method"] == "random" and imported.similarity.kind == "identity"
    from_folder = evaluate.main(["--config", str(cfg_file), "--distilled", str(tmp_path / "export"),
                                 "--out", str(tmp_path / "f.json")])
    from_file = evaluate.main(["--config", str(cfg_file), "--distilled", str(random_set),
                               "--out", str(tmp_path / "a.json")])
    assert _entry(from_folder[0]) == _entry(from_file[0])


def test_a_folder_naming_a_missing_image_is_refused(cfg_file, random_set, tmp_path):
    export_distilled(load_distilled(random_set), tmp_path / "export")
    (tmp_path / "export" / "images" / "0003.png").unlink()
    with pytest.raises(AnnotationError, match=r"missing under .*export/images, e\.g\. .*0003\.png"):
        evaluate.main(["--config", str(cfg_file), "--distilled", str(tmp_path / "export")])
    assert not (tmp_path / "export" / "images" / "0003.png").exists()


def test_an_artefact_of_another_encoder_or_image_size_is_refused(cfg_file, random_set, tmp_path):
    dset = load_distilled(random_set)
    foreign = tmp_path / "foreign.safetensors"
    dset.meta["image_encoder"] = "nfnet_l0"
    save_distilled(foreign, dset)
    before = foreign.read_bytes()
    with pytest.raises(DistilledSetError, match="image_encoder = nfnet_l0, but this run uses tf_efficientnet_lite0"):
        evaluate.main(["--config", str(cfg_file), "--distilled", str(foreign), "--out", str(tmp_path / "r.json")])
    with pytest.raises(DistilledSetError, match="image_size = 32, but this run uses 64"):
        evaluate.main(["--config", str(cfg_file), "--distilled", str(random_set), "--data.image_size", "64",
                       "--out", str(tmp_path / "r.json")])
    assert foreign.read_bytes() == before and not (tmp_path / "r.json").exists()


def test_cross_architecture_students_train_on_renormalised_pixels(cfg_file, random_set, tmp_path):
    dset = load_distilled(random_set)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    moved = renormalised(dset, mean, std)
    pixels = lambda d: d.images * torch.tensor(d.meta["std"]).view(1, 3, 1, 1) + torch.tensor(  # noqa: E731
        d.meta["mean"]).view(1, 3, 1, 1)
    assert torch.allclose(pixels(moved), pixels(dset), atol=1e-6) and moved.meta["mean"] == list(mean)
    assert not torch.allclose(moved.images, dset.images)
    entries = evaluate.main(["--config", str(cfg_file), "--distilled", str(random_set), "--student-image-encoder",
                             "nf_resnet50", "--evaluate.students", "1", "--out", str(tmp_path / "x.json")])
    assert entries[0]["student_image_encoder"] == "nf_resnet50"
    assert entries[0]["model"] == "random (5 pairs), lr 0.1 / 0.1 → nf_resnet50 student"
    assert 0.0 <= entries[0]["protocols"]["val-selected"]["mean"][0] <= 100.0


def test_full_data_is_scored_after_every_epoch(cfg_file, tmp_path):
    entries = evaluate.main(["--config", str(cfg_file), "--full-data", "--out", str(tmp_path / "full.json")])
    entry = entries[0]
    assert entry["method"] == "full data" and entry["budget"] is None and entry["students"] == 1
    assert entry["curves"][0]["epochs"] == [0, 1, 2]
    last = entry["curves"][0]["test"][-1]
    assert entry["protocols"]["last epoch"] == {k: (v, 0.0) for k, v in last.items()}


# ---- coreset.py ----------------------------------------------------------------------------------------------

def test_coresets_are_real_pairs_chosen_by_their_method(cfg, cfg_file, tmp_path):
    ctx = RunContext(cfg, splits=("train",), log=_quiet)
    students, _ = expert_students(ctx, expert_path(cfg["buffer"]["out_dir"], 0), [2])
    (_, student), = students
    features = coresets.joint_embeddings(ctx, student)
    assert features.shape == (len(ctx.splits["train"].captions), 2 * student.image.out_dim)
    expected = {"herding": herding(features, 6), "k-center": k_center(features, 6, 3)}
    for method in ("herding", "k-center", "forgetting"):
        out = tmp_path / f"{method}.safetensors"
        coreset.main(["--config", str(cfg_file), "--method", method, "--budget", "6", "--seed", "3", "--out", str(out)])
        dset = load_distilled(out, ctx.identity())
        assert len(dset) == 6 and dset.lrs is None and dset.similarity.kind == "identity"
        picks = dset.meta["source_captions"]
        assert len(set(picks)) == 6 and dset.meta["method"] == method
        assert torch.equal(dset.text_features, ctx.features["train"][picks])
        if method in expected:
            assert picks == expected[method].tolist() and dset.meta["expert_epoch"] == 2


def test_a_budget_larger_than_the_pool_is_refused(cfg_file, tmp_path):
    for method in ("random", "herding"):
        with pytest.raises(InputError, match=r"--budget 1000: the training split has \d+ pairs; choose 1 to"):
            coreset.main(["--config", str(cfg_file), "--method", method, "--budget", "1000",
                          "--out", str(tmp_path / "c.safetensors")])
    assert not (tmp_path / "c.safetensors").exists()
