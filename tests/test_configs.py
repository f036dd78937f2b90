"""Every shipped config loads, resolves its method, and writes out every distill key its method reads (so that every
override documented in the README and docs/ works with every config of that method)."""
from pathlib import Path

import pytest

from common.config import load_config
from common.schema import SECTIONS
from methods import REGISTRY
from methods.matching import synthetic_pairs
from methods.registry import resolve_method

ROOT = Path(__file__).resolve().parents[1]
DISTILL_CONFIGS = sorted(p for p in (ROOT / "configs").glob("*/*.yaml")
                         if p.stem not in ("buffer", "buffer_heads", "edge"))
EDGE_CONFIGS = sorted((ROOT / "configs").glob("*/edge.yaml"))


def test_there_is_a_config_per_published_row():
    names = {f"{p.parent.name}/{p.stem}" for p in DISTILL_CONFIGS}
    for dataset in ("flickr30k", "coco"):
        assert {f"{dataset}/lors_{b}" for b in (100, 200, 500, 1000)} <= names
        assert {f"{dataset}/mtt-vl_100", f"{dataset}/tesla-vl_100"} <= names
        assert {f"{dataset}/repblend_{b}" for b in (100, 200, 500)} <= names
        assert (ROOT / "configs" / dataset / "buffer_heads.yaml").is_file()
    scripts = {p.stem for p in (ROOT / "sh").glob("distill_*.sh")}
    assert {f"distill_{n.replace('/', '_')}" for n in names if not n.startswith("tuxpaint")} <= scripts


@pytest.mark.parametrize("path", DISTILL_CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_resolves(path):
    cfg = load_config(path)
    spec = REGISTRY[cfg["distill"]["method"]]
    assert set(cfg["distill"]) == set(SECTIONS["distill"]) | set(spec.keys)
    assert {"data", "model", "buffer", "evaluate"} <= set(cfg)
    d = resolve_method(cfg["distill"], cfg["model"]["trainable"])
    assert path.stem.split("_")[-1] in (str(d["budget"]), d["method"])  # e.g. lors_100, or tuxpaint/mtt-vl
    if spec.needs_buffer:  # the experts hold every epoch the method reads
        assert d["max_start_epoch"] - 1 + d.get("expert_epochs", 1) <= cfg["buffer"]["epochs"]
    if spec.family != "trajectory matching":
        return
    assert synthetic_pairs(d) == d["budget"] - (1 if d["method"] in ("lors", "repblend") else 0)
    if d["method"] == "mtt-vl":
        assert d["metagrad"] == "unroll" and d["loss"] == "infonce" and d["sim_type"] == "identity"
    if d["method"] == "repblend":  # its experts: the heads buffer
        assert d["blend"] and cfg["buffer"]["out_dir"].endswith("buffer_heads")


@pytest.mark.parametrize("path", EDGE_CONFIGS, ids=lambda p: p.parent.name)
def test_edge_config_offers_the_demos_keys(path):
    cfg, demo = load_config(path), load_config(ROOT / "configs" / "tuxpaint" / "edge.yaml")
    assert set(cfg["edge"]) == set(demo["edge"]) and {"data", "model", "evaluate"} <= set(cfg)
    assert cfg["edge"]["budget"] % cfg["edge"]["cpi"] == 0
