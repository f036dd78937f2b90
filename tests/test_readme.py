"""The README's numbered block runs top to bottom as written, at its own tiny settings: the commands are read from the
README, so the test breaks when they drift (a path that does not chain, a flag a tool refuses)."""
import os
import shutil
import subprocess

import pytest
import yaml

from conftest import ROOT, TUXPAINT, without_progress_bars

TINY_OUT = ROOT / "runs" / "tiny"  # where the README's tiny line sends every output


def readme_block():
    """The bash block that starts by activating the venv, with its tiny line switched on."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```bash\n. .venv/bin/activate")
    lines = text[start:text.index("```", start + 7)].splitlines()[1:]
    tiny = [i for i, line in enumerate(lines) if line.startswith("# RUNS=runs/tiny TINY=")]
    assert len(tiny) == 1, "the README block has one tiny line"
    lines[tiny[0]] = lines[tiny[0]][2:]
    return "\n".join(lines)


def test_the_block_has_every_step_and_its_tiny_line_moves_every_output():
    block = readme_block()
    for tool in ("buffer.py", "distill.py", "coreset.py", "evaluate.py", "generate.py", "artefacts.export", "report.py"):
        assert f" {tool} " in block, tool
    assert "--out_root runs/tiny" in block
    assert " report.md" not in block and "demo_results" not in block  # nothing the block itself does not write


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "activate").exists() or not TUXPAINT.exists(),
                    reason="needs `make venv data`")
def test_the_readme_block_runs_top_to_bottom_at_its_tiny_settings():
    shutil.rmtree(TINY_OUT, ignore_errors=True)
    try:
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block()], cwd=ROOT, capture_output=True,
                             text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900)
        assert run.returncode == 0, without_progress_bars(run.stderr)
        for made in ("buffer/expert_000.safetensors", "lors_50/distilled.safetensors", "covmatch_50/distilled.safetensors",
                     "mdm_50/distilled.safetensors", "random_50.safetensors", "eval/lors_50.json",
                     "lors_50_hf/metadata.jsonl", "eval/report.md", "edge"):
            assert (TINY_OUT / made).exists(), made
        assert "note: --distill.max_start_epoch --distill.iterations: not read by this tool" in run.stderr
        saved = yaml.safe_load((TINY_OUT / "lors_50" / "config.yaml").read_text())
        assert (saved["buffer"]["out_dir"], saved["distill"]["iterations"]) == ("runs/tiny/buffer", 2)
    finally:
        shutil.rmtree(TINY_OUT, ignore_errors=True)


def side_by_side_table(text):
    """The lines of the first markdown table whose header names the split folders ('| budget | method | tuxpaint ·')."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| budget | method | tuxpaint · split"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return lines[start:end]


def test_the_readme_benchmark_table_is_the_one_the_benchmark_wrote():
    """The README's benchmark table is results/tuxpaint/report.md's side-by-side table, copied whole: remaking the
    results without the README (or editing a figure by hand) fails here."""
    written = side_by_side_table((ROOT / "results" / "tuxpaint" / "report.md").read_text())
    assert side_by_side_table((ROOT / "README.md").read_text()) == written
    assert written[0] == "| budget | method | tuxpaint · split0 | tuxpaint · split1 |"  # both split seeds
