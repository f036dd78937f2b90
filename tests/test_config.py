import pytest
import yaml

from common.config import ConfigError, Schema, load_config, parse_args, resolve
from evaluation.entries import default_out
from methods import method_keys


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 10, "lr": 0.1, "augment": True, "name": "x"},
                                    "seed": 0}))
    return path


def test_overrides_are_typed_like_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"buffer": {"out_dir": "b", "epochs": 10, "lr_image": 0.1, "augment": True}}))
    cfg, _ = parse_args(["--config", str(path), "--buffer.epochs", "3", "--buffer.augment", "false",
                         "--buffer.lr_image=1e-3", "--buffer.drop_last", "null", "--device", "cpu"])
    assert {k: cfg["buffer"][k] for k in ("epochs", "lr_image", "augment", "drop_last")} == \
        {"epochs": 3, "lr_image": 1e-3, "augment": False, "drop_last": None}
    assert cfg["device"] == "cpu"


def test_boolean_false_is_false_not_truthy_string(cfg_file):
    cfg = load_config(cfg_file, [("train.augment", "False")])
    assert cfg["train"]["augment"] is False


def test_unknown_key_is_an_error_naming_the_key(cfg_file):
    with pytest.raises(ConfigError, match=r"train\.epoch'.*known keys here: augment, epochs, lr, name"):
        load_config(cfg_file, [("train.epoch", "3")])
    with pytest.raises(ConfigError, match="unknown config section 'trian'"):
        load_config(cfg_file, [("trian.epochs", "3")])


def test_missing_and_invalid_config_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("lr: 1e-2\nlr_img: 1E3\nname: e5\n")
    cfg = load_config(path, [("lr_img", "5e+2")])
    assert cfg == {"lr": 0.01, "lr_img": 500.0, "name": "e5"}


def test_a_config_lays_its_sections_over_its_base(tmp_path):
    (tmp_path / "base.yaml").write_text("data: {name: x, size: 64}\nmodel: {a: 1}\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\ndata: {size: 32}\ndistill: {budget: 10}\n")
    cfg = load_config(tmp_path / "run.yaml", [("distill.budget", "5")])
    assert cfg == {"data": {"name": "x", "size": 32}, "model": {"a": 1}, "distill": {"budget": 5}}


def test_a_missing_or_circular_base_is_named(tmp_path):
    (tmp_path / "run.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml not found .the base of"):
        load_config(tmp_path / "run.yaml")
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="its own base"):
        load_config(tmp_path / "a.yaml")


def test_a_base_cycle_through_relative_folders_is_named(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("base: sub/../sub/b.yaml\n")
    (tmp_path / "sub" / "b.yaml").write_text("base: ../sub/../a.yaml\n")
    with pytest.raises(ConfigError, match="a.yaml is its own base"):
        load_config(tmp_path / "a.yaml")


def _distill_file(tmp_path):
    buffer = tmp_path / "buffer.yaml"
    buffer.write_text(yaml.safe_dump({"buffer": {"out_dir": "runs/x/buffer", "epochs": 4}}))
    distill = tmp_path / "lors.yaml"
    distill.write_text(yaml.safe_dump({"base": "buffer.yaml", "distill": {
        "method": "mtt-vl", "budget": 50, "lr_image": 100, "lr_text": 100, "out_dir": "runs/x/mtt-vl_{budget}"}}))
    return buffer, distill


def test_out_root_moves_every_output_and_out_dirs_follow_the_budget(tmp_path):
    _, distill = _distill_file(tmp_path)
    reads = ("buffer", "distill")
    cfg, _ = parse_args(["--config", str(distill), "--distill.budget", "10"], reads=reads, method_keys=method_keys())
    assert (cfg["buffer"]["out_dir"], cfg["distill"]["out_dir"]) == ("runs/x/buffer", "runs/x/mtt-vl_10")
    cfg, _ = parse_args(["--config", str(distill), "--out_root", "runs/tiny"], reads=reads, method_keys=method_keys())
    assert (cfg["buffer"]["out_dir"], cfg["distill"]["out_dir"]) == ("runs/tiny/buffer", "runs/tiny/mtt-vl_50")
    assert default_out(cfg, [tmp_path / "set.safetensors"], False, None).parent.as_posix() == "runs/tiny/eval"
    assert resolve(yaml.safe_load(yaml.safe_dump(cfg)), Schema(method_keys())) == cfg  # a saved config stays put


def test_one_set_of_overrides_serves_every_tool(tmp_path, capsys):
    """An override of a section the tool does not read and its config lacks is left out with a note; a section the
    config has is still checked, and a misspelt one is still an error."""
    buffer, _ = _distill_file(tmp_path)
    cfg, _ = parse_args(["--config", str(buffer), "--buffer.epochs", "2", "--distill.iterations", "2"],
                        reads=("buffer",))
    assert cfg["buffer"]["epochs"] == 2 and "distill" not in cfg
    assert "note: --distill.iterations: not read by this tool" in capsys.readouterr().err
    for wrong, message in ((["--distil.iterations", "2"], "unknown config section 'distil'"),
                           (["--buffer.epoch", "2"], "unknown config key 'buffer.epoch'")):
        with pytest.raises(SystemExit):
            parse_args(["--config", str(buffer), *wrong], reads=("buffer",))
        assert message in capsys.readouterr().err
