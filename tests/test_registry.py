"""The method seam (methods/registry.py, methods/loop.py): a method registered here, in the test, needing no buffer,
runs through distill.py's loop (checkpoint, bit-identical resume), is checked by the schema and listed by --help,
and its set is evaluated by evaluate.py; nothing outside this file knows it."""
import copy

import pytest
import torch
import yaml

import distill
import evaluate
from artefacts.distilled import load_distilled
from artefacts.pairs import random_pairs, real_pairs
from common.config import ConfigError
from common.schema import Key, number
from conftest import killed_at
from methods.loop import Distillation, Method
from methods.registry import REGISTRY, MethodSpec, register, unregister
from training.context import RunContext
from training.similarity import Similarity


class MeanMatching(Method):
    """Pull the mean synthetic text feature towards the mean of a random real batch, and the images towards their
    own mean (a toy, not a method): no experts, no inner loop, no learned lr."""

    def __init__(self, ctx, d):
        self.d, self.features = d, ctx.features["train"]
        self.generator = torch.Generator().manual_seed(d["seed"])
        picks = random_pairs(ctx.splits["train"], d["budget"], d["seed"])
        meta = {**ctx.artefact_identity(), "method": "toy", "loss": "infonce", "budget": d["budget"],
                "seed": d["seed"]}
        self.initial_set = real_pairs(ctx.splits["train"], self.features, ctx.test_transform, picks, meta)
        self.initial_set.similarity = Similarity("identity", d["budget"])

    @classmethod
    def build(cls, ctx, cfg, d, log):
        return cls(ctx, d)

    def groups(self, leaves):
        return [(["images"], self.d["lr_image"]), (["texts"], self.d["lr_text"])]

    def draw(self):
        return torch.randint(len(self.features), (self.d["real_batch"],), generator=self.generator)

    def gradient(self, item, leaves, dset):
        images, texts = (leaves[k].detach().requires_grad_(True) for k in ("images", "texts"))
        loss = (texts.mean(0) - self.features[item].mean(0)).pow(2).sum() \
            + self.d["image_weight"] * (images - images.mean(0).detach()).pow(2).mean()
        image_grad, text_grad = torch.autograd.grad(loss, (images, texts))
        return loss.detach(), {"images": image_grad, "texts": text_grad}

    def state(self):
        return {"toy_rng": self.generator.get_state()}

    def load_state(self, tensors):
        self.generator.set_state(tensors["toy_rng"])


@pytest.fixture
def toy():
    keys = {"real_batch": Key(8, lambda v: (isinstance(v, int) and v >= 1, "a whole number ≥ 1"), "real pairs"),
            "image_weight": Key(0.1, number(0), "weight of the image term")}
    spec = register(MethodSpec("toy", "mean matching (a test's toy)", MeanMatching.build, keys))
    yield spec
    unregister("toy")
    assert "toy" not in REGISTRY


def _config(distill_base, tmp_path, **distill_keys):
    cfg = copy.deepcopy(distill_base)
    cfg["buffer"]["out_dir"] = str(tmp_path / "no_buffer")  # never read
    cfg["evaluate"].update(students=1, epochs=2, checkpoint_every=1)
    cfg["distill"] = {"method": "toy", "budget": 6, "lr_image": 1.0, "lr_text": 0.5, "iterations": 4,
                      "checkpoint_every": 2, "out_dir": str(tmp_path / "toy"), **distill_keys}
    path = tmp_path / "toy.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_registered_method_runs_checkpoints_resumes_and_is_evaluated(toy, distill_base, tmp_path):
    whole = distill.main(["--config", str(_config(distill_base, tmp_path / "a"))])
    assert not (tmp_path / "a" / "no_buffer").exists()  # it needs no experts
    out = tmp_path / "a" / "toy"
    assert (out / "checkpoint.safetensors").is_file() and (out / "grid_00002.png").is_file()
    saved = load_distilled(out / "distilled.safetensors")
    assert saved.meta["method"] == "toy" and saved.lrs is None and saved.meta["iteration"] == 4
    cfg = yaml.safe_load((tmp_path / "a" / "toy.yaml").read_text())
    ctx = RunContext(cfg, splits=("train",), log=print)
    start, real_mean = Distillation.from_context(ctx, cfg).dset, ctx.features["train"].mean(0)  # iteration 0
    assert (saved.text_features.mean(0) - real_mean).norm() < 0.5 * (start.text_features.mean(0) - real_mean).norm()

    # killed after the checkpoint of iteration 2, then resumed: the same set, bit for bit
    config = _config(distill_base, tmp_path / "b")
    with killed_at(3):
        distill.main(["--config", str(config)])
    resumed = distill.main(["--config", str(config)])
    assert torch.equal(resumed.images, whole.images) and torch.equal(resumed.text_features, whole.text_features)
    assert load_distilled(tmp_path / "b" / "toy" / "distilled.safetensors").meta["losses"] == saved.meta["losses"]

    results = tmp_path / "results.json"
    [entry] = evaluate.main(["--config", str(config), "--distilled", str(out / "distilled.safetensors"),
                             "--out", str(results)])
    assert entry["method"] == "toy" and entry["students"] == 1 and results.is_file()
    assert 0 <= entry["protocols"]["last epoch"]["mean"][0] <= 100


def test_the_schema_takes_the_methods_own_keys_from_the_registry(toy, distill_base, tmp_path, capsys):
    with pytest.raises(SystemExit):
        distill.main(["--config", str(_config(distill_base, tmp_path, real_batch=0))])
    assert "distill.real_batch must be a whole number ≥ 1, not 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        distill.main(["--config", str(_config(distill_base, tmp_path, syn_steps=2))])
    assert "distill.syn_steps is a key of mtt-vl, tesla-vl, lors, repblend, not of distill.method 'toy'" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):
        distill.main(["--help"])
    listed = capsys.readouterr().out
    assert "toy        mean matching (a test's toy)" in listed and "--distill.image_weight" in listed


def test_a_method_name_is_registered_once():
    with pytest.raises(ValueError, match="already registered"):
        register(MethodSpec("lors", "again", MeanMatching.build))
    with pytest.raises(ConfigError, match="unknown distill.method 'nope'; choose one of mtt-vl, tesla-vl, lors"):
        from methods.registry import get_method
        get_method("nope")
