"""The buffer diagnostic (drift versus random walk) on synthetic trajectories of known answer."""
import json
from pathlib import Path

import pytest
import torch

import buffer
import training.trajectories as trajectories
from conftest import run_tool
from training.trajectories import (buffer_stats, expert_path, format_stats, load_expert, save_expert, tower_verdict,
                                   trajectory_stats)

ROOT = Path(__file__).resolve().parents[1]
EXPERTS, EPOCHS, PARAMS = 4, 8, 20_000


def _trajectories(seed, direction_weight, noise_weight, shared_start, experts=EXPERTS, epochs=EPOCHS, params=PARAMS):
    """(experts, epochs+1, params): θ_0, then steps = direction_weight · d (one d shared by all experts) + noise."""
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(params, generator=gen)
    steps = direction_weight * direction + noise_weight * torch.randn(experts, epochs, params, generator=gen)
    starts = torch.randn(1 if shared_start else experts, 1, params, generator=gen).expand(experts, 1, params)
    return torch.cat([starts, starts + steps.cumsum(dim=1)], dim=1)


def _random_walks(seed):
    # the image towers share one pretrained start, the text heads start from different inits
    return {"image": _trajectories(seed, 0.0, 1.0, shared_start=True),
            "text": _trajectories(seed + 1, 0.0, 1.0, shared_start=False)}


def _drifts(seed):
    return {"image": _trajectories(seed, 1.0, 0.01, shared_start=True),
            "text": _trajectories(seed + 1, 1.0, 0.01, shared_start=False)}


def test_independent_steps_are_a_random_walk():
    stats = trajectory_stats(_random_walks(0))
    assert (stats["experts"], stats["epochs"]) == (EXPERTS, EPOCHS)
    for figures in stats["towers"].values():
        assert len(figures["span_norm"]) == EPOCHS
        assert figures["exponent"] == pytest.approx(0.5, abs=0.05)
        consecutive = figures["consecutive_cosine"]
        assert max(abs(consecutive["min"]), abs(consecutive["max"])) < 0.05
        assert [c["k"] for c in figures["cross_expert_cosine"]] == list(range(1, EPOCHS + 1))
        for cross in figures["cross_expert_cosine"]:
            assert max(abs(cross["min"]), abs(cross["max"])) < 0.05
        assert figures["verdict"] == "random walk"
    assert stats["overall"].startswith("no tower drifts")


def test_a_shared_direction_is_drift():
    stats = trajectory_stats(_drifts(0))
    for figures in stats["towers"].values():
        assert figures["exponent"] == pytest.approx(1.0, abs=0.05)
        assert figures["consecutive_cosine"]["min"] > 0.95
        assert min(cross["min"] for cross in figures["cross_expert_cosine"]) > 0.95  # different starts too
        assert figures["verdict"] == "drift"
    assert stats["overall"].startswith("every tower drifts")


def test_figures_equal_a_direct_computation_whatever_the_input_form_and_chunking(monkeypatch):
    thetas = _trajectories(3, 0.3, 1.0, shared_start=False, experts=3, epochs=4, params=50).double()
    steps = thetas.diff(dim=1)
    span_norm = [torch.stack([(thetas[i, s + k] - thetas[i, s]).norm() for i in range(3) for s in range(5 - k)]).mean()
                 for k in range(1, 5)]
    consecutive = torch.stack([torch.cosine_similarity(steps[i, e], steps[i, e + 1], dim=0)
                               for i in range(3) for e in range(3)])
    cross_last = torch.stack([torch.cosine_similarity(thetas[i, 4] - thetas[i, 0], thetas[j, 4] - thetas[j, 0], dim=0)
                              for i, j in [(0, 1), (0, 2), (1, 2)]])

    whole = trajectory_stats({"text": thetas})["towers"]["text"]
    assert whole["span_norm"] == pytest.approx([n.item() for n in span_norm])
    assert whole["consecutive_cosine"]["mean"] == pytest.approx(consecutive.mean().item())
    assert whole["consecutive_cosine"]["min"] == pytest.approx(consecutive.min().item())
    assert whole["cross_expert_cosine"][-1]["mean"] == pytest.approx(cross_last.mean().item())
    assert whole["cross_expert_cosine"][-1]["max"] == pytest.approx(cross_last.max().item())

    monkeypatch.setattr(trajectories, "CHUNK_ELEMENTS", 7)  # several chunks of one parameter each
    per_expert = trajectory_stats([{"text": expert} for expert in thetas])["towers"]["text"]
    assert _close(per_expert, whole)


