"""What happens when things go wrong: one clean line and exit status 2, values checked before any compute, a lock
per output folder (two real processes), no silent mixing of expert recipes, nothing existing changed."""
import copy
import errno
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import common.io
from common.cli import EXIT_USER_ERROR, run
from common.config import ConfigError, Schema, load_config, resolve
from common.errors import OutputError
from common.io import FILE_MODE, FolderInUseError, atomic_write_text, folder_lock, save_tensors
from conftest import file_digests, run_tool
from methods import method_keys
from methods.coresets import select
from methods.loop import Distillation
from methods.matching import SCRATCH
from training.context import RunContext
from training.experts import run_buffer
from training.trajectories import TrajectoryError, expert_path, load_expert, save_expert

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _quiet(_msg):
    pass


# ---- one way to fail -------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    (("--distill.budget", "abc"), "distill.budget must be a whole number ≥ 2, not 'abc'"),
    (("--distill.checkpoint_every", "0"), "distill.checkpoint_every must be a whole number ≥ 1, not 0"),
    (("--distill.lr_teacher", "-0.1"), "distill.lr_teacher must be a number > 0, or {image: …, text: …}"),
    (("--distill.syn_steps", "0"), "distill.syn_steps must be a whole number ≥ 1"),
    (("--buffer.momentum", "1.5"), "buffer.momentum must be a number ≥ 0 and < 1, not 1.5"),
    (("--buffer.num_experts", "-1"), "buffer.num_experts must be a whole number ≥ 1, not -1"),
    (("--buffer.dtype", "fp16"), "buffer.dtype must be one of fp32, bf16, not 'fp16'"),
    (("--buffer", "5", "--buffer.epochs", "2"), "config section buffer must be a mapping of keys to values, not 5"),
])
def test_bad_values_are_refused_before_any_compute_with_one_line(tmp_path, override, message):
    result = run_tool("distill.py", "--config", "configs/tuxpaint/lors.yaml", "--distill.out_dir", str(tmp_path / "d"),
                  *override)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "d").exists()


def test_generate_checks_every_edge_key_and_the_image_size_before_any_model_loads(tmp_path):
    result = run_tool("generate.py", "finetune", "--config", "configs/tuxpaint/edge.yaml", "--edge.out_dir",
                  str(tmp_path / "e"), "--edge.momentum", "5", "--edge.steps", "0", "--data.image_size", "100000")
    assert result.returncode == 2 and "Traceback" not in result.stderr and not (tmp_path / "e").exists()
    for message in ("data.image_size must be a whole number ≥ 8 and ≤ 1024, not 100000",
                    "edge.momentum must be a number ≥ 0 and < 1, not 5", "edge.steps must be a whole number ≥ 1, not 0"):
        assert message in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
@pytest.mark.parametrize("device, message", [
    ("cuda", "device cuda was asked for, but this machine has no GPU that torch can use: use --device cpu"),
    ("gpu", "device 'gpu' is not a device: use auto, cpu, cuda or cuda:N")])
def test_a_device_this_machine_lacks_is_one_line_before_anything_is_written(tmp_path, device, message):
    result = run_tool("buffer.py", "--config", "configs/tuxpaint/buffer.yaml", "--buffer.out_dir", str(tmp_path / "b"),
                  "--device", device)
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "b").exists()


@pytest.mark.parametrize("args, message", [
    (("-m", "training.trajectories", "{tmp}/none"), "error: buffer folder {tmp}/none does not exist"),
    (("coreset.py", "--config", "configs/tuxpaint/buffer.yaml", "--method", "herding", "--budget", "5", "--out",
      "{tmp}/c.safetensors", "--buffer.out_dir", "{tmp}/none"),
     "error: no expert file {tmp}/none/expert_000.safetensors: run buffer.py with this config first")])
