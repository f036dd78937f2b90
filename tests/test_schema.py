"""The one config schema (common/schema.py, common/config.py): what a file may hold, the defaults code reads,
the method's own keys from the registry, and --help."""

import pytest
import yaml

from common.config import ConfigError, Schema, load_config
from common.schema import SECTIONS
from conftest import run_tool
from methods import method_keys

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SCHEMA = Schema(method_keys())


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


def test_defaults_fill_every_key_of_a_section_the_config_has(tmp_path):
    cfg = load_config(write(tmp_path, "buffer: {out_dir: b, epochs: 3}\n"), schema=SCHEMA)
    assert cfg["buffer"]["epochs"] == 3 and set(cfg["buffer"]) == set(SECTIONS["buffer"])
    assert cfg["buffer"]["augment"] is SECTIONS["buffer"]["augment"].default and cfg["device"] == "auto"
    assert "data" not in cfg  # a section the config lacks stays absent where it needs a path (data.name, …)
    assert cfg["evaluate"]["students"] == SECTIONS["evaluate"]["students"].default  # and is all defaults elsewhere


def test_every_shipped_config_is_complete_already(tmp_path):
    """Filling defaults changes none of the shipped configs: what a run records is what it was given (with its
    budget written into `lors_{budget}`)."""
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        given = load_config(path)
        if "distill" in given:
            given["distill"]["out_dir"] = given["distill"]["out_dir"].format(budget=given["distill"]["budget"])
        assert load_config(path, schema=SCHEMA) == given, path


@pytest.mark.parametrize("text, message", [
    ("bufer: {epochs: 1}\n", "unknown config section or top-level key 'bufer' (did you mean buffer?)"),
    ("buffer: {out_dir: b, epochz: 1}\n", "unknown config key 'buffer.epochz' (did you mean buffer.epochs?)"),
    ("buffer: 5\n", "config section buffer must be a mapping of keys to values, not 5"),
    ("buffer: {epochs: 1}\n", "buffer.out_dir is required"),
    ("data: {name: x, annotations: a.json, image_root: i, pixel_stats: imagenet}\n",
     "data.pixel_stats must be one of model, clip (or null), not 'imagenet'"),
    ("recipe: paper\n", "recipe must be one of ours, reference, not 'paper'"),
    ("distill: {method: lors, budget: 5, lr_image: 1, lr_text: 1, out_dir: o, wbce_eps: 0.7}\n",
     "distill.wbce_eps must be a number ≥ 0 and < 0.5 (or null), not 0.7"),
    ("distill: {method: nope, budget: 5, lr_image: 1, lr_text: 1, out_dir: o}\n",
     "distill.method must be one of mtt-vl, tesla-vl, lors, repblend"),
    ("evaluate: {lr_grid: [0.1, 0]}\n", "evaluate.lr_grid must be a non-empty list of numbers > 0"),
    ("buffer: {out_dir: b, epochs: 1, epochs: 2}\n", "key 'epochs' is given twice in one mapping"),
    ("buffer: {out_dir: b}\nbuffer: {out_dir: c}\n", "key 'buffer' is given twice in one mapping"),
    ("a: &a [1, 1]\nb: &b [*a, *a]\nbuffer: {out_dir: b, epochs: *b}\n", "an alias (*name) in a config"),
    ("base: [1, 2]\n", "base must be the path of another config file, not [1, 2]"),
    (b"buffer: {out_dir: \"\xff\"}\n", "is not UTF-8 text (invalid start byte at byte 19)"),
])
def test_a_bad_file_is_refused_naming_the_key_and_the_file(tmp_path, text, message):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text), schema=SCHEMA)
    assert message in str(err.value) and str(tmp_path / "run.yaml") in str(err.value)


def test_an_override_may_set_a_declared_key_the_file_leaves_out(tmp_path):
    path = write(tmp_path, "buffer: {out_dir: b}\n")
    assert load_config(path, [("buffer.seed", "4")], schema=SCHEMA)["buffer"]["seed"] == 4
    with pytest.raises(ConfigError, match="unknown config key 'buffer.sed'"):
        load_config(path, [("buffer.sed", "4")], schema=SCHEMA)


def test_help_lists_the_keys_an_entry_point_reads_with_their_defaults():
    out = run_tool("distill.py", "--help").stdout
    assert "--distill.iterations" in out and "default 3000" in out
    assert "distill.method lors also reads:" in out and "--distill.sim_rank" in out
    assert "--data.image_size" in out and "--train.epochs" not in out
    assert "null: the recipe's (ours 0.0, reference 1e-06)" in out  # distill.wbce_eps


def test_a_recipe_value_is_refused_before_any_model_loads(tmp_path):
    """--distill.wbce_eps 0.7 used to fail only after both encoders had loaded and every caption was encoded."""
    run = run_tool("distill.py", "--config", "configs/tuxpaint/lors.yaml", "--distill.wbce_eps", "0.7",
                   "--distill.out_dir", tmp_path / "d")
    assert run.returncode == 2 and "distill.wbce_eps must be a number ≥ 0 and < 0.5" in run.stderr
    assert not (tmp_path / "d").exists()


def test_the_yaml_types_of_the_loader_are_kept(tmp_path):
    cfg = load_config(write(tmp_path, "buffer: {out_dir: b, lr_image: 1e-2}\n"), schema=SCHEMA)
    assert cfg["buffer"]["lr_image"] == 0.01 and yaml.safe_dump(cfg)  # a float, and the config saves as YAML
