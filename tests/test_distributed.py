"""distill.py and evaluate.py under torchrun (gloo, 2 processes on the CPU) give what one process gives, on the Tux
Paint slice at 32 px; the refusals of the process group (a P the processes cannot share, nccl without GPUs) and a
failing rank that ends the job."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import evaluate
from artefacts.distilled import load_distilled
from common.config import ConfigError, save_config
from common.distributed import join
from conftest import distill_config
from methods.loop import Distillation
from training.context import RunContext

ROOT = Path(__file__).resolve().parents[1]
TUXPAINT = ROOT / "datasets" / "tuxpaint"
ATOL = 1e-6  # 2 processes against 1 (the sums are taken in float64: in practice the difference is 0)


def _quiet(_msg):
    pass


def torchrun(*args, env=None, timeout=300):
    """`python -m torch.distributed.run --nproc-per-node 2 ARGS` on a free port, one thread per process."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(port), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})})


@contextmanager
def one_thread():
    """In this process as in each torchrun process: one thread, so that sums are taken in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _tensors(path):
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def assert_same_set(a, b, atol=ATOL):
    """Two distilled.safetensors files: the same tensors (images, text features, S factors) and lrs to `atol`."""
    ta, tb = _tensors(a), _tensors(b)
    assert sorted(ta) == sorted(tb) and {"images", "text_features", "sim_left"} <= set(ta)
    for name in ta:
        torch.testing.assert_close(ta[name], tb[name], atol=atol, rtol=0, msg=name)
    assert load_distilled(a).lrs == pytest.approx(load_distilled(b).lrs, abs=atol)


@pytest.fixture(scope="module")
def base_cfg(distill_base):
    return distill_base


def distill_cfg(base_cfg, out_dir, **distill):
    """The tiny distillation of tests/conftest.py: 1 iteration of 4 segments (2 a rank), 3 students."""
    cfg = distill_config(base_cfg, out_dir, **{"iterations": 1, "checkpoint_every": 1, "segments_per_iteration": 4,
                                               **distill})
    cfg["evaluate"].update(students=3, together=1, epochs=2, checkpoint_every=1, lr_grid=[0.05, 0.1])
    return cfg


def distil_here(base_cfg, out_dir, **distill):
    cfg = distill_cfg(base_cfg, out_dir, **distill)
    with one_thread():
        Distillation.from_context(RunContext(cfg, splits=("train",), log=_quiet), cfg, log=_quiet).run()
    return Path(out_dir) / "distilled.safetensors"


@pytest.fixture(scope="module")
def two_processes(base_cfg, tmp_path_factory):
    """One iteration of P = 4 distilled by 2 processes: (its config file, its out_dir)."""
    folder = tmp_path_factory.mktemp("two")
    cfg_file = folder / "cfg.yaml"
    save_config(distill_cfg(base_cfg, folder / "run"), cfg_file)
    run = torchrun(ROOT / "distill.py", "--config", cfg_file)
    assert run.returncode == 0, run.stderr[-3000:]
    return cfg_file, folder / "run"


def test_two_processes_distil_the_set_of_one(base_cfg, two_processes, tmp_path):
    _, out = two_processes
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "checkpoint.safetensors", "config.yaml", "distilled.safetensors", "grid_00001.png", "similarity_00001.png"]
    assert not (out / ".lock").exists()
    assert_same_set(out / "distilled.safetensors", distil_here(base_cfg, tmp_path / "one"))
    # P matters: the mean over 4 segments is not one segment's step
    single = distil_here(base_cfg, tmp_path / "p1", segments_per_iteration=1)
    assert not torch.allclose(_tensors(single)["images"], _tensors(out / "distilled.safetensors")["images"], atol=1e-4)


def test_a_run_of_two_processes_resumes_in_one_to_the_uninterrupted_result(base_cfg, two_processes, tmp_path):
    _, out = two_processes
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    logged = []
    cfg = distill_cfg(base_cfg, resumed, iterations=2)
    with one_thread():
        Distillation.from_context(RunContext(cfg, splits=("train",), log=_quiet), cfg, log=logged.append).run()
    assert any("at iteration 1" in line for line in logged)
    assert_same_set(resumed / "distilled.safetensors", distil_here(base_cfg, tmp_path / "straight", iterations=2))


def test_a_checkpoint_of_another_p_is_refused(base_cfg, two_processes, tmp_path):
    _, out = two_processes
    copy_ = tmp_path / "copy"
    shutil.copytree(out, copy_)
    cfg = distill_cfg(base_cfg, copy_, iterations=2, segments_per_iteration=2)
    with pytest.raises(ValueError, match=r"holds a run with other settings \(distill\.segments_per_iteration differ\)"):
        Distillation.from_context(RunContext(cfg, splits=("train",), log=_quiet), cfg, log=_quiet).run()


def test_p_not_a_multiple_of_the_processes_is_refused(two_processes, tmp_path):
    cfg_file, _ = two_processes
    run = torchrun(ROOT / "distill.py", "--config", cfg_file, "--distill.segments_per_iteration", "3",
                   "--distill.out_dir", tmp_path / "three")
    assert run.returncode != 0
    assert "error: distill.segments_per_iteration 3 is not a multiple of the 2 processes of this run" in run.stderr
    assert "rank 1 of 2 failed: ConfigError" in run.stderr
    assert not (tmp_path / "three").exists()


def test_evaluate_on_two_processes_equals_one(base_cfg, two_processes, tmp_path):
    """A distilled set (its learned lrs) and a set of real pairs (lr chosen on val among 2), 3 students each:
    students 0 and 2 on rank 0, student 1 on rank 1."""
    cfg_file, out = two_processes
    real = tmp_path / "real.safetensors"
    import coreset
    coreset.main(["--config", str(cfg_file), "--method", "random", "--budget", "5", "--out", str(real)])
    sets = [out / "distilled.safetensors", real]
    run = torchrun(ROOT / "evaluate.py", "--config", cfg_file, "--distilled", *sets, "--out", tmp_path / "two.json")
    assert run.returncode == 0, run.stderr[-3000:]
    with one_thread():
        evaluate.main(["--config", str(cfg_file), "--distilled", *map(str, sets), "--out", str(tmp_path / "one.json")])
    two, one = (json.loads((tmp_path / name).read_text()) for name in ("two.json", "one.json"))
    assert [e["students"] for e in two["results"]] == [3, 3] and "lr_grid" in two["results"][1]
    drop = lambda e: {k: v for k, v in e.items() if k != "seconds_per_student"}  # noqa: E731
    assert [drop(e) for e in two["results"]] == [drop(e) for e in one["results"]]  # curves, lr choice, protocols
    assert (tmp_path / "two.md").is_file() and (tmp_path / "two.png").is_file()


def test_nccl_without_gpus_and_bad_settings_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MMDD_BACKEND", "nccl")
    with pytest.raises(ValueError, match=r"nccl backend \(MMDD_BACKEND=nccl\) needs one GPU per process, but .*use "
                                         r"MMDD_BACKEND=gloo"):
        join("cpu")
    monkeypatch.setenv("MMDD_BACKEND", "mpi")
    with pytest.raises(ValueError, match="MMDD_BACKEND='mpi': choose nccl"):
        join("cpu")
    monkeypatch.setenv("MMDD_BACKEND", "gloo")
    monkeypatch.setenv("MMDD_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="MMDD_TIMEOUT='soon': the minutes a collective may wait"):
        join("cpu")
    assert not torch.distributed.is_initialized()


def test_a_failing_rank_ends_the_job_with_its_message(tmp_path):
    script = tmp_path / "fails.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from common.cli import run\n"
        "from common.distributed import barrier, processes\n"
        "from common.errors import InputError\n\n"
        "def main(argv):\n"
        "    with processes('cpu') as (rank, world, _):\n"
        "        if rank == 1:\n"
        "            raise InputError('the data of rank 1 is missing')\n"
        "        barrier()  # rank 0 waits for a rank that is gone\n\n"
        "run(main)\n")
    started = time.time()
    run = torchrun(script, env={"MMDD_TIMEOUT": "0.5"}, timeout=120)
    assert run.returncode != 0 and time.time() - started < 60
    assert "rank 1 of 2 failed: InputError: the data of rank 1 is missing" in run.stderr
    assert "error: the data of rank 1 is missing" in run.stderr


def test_ranks_given_different_configs_stop_naming_the_keys(tmp_path):
    script = tmp_path / "disagree.py"
    script.write_text(
        "import os, sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from common.cli import run\n"
        "from common.distributed import processes\n\n"
        "def main(argv):\n"
        "    rank = int(os.environ['RANK'])\n"
        "    cfg = {'device': 'cpu', 'distill': {'lr_image': 100 + rank, 'iterations': 5}}\n"
        "    with processes('cpu', cfg):\n"
        "        print('ran with', cfg, flush=True)\n\n"
        "run(main)\n")
    run = torchrun(script, env={"MMDD_TIMEOUT": "0.5"}, timeout=120)
    assert run.returncode != 0 and "ran with" not in run.stdout
    assert ("error: the 2 processes of this job were given different configs (distill.lr_image differ from rank 0's)"
            in run.stderr)


def test_segments_per_iteration_must_divide_among_the_processes():
    from methods.loop import work_per_rank
    assert work_per_rank({"segments_per_iteration": 1}, 1) == 1 and work_per_rank({"segments_per_iteration": 4}, 2) == 2
    with pytest.raises(ConfigError, match=r"segments_per_iteration 6 is not a multiple of the 4 processes.*e\.g\. 4"):
        work_per_rank({"segments_per_iteration": 6}, 4)
