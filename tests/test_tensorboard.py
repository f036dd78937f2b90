"""log.tensorboard: events written with the real writer, read back offline with TensorBoard's own reader."""
import inspect
import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import common.tensorboard as tb
from common.errors import ToolkitError
from common.visuals import save_grid, save_heatmap
from training.experts import run_buffer
from training.similarity import Similarity
from training.trajectories import expert_files, expert_path, read_metadata

try:  # an optional extra of the toolkit, which `make test` installs: missing, these tests fail rather than skip
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError as err:
    raise ImportError(f"{err}: run `pip install -r requirements-extras.txt` (make test does)") from err

f32 = lambda x: float(np.float32(x))  # noqa: E731  (event files store scalars as float32)


def read_run(folder):
    """{tag: [(step, value)]} of the scalars and {tag: [image event]} of the images in one run folder."""
    run = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    run.Reload()
    tags = run.Tags()
    scalars = {t: [(e.step, e.value) for e in run.Scalars(t)] for t in tags["scalars"]}
    return scalars, {t: run.Images(t) for t in tags["images"]}


def event_files(folder):
    return sorted(Path(folder).rglob("events.out.tfevents.*"))


def on(folder):
    return {"log": {"tensorboard": str(folder)}}


def test_buffer_logs_each_experts_loss_and_recall_as_its_metadata_records(tiny_cfg, tmp_path):
    board = tmp_path / "tb"
    tiny_cfg["log"]["tensorboard"] = str(board)
    run_buffer(tiny_cfg, log=lambda _: None)
    out = Path(tiny_cfg["buffer"]["out_dir"])
    runs = sorted(p.relative_to(board).as_posix() for p in board.glob("*/*") if p.is_dir())
    assert runs == ["buffer/expert_000", "buffer/expert_001"]  # one run folder per expert
    for index in (0, 1):
        meta = read_metadata(expert_path(out, index))
        scalars, images = read_run(board / "buffer" / f"expert_{index:03d}")
        assert not images
        assert scalars["train/loss"] == [(e + 1, f32(v)) for e, v in enumerate(meta["train_loss"])]
        assert set(meta["test_recall"]) == {"0", "1", "2"}  # eval_every 1: epoch 0 too
        for metric in ("mean", "ir@1", "tr@10"):
            assert scalars[f"recall_test/{metric}"] == [(int(e), f32(r[metric]))
                                                        for e, r in sorted(meta["test_recall"].items())]
        assert len(event_files(board / "buffer" / f"expert_{index:03d}")) == 1


def test_distill_iteration_logs_loss_lrs_gradient_norms_and_similarity(tmp_path):
    lrs = {"image": torch.tensor(0.25), "text": torch.tensor(0.5)}
    grads = {"images": torch.tensor([[3.0, 0.0], [0.0, 4.0]]), "texts": torch.zeros(2, 3),
             "sim_full": torch.tensor([[1.0, 2.0], [2.0, 4.0]])}
    similarity = Similarity("full", 2, params={"sim_full": torch.eye(2)})  # its start, not what is logged
    learned = {"images": torch.zeros(2), "sim_full": torch.tensor([[2.0, 1.0], [3.0, 4.0]])}
    with tb.open_log(on(tmp_path), "lors_50") as log:
        log.iteration(1, 0.75, lrs, grads, similarity, learned)
        log.iteration(2, 0.5, lrs, grads, Similarity("identity", 2))  # nothing learned: no S statistics
    scalars, _ = read_run(tmp_path / "lors_50")
    assert scalars["loss/matching"] == [(1, 0.75), (2, 0.5)]
    assert scalars["lr/image"] == [(1, 0.25), (2, 0.25)] and scalars["lr/text"][0] == (1, 0.5)
    assert scalars["grad_norm/images"][0] == (1, 5.0) and scalars["grad_norm/texts"][0] == (1, 0.0)
    assert scalars["grad_norm/sim_full"][0] == (1, 5.0)
    # S = [[2, 1], [3, 4]]: entries 1..4
    assert scalars["similarity/mean"] == [(1, 2.5)] and scalars["similarity/diag_mean"] == [(1, 3.0)]
    assert scalars["similarity/offdiag_mean"] == [(1, 2.0)]
    assert scalars["similarity/std"] == [(1, f32(1.25 ** 0.5))]


def test_lowrank_similarity_statistics_come_from_the_learned_factors():
    n, rank, alpha = 4, 2, 2.0
    left, right = torch.arange(8.0).view(n, rank), torch.ones(n, rank)
    sim = Similarity("lowrank", n, rank, alpha, params={"sim_diag": torch.ones(n), "sim_left": left,
                                                        "sim_right": torch.zeros(n, rank)})
    stats = tb.similarity_stats(sim.matrix({"sim_diag": torch.full((n,), 2.0), "sim_left": left, "sim_right": right}))
    # S = 2·I + (α/r)·L·1ᵀ: row i off the diagonal holds L[i].sum() = 4i + 1
    row = torch.tensor([4.0 * i + 1 for i in range(n)])
    assert stats["diag_mean"] == pytest.approx(2.0 + row.mean().item())
    assert stats["offdiag_mean"] == pytest.approx(row.mean().item())


