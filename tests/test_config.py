import pytest
import yaml

from common.config import ConfigError, load_config, parse_args


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
