"""EDGE (docs/methods.md §5) with tiny random diffusers/transformers components loaded from local folders, on a slice
of the real Tux Paint data: the losses against hand-written formulas, which parameters train, resuming,
seeded and resumable sampling, caption synthesis, the export read by evaluate.py, and refused inputs."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import evaluate
import generate
from artefacts.distilled import load_distilled
from common.config import load_config, save_config
from methods.edge import finetune as edge_module
from methods.edge.finetune import (FinetuneError, checkpoint_activations, clean_estimate, contrastive, edge_loss,
                                   finetune, finetuned_generator, noised)
from methods.edge.generation import SampleError, caption, generate_images, sample, set_folder, write_dataset
from networks.captioner import CaptionerError, load_captioner
from networks.generator import load_generator, make_trainable
from networks.tiny import build_all
from networks.weights import ModelNotFoundError
from training.losses import diversity

ROOT = Path(__file__).resolve().parents[1]
TUXPAINT = ROOT / "datasets" / "tuxpaint"


def _quiet(_msg):
    pass


@pytest.fixture(scope="module")
def components(tmp_path_factory):
    return build_all(tmp_path_factory.mktemp("tiny_edge"), resolution=32)


@pytest.fixture(scope="module")
def cfg(tux_slice, shared_cache, components, tmp_path_factory):
    cfg = load_config(ROOT / "configs" / "tuxpaint" / "edge.yaml")
    cfg["data"].update(name="tuxslice", annotations=str(tux_slice), image_root=str(TUXPAINT / "images"))
    cfg["edge"].update(generator=str(components / "generator"), clip=str(components / "clip"),
                       captioner=str(components / "captioner"), out_dir=str(tmp_path_factory.mktemp("edge")),
                       batch_size=10, epochs=1, checkpoint_every=1, budget=6, cpi=2, steps=3, sample_batch_size=2,
                       max_new_tokens=6)
    cfg["evaluate"].update(students=1, epochs=1, checkpoint_every=1)
    cfg.update(cache_dir=str(shared_cache), device="cpu")
    return cfg


@pytest.fixture(scope="module")
def finetuned(cfg):
    return finetune(cfg, log=_quiet)


@pytest.fixture(scope="module")
def sampled(cfg, finetuned):
    folder = set_folder(cfg["edge"])
    sample(cfg, finetuned, folder, log=_quiet)
    return folder


# ---- losses -------------------------------------------------------------------------------------------------

def test_contrastive_loss_is_the_symmetric_cross_entropy_written_out():
    torch.manual_seed(0)
    u, v, tau = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64), 0.1
    cos = [[(u[i] @ v[j] / (u[i].norm() * v[j].norm())).item() / tau for j in range(5)] for i in range(5)]
    rows = sum(-cos[i][i] + math.log(sum(math.exp(cos[i][j]) for j in range(5))) for i in range(5)) / 5
    cols = sum(-cos[j][j] + math.log(sum(math.exp(cos[i][j]) for i in range(5))) for j in range(5)) / 5
    assert contrastive(u, v, tau).item() == pytest.approx(0.5 * (rows + cols), rel=1e-10)


def test_diversity_is_the_mean_off_diagonal_cosine_of_the_joint_features():
    torch.manual_seed(1)
    u, v = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    w = [torch.cat([u[i], v[i]]) / torch.cat([u[i], v[i]]).norm() for i in range(4)]
    expected = sum((w[i] @ w[j]).item() for i in range(4) for j in range(4) if i != j) / 12
    assert diversity(u, v).item() == pytest.approx(expected, rel=1e-10)
    same = torch.ones(3, 2)
    assert diversity(same, same).item() == pytest.approx(1.0)  # identical pairs: no diversity at all


def test_the_clean_estimate_recovers_z0_when_the_noise_is_predicted_exactly(components):
    gen = load_generator(components / "generator")
    torch.manual_seed(2)
    z0, eps = torch.randn(3, 4, 8, 8, dtype=torch.float64), torch.randn(3, 4, 8, 8, dtype=torch.float64)
    alpha_bar = gen.alpha_bar(torch.tensor([0, 500, 999])).double()
    z_t = noised(z0, eps, alpha_bar)
    assert torch.allclose(clean_estimate(z_t, eps, alpha_bar), z0, atol=1e-10)
    assert not torch.allclose(clean_estimate(z_t, torch.zeros_like(eps), alpha_bar), z0, atol=1e-2)


# ---- what trains ----------------------------------------------------------------------------------------------

def _is_bias_or_norm(name):
    return name.endswith(".bias") or "norm" in name.rpartition(".")[0].rpartition(".")[2]


def test_fine_tuning_changes_only_the_denoisers_bias_and_normalisation_parameters(cfg, finetuned):
    before = load_generator(cfg["edge"]["generator"]).unet.state_dict()
    after = finetuned_generator(finetuned).unet.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    trainable = set(make_trainable(load_generator(cfg["edge"]["generator"]).unet, "bias-norm"))
    assert changed and changed <= trainable and all(_is_bias_or_norm(n) for n in trainable)
    assert len(changed) > 0.9 * len(trainable)
    assert not any(n.endswith(".weight") and not _is_bias_or_norm(n) for n in changed)


def test_lora_starts_as_the_original_and_only_its_adapters_get_gradients(cfg, components):
    from networks.generator import FrozenCLIP
    gen = load_generator(components / "generator")
    torch.manual_seed(3)
    z, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    states = gen.encode_prompts(["a red apple", "a dog"])
    reference = gen.unet(z, t, encoder_hidden_states=states).sample
    lora = make_trainable(gen.unet, "lora", lora_rank=2)
    assert lora and all(".lora_" in n for n in lora)
    assert torch.allclose(gen.unet(z, t, encoder_hidden_states=states).sample, reference, atol=1e-6)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    edge_loss(gen, FrozenCLIP(components / "clip"), pixels, ["a red apple", "a dog"],
              torch.Generator().manual_seed(0)).total.backward()
    with_grad = {n for n, p in gen.unet.named_parameters() if p.grad is not None}
    assert with_grad == set(lora)
    assert all(lora[n].grad.abs().sum() > 0 for n in lora if "lora_up" in n)
    before = {n: p.detach().clone() for n, p in gen.unet.named_parameters()}
    torch.optim.SGD(lora.values(), lr=0.1).step()
    changed = {n for n, p in gen.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= set(lora)


def _loss_gradients(components, checkpointed, trainable="bias-norm"):
    from networks.generator import FrozenCLIP
    gen, clip = load_generator(components / "generator"), FrozenCLIP(components / "clip")
    params = make_trainable(gen.unet, trainable)
    if checkpointed:
        checkpoint_activations(gen)
    torch.manual_seed(4)
    pixels = torch.rand(3, 3, 32, 32) * 2 - 1
    edge_loss(gen, clip, pixels, ["a red apple", "a dog", "a boat"], torch.Generator().manual_seed(1)).total.backward()
    return {n: p.grad for n, p in params.items()}


def test_gradient_checkpointing_leaves_the_gradients_as_they_were(components, monkeypatch):
    import torch.utils.checkpoint
    calls, real = [], torch.utils.checkpoint.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    plain = _loss_gradients(components, False)
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counted)
    checkpointed = _loss_gradients(components, True)
    assert calls  # the denoiser and the VAE decoder really recomputed their blocks
    assert all(torch.allclose(plain[n], checkpointed[n], rtol=1e-4, atol=1e-7) for n in plain)


def test_an_interrupted_fine_tuning_resumes_to_the_same_parameters(cfg, finetuned, tmp_path, monkeypatch):
    resumed_cfg = {**cfg, "edge": {**cfg["edge"], "out_dir": str(tmp_path)}}
    real = edge_module.edge_loss
    monkeypatch.setattr(edge_module, "edge_loss", _dies_after_one_step(real))
    with pytest.raises(KeyboardInterrupt):
        finetune(resumed_cfg, log=_quiet)
    monkeypatch.setattr(edge_module, "edge_loss", real)
    path = finetune(resumed_cfg, log=_quiet)
    resumed, uninterrupted = load_file(str(path)), load_file(str(finetuned))
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_resuming_with_other_settings_is_refused(cfg, finetuned):
    changed = {**cfg, "edge": {**cfg["edge"], "lr": 0.5}}
    with pytest.raises(FinetuneError, match="other settings \\(lr\\)"):
        finetune(changed, log=_quiet)


# ---- sampling and captions ------------------------------------------------------------------------------------

def test_sampling_with_the_same_seed_gives_the_same_images(finetuned):
    from diffusers import DDIMScheduler
    gen = finetuned_generator(finetuned)
    scheduler = DDIMScheduler.from_config(gen.scheduler.config)
    prompts = ["a red apple", "a green tree"]
    first = generate_images(gen, scheduler, prompts, [5, 6], steps=3, guidance=7.5)
    assert first.shape == (2, 32, 32, 3) and first.dtype == torch.uint8
    assert torch.equal(first, generate_images(gen, scheduler, prompts, [5, 6], steps=3, guidance=7.5))
    assert not torch.equal(first, generate_images(gen, scheduler, prompts, [7, 6], steps=3, guidance=7.5))


def test_an_interrupted_sample_run_keeps_finished_images_and_makes_the_rest(cfg, finetuned, sampled, tmp_path):
    from PIL import Image
    folder = tmp_path / "set"
    shutil.copytree(sampled, folder)
    (folder / "dataset.json").unlink()
    names = sorted(p.name for p in (folder / "images").iterdir())
    assert len(names) == 3  # budget 6, 2 captions per image
    (folder / "images" / names[1]).unlink()
    kept = {n: (folder / "images" / n).stat().st_mtime_ns for n in (names[0], names[2])}
    assert sample(cfg, finetuned, folder, log=_quiet) == 1
    assert {n: (folder / "images" / n).stat().st_mtime_ns for n in kept} == kept
    remade, original = (np.asarray(Image.open(f / "images" / names[1])) for f in (folder, sampled))
    assert np.array_equal(remade, original)
    assert json.loads((folder / "dataset.json").read_text()) == json.loads((sampled / "dataset.json").read_text())
    write_dataset(folder, names, [["first", "second"]] * 3, captioned=True)
    captioned = (folder / "dataset.json").read_text()
    assert sample(cfg, finetuned, folder, log=_quiet) == 0  # nothing left to make, and the captions stay
    assert (folder / "dataset.json").read_text() == captioned


@pytest.mark.parametrize("kind,model", [("image-to-text", "captioner"), ("image-to-text", "llava"),
                                        ("paraphrase", "paraphraser")])
def test_captioning_gives_each_image_its_prompt_and_cpi_minus_one_new_captions(cfg, sampled, components, kind,
                                                                               model, tmp_path):
    folder = tmp_path / "set"
    shutil.copytree(sampled, folder)
    spec = components / model
    captioner = load_captioner(kind, spec, cfg["edge"]["instruction"], torch.device("cpu"), max_new_tokens=5)
    caption(cfg, folder, captioner, log=_quiet)
    prompts = json.loads((folder / "prompts.json").read_text())["prompts"]
    entries = json.loads((folder / "dataset.json").read_text())["images"]
    assert [[s["raw"] for s in e["sentences"]][0] for e in entries] == prompts
    # the new caption is the captioner's (an empty answer would fall back to the prompt)
    assert all(len(e["sentences"]) == 2 and e["sentences"][1]["raw"] != e["sentences"][0]["raw"] for e in entries)


def test_the_exported_set_is_evaluated_like_any_distilled_set(cfg, sampled, tmp_path):
    edge_cfg = {**cfg, "edge": {**cfg["edge"], "out_dir": str(tmp_path / "edge")}}
    folder = set_folder(edge_cfg["edge"])
    shutil.copytree(sampled, folder)
    cfg_file = tmp_path / "edge.yaml"
    save_config(edge_cfg, cfg_file)
    generate.main(["caption", "--config", str(cfg_file)])
    generate.main(["export", "--config", str(cfg_file)])
    out = folder / "distilled.safetensors"
    dset = load_distilled(out)
    assert len(dset) == 6 and dset.meta["method"] == "edge" and dset.meta["image_size"] == 32
    assert dset.images[0].equal(dset.images[1])  # each image once per caption
    result_file = tmp_path / "results.json"
    evaluate.main(["--config", str(cfg_file), "--distilled", str(out), "--out", str(result_file)])
    result = json.loads(result_file.read_text())
    assert len(result["results"]) == 1 and result["results"][0]["method"] == "edge"


# ---- refused inputs -------------------------------------------------------------------------------------------

def test_a_diffusion_checkpoint_that_does_not_exist_is_named(tmp_path, components):
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_generator(tmp_path / "no-such-model")
    incomplete = tmp_path / "incomplete"
    shutil.copytree(components / "generator", incomplete, ignore=shutil.ignore_patterns("vae"))
    with pytest.raises(ModelNotFoundError, match="cannot be loaded"):
        load_generator(incomplete)


def test_a_captioner_that_cannot_be_loaded_is_named(tmp_path, components):
    with pytest.raises(CaptionerError, match="captioner .*cannot be loaded"):
        load_captioner("image-to-text", tmp_path / "no-captioner", "Describe.", torch.device("cpu"))
    with pytest.raises(CaptionerError, match="captioner_kind"):
        load_captioner("telepathy", components / "captioner", "Describe.", torch.device("cpu"))


def test_cpi_larger_than_the_budget_is_refused_before_anything_is_written(cfg, finetuned, tmp_path):
    too_many = {**cfg, "edge": {**cfg["edge"], "budget": 4, "cpi": 5}}
    with pytest.raises(SampleError, match="cpi = 5 .* budget of 4"):
        sample(too_many, finetuned, tmp_path / "set", log=_quiet)
    assert not (tmp_path / "set").exists()


def test_an_unfinished_fine_tuning_cannot_be_sampled(cfg, tmp_path, monkeypatch):
    partial = {**cfg, "edge": {**cfg["edge"], "out_dir": str(tmp_path)}}
    monkeypatch.setattr(edge_module, "edge_loss", _dies_after_one_step(edge_module.edge_loss))
    with pytest.raises(KeyboardInterrupt):
        finetune(partial, log=_quiet)
    with pytest.raises(FinetuneError, match="unfinished"):
        finetuned_generator(tmp_path / "finetune.safetensors")


def _dies_after_one_step(real):
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    return wrapped
