"""sh/benchmark_tuxpaint.sh's bookkeeping, with a stand-in for Python that logs each call and writes the file the
call would write: which experts each row's runs are pointed at, rows skipped once their results are there, the
experts-only run, and experts that changed under the results."""
import os
import shutil
import subprocess

import pytest

from conftest import ROOT

STUB = r"""#!/usr/bin/env bash
echo "$*" >>"$CALLS"
value() { local key=$1; shift; while [ $# -gt 1 ]; do [ "$1" = "$key" ] && echo "$2" && return; shift; done; }
case $1 in
  buffer.py) mkdir -p "$(value --buffer.out_dir "$@")"
             [ -f "$(value --buffer.out_dir "$@")/expert_000.safetensors" ] ||
               echo expert >"$(value --buffer.out_dir "$@")/expert_000.safetensors" ;;
  distill.py) mkdir -p "$(value --distill.out_dir "$@")"; touch "$(value --distill.out_dir "$@")/distilled.safetensors" ;;
  -c) echo "[{image: 0.01, text: 0.1}]" ;;
  *) out=$(value --out "$@"); [ -z "$out" ] || echo '{}' >"$out" ;;
esac
"""

pytestmark = pytest.mark.skipif(not (shutil.which("flock") and os.path.exists("/usr/bin/time")),
                                reason="the benchmark needs flock and GNU time")


@pytest.fixture
def bench(tmp_path):
    """Runs the script on OUT = tmp/split0 with the stand-in; returns (returncode, stderr, the calls made)."""
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    calls = tmp_path / "calls"

    def run(**env):
        calls.write_text("")
        done = subprocess.run(["bash", str(ROOT / "sh" / "benchmark_tuxpaint.sh")], capture_output=True, text=True,
                              env={**os.environ, "PYTHON": str(stub), "CALLS": str(calls),
                                   "OUT": str(tmp_path / "split0"), "CROSS": "", **env}, timeout=60)
        return done.returncode, done.stderr, calls.read_text().splitlines()
    return run


def test_repblend_runs_on_the_heads_experts_and_the_rest_on_the_full_towers(bench, tmp_path):
    returncode, stderr, calls = bench(BUDGETS="10", ROWS="lors repblend")
    assert returncode == 0, stderr
    out = tmp_path / "split0"
    for name in ("lors", "repblend"):
        runs = [c for c in calls if c.startswith(("distill.py", "evaluate.py")) and f"/{name}" in c]
        assert len(runs) == 5, runs  # set, start; the set's, the start's and the start's at the learned lrs students
        experts = out / ("buffer_heads" if name == "repblend" else "buffer")
        assert all(f"--buffer.out_dir {experts} " in c for c in runs), runs


def test_a_row_whose_results_are_there_is_skipped_and_the_experts_only_run_ends_cleanly(bench):
    assert bench(BUDGETS="10", ROWS="random")[0] == 0
    returncode, stderr, calls = bench(BUDGETS="10", ROWS="random")
    assert returncode == 0, stderr
    assert not [c for c in calls if c.startswith("coreset.py") or "--distilled" in c]
    returncode, stderr, calls = bench(BUDGETS="", ROWS="random")
    assert returncode == 0, stderr
    assert [c.split()[0] for c in calls if not c.startswith("-m data.tuxpaint")][0] == "buffer.py"


def test_experts_that_changed_under_the_results_are_refused(bench, tmp_path):
    assert bench(BUDGETS="", ROWS="random")[0] == 0
    (tmp_path / "split0" / "buffer" / "expert_000.safetensors").write_text("another machine's expert")
    returncode, stderr, calls = bench(BUDGETS="10", ROWS="random")
    assert returncode == 2
    assert "is not the expert the results in" in stderr and "Give this run its own OUT" in stderr
    assert not [c for c in calls if c.startswith(("coreset.py", "distill.py"))]