def test_checkpoint_pictures_are_the_drawn_pngs(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    save_grid(tmp_path / "grid_00010.png", images, ["a red ball", "two cats", "a house"], columns=2, tile=16)
    save_heatmap(tmp_path / "similarity_00010.png", torch.eye(3) + 0.1, "S")
    with tb.open_log(on(tmp_path / "tb"), "run") as log:
        log.picture(10, "checkpoint/grid", tmp_path / "grid_00010.png")
        log.picture(10, "checkpoint/similarity", tmp_path / "similarity_00010.png")
    _, logged = read_run(tmp_path / "tb" / "run")
    for tag, png in (("checkpoint/grid", "grid_00010.png"), ("checkpoint/similarity", "similarity_00010.png")):
        event, = logged[tag]
        drawn = np.asarray(Image.open(tmp_path / png).convert("RGB"))
        assert event.step == 10 and (event.height, event.width) == drawn.shape[:2]
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB")), drawn)


def test_validation_recall_logs_the_mean_over_students(tmp_path):
    with tb.open_log(on(tmp_path), "lors_50") as log:
        log.recall(20, "val", {"mean": (31.5, 2.0), "ir@1": (10.0, 1.0)})  # evaluation.students.mean_std's form
    scalars, _ = read_run(tmp_path / "lors_50")
    assert scalars == {"recall_val/mean": [(20, 31.5)], "recall_val/ir@1": [(20, 10.0)]}


def test_evaluation_curves_one_run_per_set_averaged_over_students(tmp_path):
    def curve(offset):
        scores = lambda base: [{"mean": base + offset + e, "tr@1": base + e / 2} for e in (0, 5, 10)]  # noqa: E731
        return {"epochs": [0, 5, 10], "val": scores(10.0), "test": scores(20.0)}
    entries = [{"model": "lors · tesla (49 pairs)", "curves": [curve(0.0), curve(2.0)]},
               {"model": "random (50 pairs)", "curves": [curve(1.0)]}]
    tb.log_curves(on(tmp_path), "eval/lors-1234", entries)
    runs = sorted(p.name for p in (tmp_path / "eval" / "lors-1234").iterdir())
    assert runs == ["00_lors_tesla_49_pairs", "01_random_50_pairs"]
    scalars, _ = read_run(tmp_path / "eval" / "lors-1234" / runs[0])
    assert scalars["recall_test/mean"] == [(0, 21.0), (5, 26.0), (10, 31.0)]  # mean of offsets 0 and 2
    assert scalars["recall_val/mean"] == [(0, 11.0), (5, 16.0), (10, 21.0)]
    assert scalars["recall_test/tr@1"] == [(0, 20.0), (5, 22.5), (10, 25.0)]
    scalars, _ = read_run(tmp_path / "eval" / "lors-1234" / runs[1])
    assert scalars["recall_test/mean"][-1] == (10, 31.0)


def exercise(log, png):
    log.scalars(1, {"train/loss": 1.0})
    log.recall(1, "test", {"mean": 1.0})
    log.iteration(1, 1.0, {"image": torch.tensor(0.1)}, {"images": torch.ones(2)})
    log.picture(1, "checkpoint/grid", png)


def test_off_or_other_ranks_write_nothing(tmp_path):
    save_heatmap(tmp_path / "s.png", torch.eye(2), "S")
    board = tmp_path / "tb"
    for log in (tb.open_log({"log": {"tensorboard": None}}, "run"), tb.open_log({}, "run"),
                tb.open_log(on(board), "run", rank=1)):
        assert type(log) is tb.NoLog
        with log:
            exercise(log, tmp_path / "s.png")
    tb.log_curves({"log": {"tensorboard": None}}, "eval", [{"model": "x", "curves": [{"epochs": [0], "test": [{}]}]}])
    assert not board.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["s.png"]


def test_the_stand_in_offers_the_same_calls():
    calls = lambda cls: {n: inspect.signature(f) for n, f in vars(cls).items()  # noqa: E731
                         if callable(f) and not n.startswith("_")}
    assert calls(tb.TensorBoardLog) == calls(tb.NoLog)


def test_missing_package_is_a_user_error_before_any_compute(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # what `import tensorboard` does when not installed
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(tb.TensorBoardMissing, match=r"log\.tensorboard.*pip install tensorboard") as err:
        tb.open_log(on(tmp_path / "tb"), "run")
    assert isinstance(err.value, ToolkitError) and isinstance(err.value, ImportError)
    assert tb.open_log({"log": {"tensorboard": None}}, "run").__class__ is tb.NoLog  # off: the package is not needed

    tiny_cfg["log"]["tensorboard"] = str(tmp_path / "tb")
    monkeypatch.setattr("training.experts.RunContext", lambda *a, **k: pytest.fail("computed before the check"))
    with pytest.raises(tb.TensorBoardMissing):
        run_buffer(tiny_cfg, log=lambda _: None)
    assert not expert_files(tiny_cfg["buffer"]["out_dir"]) and not (tmp_path / "tb").exists()


def test_run_names_are_plain_folder_names():
    assert tb.run_name("lors · tesla (49 pairs), lr 0.1 chosen on val") == "lors_tesla_49_pairs_lr_0.1_chosen_on_val"
    assert tb.run_name("full data (24 pairs → heads)") == "full_data_24_pairs_heads"
    assert tb.run_name("···") == "run"