def test_the_tools_without_a_config_of_their_own_fail_the_same_way(tmp_path, args, message):
    result = run_tool(*(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 2 and message.format(tmp=tmp_path) in result.stderr
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command, message", [
    (("evaluate.py", "--config", "configs/tuxpaint/buffer.yaml", "--distilled", "{tmp}/set.safetensors", "--out",
      "{tmp}/set.safetensors"), "--out {tmp}/set.safetensors would overwrite {tmp}/set.safetensors, an input"),
    (("report.py", "{tmp}/results.json", "--out", "{tmp}/results.json"), "--out {tmp}/results.json would overwrite"),
    (("coreset.py", "--config", "configs/tuxpaint/buffer.yaml", "--budget", "5", "--out", "{tmp}/set.safetensors"),
     "--out {tmp}/set.safetensors exists: choose another path, or give --overwrite to replace it"),
    (("distill.py", "--config", "configs/tuxpaint/lors.yaml", "--buffer.out_dir", "{tmp}/buffer", "--distill.out_dir",
      "{tmp}/buffer"), "distill.out_dir {tmp}/buffer would overwrite {tmp}/buffer, an input of this run"),
    (("evaluate.py", "--config", "configs/tuxpaint/buffer.yaml", "--data.annotations", "{tmp}/dataset.json",
      "--distilled", "{tmp}/set.safetensors", "--out", "{tmp}/dataset.json"),
     "--out {tmp}/dataset.json would overwrite {tmp}/dataset.json, an input of this run"),
    (("-m", "training.trajectories", "{tmp}/runs/old", "--json", "{tmp}/runs/old/expert_000.safetensors"),
     "--json {tmp}/runs/old/expert_000.safetensors would overwrite {tmp}/runs/old, an input"),
    (("-m", "artefacts.export", "{tmp}/set.safetensors", "{tmp}/set.safetensors"),
     "OUT {tmp}/set.safetensors would overwrite {tmp}/set.safetensors, an input"),
    # another tool's folder, or one holding it, is no output folder
    (("distill.py", "--config", "configs/tuxpaint/lors.yaml", "--buffer.out_dir", "{tmp}/buffer", "--distill.out_dir",
      "{tmp}/runs/old"), "distill.out_dir {tmp}/runs/old is a buffer of buffer.py, not a folder for distill.py's output"),
    (("distill.py", "--config", "configs/tuxpaint/lors.yaml", "--buffer.out_dir", "{tmp}/buffer", "--distill.out_dir",
      "{tmp}/runs"), "distill.out_dir {tmp}/runs holds {tmp}/runs/old, a buffer of buffer.py, not a folder for"),
    (("buffer.py", "--config", "configs/tuxpaint/buffer.yaml", "--buffer.out_dir", "{tmp}/runs/lors_50"),
     "buffer.out_dir {tmp}/runs/lors_50 is a distillation of distill.py, not a folder for buffer.py's output"),
    (("generate.py", "sample", "--config", "configs/tuxpaint/edge.yaml", "--edge.out_dir", "{tmp}/runs/lors_50"),
     "edge.out_dir {tmp}/runs/lors_50 is a distillation of distill.py, not a folder for generate.py's output"),
    (("buffer.py", "--config", "configs/tuxpaint/buffer.yaml", "--buffer.out_dir", "{tmp}/results.json"),
     "buffer.out_dir {tmp}/results.json is a file, not a folder")])