def _close(a, b):
    """Nested dicts/lists of floats equal up to rounding."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[key], b[key]) for key in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return a == pytest.approx(b) if isinstance(a, float) else a == b


@pytest.mark.parametrize("exponent, cosine, verdict", [
    (0.9, 0.5, "drift"), (0.75, 0.3, "drift"),
    (0.9, 0.05, "random walk"), (0.55, 0.9, "random walk"), (0.6, 0.5, "random walk"),
    (0.7, 0.2, "mixed"), (0.9, 0.2, "mixed"), (0.7, 0.9, "mixed"),
])
def test_verdict_thresholds(exponent, cosine, verdict):
    assert tower_verdict(exponent, {"mean": cosine, "min": cosine, "max": cosine})[0] == verdict


def test_one_expert_or_one_epoch_gives_na_not_an_error():
    one_expert = trajectory_stats({"image": _random_walks(1)["image"][:1]})
    assert one_expert["towers"]["image"]["cross_expert_cosine"] is None
    assert one_expert["towers"]["image"]["verdict"] == "random walk"  # the rest is still measured
    assert "cross-expert cosine: n/a (needs ≥ 2 experts)" in format_stats(one_expert)

    one_epoch = trajectory_stats({"image": _drifts(1)["image"][:, :2]})
    figures = one_epoch["towers"]["image"]
    assert figures["exponent"] is None and figures["consecutive_cosine"] is None
    assert figures["cross_expert_cosine"][0]["min"] > 0.95
    assert figures["verdict"] == "n/a"
    assert "growth exponent, consecutive cosine: n/a (needs ≥ 2 epochs)" in format_stats(one_epoch)


def test_a_tower_that_does_not_move_is_static():
    frozen = torch.ones(2, 4, 10)
    figures = trajectory_stats({"image": frozen})["towers"]["image"]
    assert figures["verdict"] == "static" and figures["span_norm"] == [0.0, 0.0, 0.0]


def _write_buffer(folder, experts=3, epochs=4, dtype="fp32"):
    walks, drifts = _random_walks(5), _drifts(5)
    for index in range(experts):
        snapshots = {"image": list(walks["image"][index, :epochs + 1, :300]),
                     "text": list(drifts["text"][index, :epochs + 1, :80])}
        save_expert(expert_path(folder, index), snapshots, {"expert": index}, dtype)


def _cli(*args):
    return run_tool("-m", "training.trajectories", *args)


def test_cli_on_a_buffer_folder_prints_the_verdicts_and_writes_the_json(tmp_path):
    _write_buffer(tmp_path / "buffer")
    done = _cli(tmp_path / "buffer", "--json", tmp_path / "stats.json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{tmp_path / 'buffer'}: experts 3, epochs 4"
    assert any(line.startswith("growth exponent") for line in lines)
    assert any(line.startswith("image tower: random walk (exponent ") for line in lines)
    assert any(line.startswith("text tower: drift (exponent ") for line in lines)
    assert lines[-1].startswith("overall: only the text tower drifts")
    written = json.loads((tmp_path / "stats.json").read_text())
    assert written == json.loads(json.dumps(buffer_stats(tmp_path / "buffer")))
    assert written["towers"]["text"]["verdict"] == "drift"


def test_a_buffer_folder_is_read_in_chunks_with_the_in_memory_answer(tmp_path, monkeypatch):
    _write_buffer(tmp_path, dtype="bf16")
    in_memory = [load_expert(expert_path(tmp_path, index))[0] for index in range(3)]
    monkeypatch.setattr(trajectories, "CHUNK_ELEMENTS", 100)
    from_files = buffer_stats(tmp_path)
    assert from_files["buffer"] == str(tmp_path)
    assert _close(from_files["towers"], trajectory_stats(in_memory)["towers"])


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    empty = _cli(tmp_path)
    assert empty.returncode == 2
    assert empty.stderr.strip() == (f"error: no expert files (expert_NNN.safetensors) in {tmp_path} "
                                    "(--debug shows the traceback)")
    missing = _cli(tmp_path / "nowhere")
    assert missing.returncode == 2
    assert missing.stderr.strip() == (f"error: buffer folder {tmp_path / 'nowhere'} does not exist "
                                      "(--debug shows the traceback)")
    (tmp_path / "expert_000.safetensors").write_bytes(b"not a safetensors file")
    damaged = _cli(tmp_path)
    assert damaged.returncode == 2 and "Traceback" not in damaged.stderr
    assert damaged.stderr.startswith("error: buffer file") and len(damaged.stderr.strip().splitlines()) == 1


def test_buffer_py_prints_the_verdicts_after_training(tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "buffer"

    def trains_synthetic_experts(cfg):
        _write_buffer(Path(cfg["buffer"]["out_dir"]), experts=2, epochs=cfg["buffer"]["epochs"])
        return {0: {}, 1: {}}

    monkeypatch.setattr(buffer, "run_buffer", trains_synthetic_experts)
    buffer.main(["--config", str(ROOT / "configs/tuxpaint/buffer.yaml"), "--buffer.out_dir", str(out_dir),
                 "--buffer.epochs", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"worth distilling? (figures: python -m training.trajectories {out_dir})"
    assert lines[1].startswith("  image tower: random walk") and lines[2].startswith("  text tower: drift")
    assert lines[3].startswith("  overall: only the text tower drifts")

    buffer.main(["--config", str(ROOT / "configs/tuxpaint/buffer.yaml"), "--buffer.out_dir", str(tmp_path / "one"),
                 "--buffer.epochs", "1"])
    assert "worth distilling" not in capsys.readouterr().out  # one epoch: nothing to judge
