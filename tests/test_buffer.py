"""Expert trajectories on a slice of the real Tux Paint data with the real offline encoders."""
import copy
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import evaluate
import training.experts as experts
from common.config import Schema, resolve
from training.experts import experts_of_rank, run_buffer
from training.trajectories import TrajectoryError, expert_files, expert_path, load_expert


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _quiet(_msg):
    pass


class Interrupt(Exception):
    pass


def test_interrupted_buffer_resumes_to_complete_loadable_experts(tiny_cfg, monkeypatch, tmp_path):
    out = Path(tiny_cfg["buffer"]["out_dir"])
    real_train_epoch = experts.train_epoch
    calls = {"n": 0}

    def dies_in_second_expert(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # expert 1, epoch 2 (each expert runs 2 epochs)
            raise Interrupt("killed")
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(experts, "train_epoch", dies_in_second_expert)
    with pytest.raises(Interrupt):
        run_buffer(tiny_cfg, log=_quiet)
    assert [p.name for p in expert_files(out)] == ["expert_000.safetensors"]
    assert not list(out.glob(".*.tmp"))
    first_digest = _digest(expert_path(out, 0))
    (out / ".expert_001.safetensors.abc.tmp").write_bytes(b"half-written by a killed process")

    monkeypatch.setattr(experts, "train_epoch", real_train_epoch)
    finished = run_buffer(tiny_cfg, log=_quiet)
    assert sorted(finished) == [0, 1]
    assert _digest(expert_path(out, 0)) == first_digest  # the finished expert was kept, not redone
    assert not list(out.glob(".*.tmp"))
    assert (out / "config.yaml").is_file()

    for index in (0, 1):
        snapshots, meta = load_expert(expert_path(out, index))
        assert snapshots["image"].shape[0] == snapshots["text"].shape[0] == 3  # θ_0, θ_1, θ_2
        assert snapshots["image"].dtype == torch.float32
        assert len(meta["train_loss"]) == 2 and set(meta["test_recall"]) == {"0", "1", "2"}
        assert meta["image_encoder"] == "tf_efficientnet_lite0" and meta["image_size"] == 32
        assert not torch.equal(snapshots["text"][0], snapshots["text"][2])  # it trained
    # the redone expert is the same expert an uninterrupted run makes (seeded per expert)
    clean = copy.deepcopy(tiny_cfg)
    clean["buffer"].update(out_dir=str(tmp_path / "clean"), num_experts=2)
    run_buffer(clean, log=_quiet)
    redone, _ = load_expert(expert_path(out, 1))
    reference, _ = load_expert(expert_path(tmp_path / "clean", 1))
    for tower in ("image", "text"):
        assert torch.allclose(redone[tower], reference[tower], atol=1e-6)


def test_bf16_buffers_and_expert_sharding(tiny_cfg):
    tiny_cfg["buffer"].update(dtype="bf16", num_experts=1, epochs=1, eval_every=0)
    run_buffer(tiny_cfg, log=_quiet)
    snapshots, meta = load_expert(expert_path(tiny_cfg["buffer"]["out_dir"], 0))
    assert meta["dtype"] == "bf16" and snapshots["image"].dtype == torch.float32  # stored bf16, read as fp32
    assert meta["test_recall"] == {}
    assert experts_of_rank(5, 0, 2) == [0, 2, 4] and experts_of_rank(5, 1, 2) == [1, 3]


@pytest.mark.parametrize("key, value, field", [
    ("data.image_size", 48, "image_size"),
    ("model.image_weights", None, "image_weights"),   # another (random-init) image encoder
])
def test_buffer_from_other_settings_is_refused_and_kept(tiny_cfg, key, value, field):
    tiny_cfg["buffer"].update(num_experts=1, epochs=1, eval_every=0)
    run_buffer(tiny_cfg, log=_quiet)
    path = expert_path(tiny_cfg["buffer"]["out_dir"], 0)
    before = _digest(path)
    section, name = key.split(".")
    other = copy.deepcopy(tiny_cfg)
    other[section][name] = value
    other["buffer"]["num_experts"] = 2
    with pytest.raises(TrajectoryError, match=rf"expert_000\.safetensors was made with {field} = .*another buffer\.out_dir"):
        run_buffer(other, log=_quiet)
    assert _digest(path) == before and not expert_path(tiny_cfg["buffer"]["out_dir"], 1).exists()


def test_damaged_buffer_file_is_named(tiny_cfg):
    out = Path(tiny_cfg["buffer"]["out_dir"])
    out.mkdir(parents=True)
    from safetensors.torch import save_file
    save_file({"image": torch.zeros(2, 3)}, str(expert_path(out, 0)))  # valid safetensors, not ours
    with pytest.raises(TrajectoryError, match=r"expert_000\.safetensors is not an expert trajectory"):
        run_buffer(tiny_cfg, log=_quiet)
    expert_path(out, 0).write_bytes(b"garbage")
    with pytest.raises(TrajectoryError, match=r"expert_000\.safetensors is unreadable.*delete it and rerun"):
        load_expert(expert_path(out, 0))


def test_evaluate_reports_start_and_trained_snapshots(tiny_cfg, tmp_path, monkeypatch, capsys):
    tiny_cfg["buffer"].update(num_experts=1, epochs=2, eval_every=2)
    run_buffer(tiny_cfg, log=_quiet)
    path = expert_path(tiny_cfg["buffer"]["out_dir"], 0)
    _, meta = load_expert(path)
    cfg_file = tmp_path / "cfg.yaml"
    import yaml
    cfg_file.write_text(yaml.safe_dump(tiny_cfg))
    rows = evaluate.main(["--config", str(cfg_file), "--expert", str(path), "--out", str(tmp_path / "r.json")])
    assert [label for label, _ in rows] == ["expert 0, epoch 0 (start)", "expert 0, epoch 2"]
    # the same numbers the buffer logged while training
    assert rows[0][1]["mean"] == pytest.approx(meta["test_recall"]["0"]["mean"])
    assert rows[1][1]["mean"] == pytest.approx(meta["test_recall"]["2"]["mean"])
    printed = capsys.readouterr().out
    assert "| expert 0, epoch 2 |" in printed and "IR@1" in printed
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["results"][1]["mean"] == pytest.approx(rows[1][1]["mean"]) and saved["config"] == resolve(copy.deepcopy(tiny_cfg), Schema())
    with pytest.raises(TrajectoryError, match="epochs 0..2; epoch 5 does not exist"):
        evaluate.main(["--config", str(cfg_file), "--expert", str(path), "--epochs", "5"])
    cfg_file.write_text(yaml.safe_dump({**tiny_cfg, "data": {**tiny_cfg["data"], "image_size": 40}}))
    with pytest.raises(TrajectoryError, match="image_size = 32, but this run uses 40"):
        evaluate.main(["--config", str(cfg_file), "--expert", str(path)])


def test_torchrun_shards_experts_over_processes(tiny_cfg, tmp_path):
    import subprocess
    import sys

    import yaml
    tiny_cfg["buffer"].update(num_experts=3, epochs=1, eval_every=0)
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(tiny_cfg))
    root = Path(evaluate.__file__).parent
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          str(root / "buffer.py"), "--config", str(cfg_file)],
                         cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "rank 0 of 2" in run.stdout and "rank 1 of 2" in run.stdout
    metas = [load_expert(p)[1] for p in expert_files(tiny_cfg["buffer"]["out_dir"])]
    assert [m["expert"] for m in metas] == [0, 1, 2]
    assert len({m["seed"] for m in metas}) == 3


def test_the_same_experts_twice_are_the_same_bytes(tiny_cfg):
    """No timing in an expert file (it is logged instead) and its header sorted: a rerun into the same folder writes
    files with the same sha256."""
    tiny_cfg["buffer"].update(num_experts=1, epochs=1, eval_every=0)
    out = Path(tiny_cfg["buffer"]["out_dir"])
    run_buffer(tiny_cfg, log=_quiet)
    first = hashlib.sha256(expert_path(out, 0).read_bytes()).hexdigest()
    shutil.rmtree(out)
    run_buffer(tiny_cfg, log=_quiet)
    assert hashlib.sha256(expert_path(out, 0).read_bytes()).hexdigest() == first