def test_no_output_may_be_an_input_or_an_existing_set(tmp_path, command, message):
    for name in ("set.safetensors", "results.json", "dataset.json", "buffer/config.yaml",
                 "runs/old/expert_000.safetensors", "runs/lors_50/checkpoint.safetensors"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(f"the user's {name}")
    before = file_digests(tmp_path)
    result = run_tool(*(part.format(tmp=tmp_path) for part in command))
    assert result.returncode == 2 and message.format(tmp=tmp_path) in result.stderr, result.stderr
    assert file_digests(tmp_path) == before


def test_every_bad_key_is_named_at_once():
    cfg = load_config(ROOT / "configs" / "tuxpaint" / "lors.yaml")
    cfg["buffer"]["epochs"], cfg["distill"]["momentum"] = 0, -0.5
    with pytest.raises(ConfigError, match=r"buffer\.epochs must be .*; distill\.momentum must be a number ≥ 0"):
        resolve(cfg, Schema(method_keys()))
    resolve(load_config(ROOT / "configs" / "flickr30k" / "lors_100.yaml"), Schema(method_keys()))  # shipped ones pass


def test_run_prints_one_line_or_the_traceback_with_debug(capsys, monkeypatch):
    def main(argv):
        raise TrajectoryError("buffer file x.safetensors is damaged;\n  retrain it")
    with pytest.raises(SystemExit) as exit_info:
        run(main, [])
    assert exit_info.value.code == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err == "error: buffer file x.safetensors is damaged; retrain it (--debug shows the traceback)\n"
    with pytest.raises(TrajectoryError):
        run(main, ["--debug"])
    monkeypatch.setenv("MMDD_DEBUG", "1")
    with pytest.raises(TrajectoryError):
        run(main, [])

    def buggy(argv):
        raise RuntimeError("a bug")
    monkeypatch.delenv("MMDD_DEBUG")
    with pytest.raises(RuntimeError, match="a bug"):  # not the toolkit's error: the traceback stays
        run(buggy, [])


def test_evaluate_checks_every_set_and_the_output_before_training(tmp_path):
    good = tmp_path / "good.safetensors"
    good.write_bytes(b"")  # exists; never read, since the typo is found first
    result = run_tool("evaluate.py", "--config", "configs/tuxpaint/buffer.yaml", "--distilled", str(good),
                  str(tmp_path / "typo.safetensors"))
    assert result.returncode == 2 and "typo.safetensors not found (--distilled)" in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_tool("evaluate.py", "--config", "configs/tuxpaint/buffer.yaml", "--full-data",
                  "--out", str(blocker / "out.json"))
    assert result.returncode == 2 and str(blocker) in result.stderr and "Traceback" not in result.stderr
    assert blocker.read_text() == "x"


def test_default_evaluation_outputs_differ_for_sets_in_folders_of_the_same_name(tmp_path):
    from evaluation.entries import default_out
    cfg = {"data": {"name": "toy", "annotations": "a.json"}}
    out = lambda p: default_out(cfg, [p], full_data=False, student_image_encoder=None)  # noqa: E731
    a = out(tmp_path / "x" / "lors" / "distilled.safetensors")
    b = out(tmp_path / "y" / "lors" / "distilled.safetensors")
    assert a != b and a.name.startswith("lors-") and a.parent == Path("runs/toy/eval")
    assert a == out(tmp_path / "x" / "lors" / "distilled.safetensors")  # same set, same file


def test_outputs_get_the_umask_mode(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == FILE_MODE


# ---- locks: two real processes ---------------------------------------------------------------------------

HOLDER = """
import sys, time
from common.io import folder_lock
with folder_lock(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_second_run_into_a_busy_folder_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "buffer"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        before = file_digests(out)
        result = run_tool("buffer.py", "--config", "configs/tuxpaint/buffer.yaml", "--buffer.out_dir", str(out))
        assert result.returncode == 2
        assert f"in use by process {holder.pid} on " in result.stderr and "Traceback" not in result.stderr
        assert file_digests(out) == before
    finally:
        holder.kill()
        holder.wait()
    notes = []
    with folder_lock(out, log=notes.append):  # the holder was killed: its lock is stale and taken over
        assert (out / ".lock").is_file()
    assert notes and f"taking over the lock of process {holder.pid}" in notes[0]
    assert not (out / ".lock").exists()


def test_a_lock_of_another_host_is_never_taken_over(tmp_path):
    (tmp_path / ".lock").write_text('{"pid": 1, "host": "elsewhere"}')
    with pytest.raises(FolderInUseError, match=r"in use by process 1 on elsewhere .*delete .*\.lock"):
        with folder_lock(tmp_path):
            pass


# ---- no mixing of expert recipes; relations checked; the offload folder --------------------------------

@pytest.fixture(scope="module")
def small_buffer(slice_config, tmp_path_factory):
    cfg = slice_config("lors.yaml", tmp_path_factory.mktemp("failures") / "buffer")
    cfg["distill"].update(budget=6, syn_steps=2, mini_batch_size=3, iterations=1, max_start_epoch=1)
    run_buffer(cfg, log=_quiet)
    return cfg


def test_a_buffer_rerun_with_another_expert_recipe_is_refused_and_changes_nothing(small_buffer, tmp_path):
    folder = Path(small_buffer["buffer"]["out_dir"])
    before = file_digests(folder)
    other = copy.deepcopy(small_buffer)
    other["buffer"].update(lr_image=0.1, batch_size=16, num_experts=2)
    with pytest.raises(TrajectoryError, match=r"other settings \(buffer\.lr_image 0\.01, this run 0\.1, "
                                              r"buffer\.batch_size 8, this run 16, in expert_000"):
        run_buffer(other, log=_quiet)
    assert file_digests(folder) == before  # config.yaml included
    fewer = copy.deepcopy(small_buffer)
    fewer["buffer"].update(num_experts=1, eval_every=1)  # keys that may differ
    assert sorted(run_buffer(fewer, log=_quiet)) == [0]
    more = copy.deepcopy(small_buffer)  # added experts, in a copy of the buffer (the other tests share it)
    more["buffer"].update(num_experts=3, out_dir=str(tmp_path / "more"))
    shutil.copytree(folder, tmp_path / "more")
    assert sorted(run_buffer(more, log=_quiet)) == [0, 1, 2]
    after = file_digests(tmp_path / "more")
    assert set(after) == {"config.yaml", "expert_000.safetensors", "expert_001.safetensors", "expert_002.safetensors"}
    assert {k: after[k] for k in before if k != "config.yaml"} == {k: v for k, v in before.items() if k != "config.yaml"}


def test_a_coreset_from_a_non_finite_expert_is_refused_and_writes_nothing(small_buffer, tmp_path):
    snapshots, meta = load_expert(expert_path(small_buffer["buffer"]["out_dir"], 0))
    snapshots["text"][-1, 0] = float("nan")
    broken = tmp_path / "expert_000.safetensors"
    save_expert(broken, {tower: list(thetas) for tower, thetas in snapshots.items()},
                {k: v for k, v in meta.items() if k not in ("format", "dtype")})
    ctx = RunContext(small_buffer, splits=("train",), log=_quiet)
    last = len(snapshots["text"]) - 1
    with pytest.raises(TrajectoryError, match=rf"expert_000\.safetensors holds non-finite values in the text tower at "
                                              rf"epoch {last}; .*retrain it"):
        select(ctx, "herding", 3, 0, expert=broken)
    assert [p.name for p in tmp_path.iterdir()] == [broken.name]


def test_a_rank_larger_than_the_set_is_refused_and_a_minibatch_is_capped_at_it(small_buffer, tmp_path):
    cfg = copy.deepcopy(small_buffer)
    cfg["distill"].update(sim_rank=6, out_dir=str(tmp_path / "d"))
    ctx = RunContext(cfg, splits=("train",), log=_quiet)
    with pytest.raises(ValueError, match=r"distill\.sim_rank 6 is larger than the 5 synthetic pairs"):
        Distillation.from_context(ctx, cfg, log=_quiet)
    cfg["distill"].update(sim_rank=2, mini_batch_size=9)  # LoRS at a small budget: the whole set, said and recorded
    logged = []
    run = Distillation.from_context(ctx, cfg, log=logged.append)
    assert run.dcfg["mini_batch_size"] == run.cfg["distill"]["mini_batch_size"] == 5
    assert logged == ["distill.mini_batch_size 9 is larger than the 5 synthetic pairs of budget 6: minibatches of 5, "
                      "the whole set"]


def test_the_offload_folder_lives_in_out_dir_and_a_stale_one_is_removed(small_buffer, tmp_path):
    cfg = copy.deepcopy(small_buffer)
    out = tmp_path / "d"
    cfg["distill"].update(out_dir=str(out), offload="disk", metagrad="exact")
    (out / SCRATCH / "mmdd-steps-old").mkdir(parents=True)
    (out / SCRATCH / "mmdd-steps-old" / "0_image").write_bytes(b"left by a killed run")
    distiller = Distillation.from_context(RunContext(cfg, splits=("train",), log=_quiet), cfg, log=_quiet)
    seen = []
    real = distiller.step

    def step(iteration):
        loss = real(iteration)
        seen.append(sorted(p.name for p in (out / SCRATCH).iterdir()))
        return loss
    distiller.step = step
    started = time.time()
    distiller.run()
    assert seen == [[]]  # the stale folder went at start-up; each iteration's own folder is gone when it ends
    assert not (out / SCRATCH).exists()  # and the scratch folder itself at the end
    assert not (out / ".lock").exists() and (out / "distilled.safetensors").stat().st_mtime >= started


def test_a_full_disk_names_the_file_and_the_free_space_and_keeps_the_old_file(tmp_path, monkeypatch):
    """Every artefact (a distillation's checkpoint and set, an expert) is written through save_tensors."""
    path = tmp_path / "checkpoint.safetensors"
    save_tensors(path, {"x": torch.zeros(2)}, {"iteration": 1})
    before = path.read_bytes()

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(common.io, "save_file", full)
    with pytest.raises(OutputError, match=rf"cannot write {re.escape(str(path))}: No space left on device, [\d,]+ MiB "
                                          rf"free on its disk; the file is as it was before"):
        save_tensors(path, {"x": torch.ones(2)}, {"iteration": 2})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]
