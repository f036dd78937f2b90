"""Trajectory-free distillation (methods/statistics/): the statistics on hand-made cases, the merge, k-means, and
CovMatch and MDM through the one loop on the Tux Paint slice (no buffer for CovMatch; resume bit for bit)."""
import copy

import pytest
import torch

from artefacts.distilled import load_distilled
from common.config import ConfigError
from conftest import distill_config, killed_at
from methods.coresets import kmeans
from methods.loop import Distillation
from methods.statistics import StatisticsMatching
from methods.statistics.losses import Features, covmatch, cross_covariance, mmd2
from methods.statistics.sources import merge
from training.context import RunContext
from training.trajectories import TrajectoryError


def _quiet(_msg):
    pass


def _features(n, seed, dv=6, dt=4):
    g = torch.Generator().manual_seed(seed)
    h_v, h_t = torch.randn(n, dv, generator=g, dtype=torch.float64), torch.randn(n, dt, generator=g, dtype=torch.float64)
    return Features(h_v, h_t, torch.nn.functional.normalize(h_v, dim=-1), torch.nn.functional.normalize(h_t, dim=-1))


def test_the_cross_covariance_is_the_off_diagonal_block_of_torch_cov():
    f = _features(9, 0)
    full = torch.cov(torch.cat([f.h_v, f.h_t], dim=1).t())
    assert torch.allclose(cross_covariance(f.h_v, f.h_t), full[:6, 6:], atol=1e-12)


def test_covmatch_is_zero_on_the_real_batch_itself_and_grows_with_rho():
    real = _features(9, 1)
    assert covmatch(real, real, rho=1.0, lam=0.5).item() == 0.0
    c = cross_covariance(real.h_v, real.h_t)
    assert covmatch(real, real, rho=2.0, lam=0.5).item() == pytest.approx(c.pow(2).sum().item())  # ‖2C − C‖²
    shifted = Features(real.h_v, real.h_t, real.z_v + 1, real.z_t)  # only the image means differ, by 1 per entry
    assert covmatch(real, shifted, rho=1.0, lam=0.5).item() == pytest.approx(0.5 * 6)


def test_the_v_statistic_of_a_set_with_itself_is_zero_and_the_unbiased_mmd_is_centred():
    x = torch.nn.functional.normalize(torch.randn(12, 5, generator=torch.Generator().manual_seed(2)), dim=-1)
    assert mmd2(x, x, 0.5, unbiased=False).abs().item() < 1e-6
    g = torch.Generator().manual_seed(3)
    draw = lambda: torch.nn.functional.normalize(torch.randn(8, 5, generator=g), dim=-1)  # noqa: E731
    unbiased = torch.stack([mmd2(draw(), draw(), 0.5) for _ in range(400)])
    biased = torch.stack([mmd2(draw(), draw(), 0.5, unbiased=False) for _ in range(400)])
    assert abs(unbiased.mean().item()) < 3 * unbiased.std().item() / 20  # 0 within 3 standard errors
    assert biased.mean().item() > 10 * biased.std().item() / 20  # the V-statistic is biased upwards


def test_merging_identical_checkpoints_steps_alpha_of_the_way_and_opposite_ones_not_at_all():
    g = torch.Generator().manual_seed(4)
    theta0, theta1 = torch.randn(10, generator=g), torch.randn(10, generator=g)
    sizes = [4, 6]
    assert torch.allclose(merge(theta0, theta1, theta1, sizes, 0.5), theta0 + 0.5 * (theta1 - theta0))
    opposite = 2 * theta0 - theta1  # Δ₂ = −Δ₁: c = −1, where the unclamped weight 2c/(1 + c) explodes
    assert torch.equal(merge(theta0, theta1, opposite, sizes, 0.5), theta0)
    for c in torch.linspace(-0.999, 0.999, 41):  # every angle: the weight stays in [0, 1]
        d1 = torch.tensor([1.0, 0.0])
        d2 = torch.tensor([c.item(), (1 - c ** 2).sqrt().item()])
        merged = merge(torch.zeros(2), d1, d2, [2], 1.0)
        weight = (merged @ (d1 + d2) / 2) / ((d1 + d2) / 2).pow(2).sum()
        assert -1e-6 <= weight.item() <= 1 + 1e-6


def test_kmeans_returns_n_distinct_pairs_deterministically():
    g = torch.Generator().manual_seed(5)
    features = torch.cat([torch.randn(30, 8, generator=g) + 5 * torch.eye(8)[i % 8] for i in range(3)])
    picks = kmeans(features, 12, seed=0)
    assert len(picks) == 12 and len(set(picks.tolist())) == 12
    assert torch.equal(picks, kmeans(features, 12, seed=0))
    assert not torch.equal(picks, kmeans(features, 12, seed=1))


@pytest.fixture
def covmatch_cfg(distill_base, tmp_path):
    cfg = distill_config(distill_base, tmp_path / "covmatch")
    cfg["buffer"]["out_dir"] = str(tmp_path / "no_buffer")
    cfg["distill"] = {"method": "covmatch", "budget": 6, "lr_image": 1.0, "lr_text": 1.0, "iterations": 4,
                      "checkpoint_every": 2, "out_dir": str(tmp_path / "covmatch"), "real_batch": 16,
                      "reset_every": 3, "rho": 1.0, "lam": 0.1}
    return cfg


def test_the_model_gets_no_gradient_from_the_loss(covmatch_cfg):
    ctx = RunContext(covmatch_cfg, splits=("train",), log=_quiet)
    run = Distillation.from_context(ctx, covmatch_cfg, log=_quiet)
    run.method.advance(0)
    student = run.method.source.student
    before = {k: v.clone() for k, v in student.state_dict().items()}
    loss, grads = run.method.gradient(run.method.draw(), run.leaves(), run.dset)
    assert all(p.grad is None for p in student.parameters())
    assert all(torch.equal(v, student.state_dict()[k]) for k, v in before.items())
    assert set(grads) == {"images", "texts"} and grads["images"].abs().sum() > 0 and torch.isfinite(loss)


def test_covmatch_runs_without_a_buffer_and_resumes_bit_for_bit(covmatch_cfg, tmp_path):
    ctx = RunContext(covmatch_cfg, splits=("train",), log=_quiet)
    whole = Distillation.from_context(ctx, covmatch_cfg, log=_quiet).run()
    assert not (tmp_path / "no_buffer").exists() and whole.lrs is None and len(whole) == 6
    assert whole.meta["method"] == "covmatch" and whole.similarity.kind == "identity"
    start = Distillation.from_context(ctx, {**covmatch_cfg, "distill": {**covmatch_cfg["distill"],
                                                                          "out_dir": str(tmp_path / "s")}},
                                      log=_quiet).dset
    assert not torch.equal(whole.images, start.images)  # it learned something
    cfg = copy.deepcopy(covmatch_cfg)
    cfg["distill"]["out_dir"] = str(tmp_path / "B")
    with killed_at(3):  # after the checkpoint of iteration 2, inside the online model's first cycle of 3
        Distillation.from_context(ctx, cfg, log=_quiet).run()
    resumed = Distillation.from_context(ctx, cfg, log=_quiet).run()
    assert torch.equal(resumed.images, whole.images) and torch.equal(resumed.text_features, whole.text_features)
    assert load_distilled(tmp_path / "B" / "distilled.safetensors").meta["losses"] == \
        load_distilled(tmp_path / "covmatch" / "distilled.safetensors").meta["losses"]


def test_mdm_merges_experts_and_without_a_buffer_is_refused(distill_base, tmp_path):
    cfg = distill_config(distill_base, tmp_path / "mdm")
    cfg["distill"] = {"method": "mdm", "budget": 6, "lr_image": 10.0, "lr_text": 10.0, "iterations": 2,
                      "checkpoint_every": 2, "out_dir": str(tmp_path / "mdm"), "real_batch": 16,
                      "max_start_epoch": 2, "init": "kmeans"}
    ctx = RunContext(cfg, splits=("train",), log=_quiet)
    dset = Distillation.from_context(ctx, cfg, log=_quiet).run()
    assert dset.meta["method"] == "mdm" and dset.meta["init"] == "kmeans" and len(set(dset.meta["source_captions"])) == 6
    cfg["buffer"]["out_dir"] = str(tmp_path / "none")
    cfg["distill"]["out_dir"] = str(tmp_path / "mdm2")
    with pytest.raises(TrajectoryError, match="no expert files .* distill.method mdm"):
        Distillation.from_context(ctx, cfg, log=_quiet)
    cfg["distill"]["max_start_epoch"] = 1
    with pytest.raises(ConfigError, match="max_start_epoch must be ≥ 2"):
        Distillation.from_context(ctx, cfg, log=_quiet)
    assert not (tmp_path / "mdm2").exists() and StatisticsMatching


def test_eval_every_keeps_the_set_best_on_val_and_labels_it(covmatch_cfg, tmp_path):
    from evaluation.entries import describe
    covmatch_cfg["distill"].update(eval_every=2, eval_students=1)
    covmatch_cfg["evaluate"].update(epochs=2)
    logged = []
    ctx = RunContext(covmatch_cfg, splits=("train", "val"), log=_quiet)
    Distillation.from_context(ctx, covmatch_cfg, log=logged.append).run()
    recalls = {int(line.split()[1].rstrip(":")): float(line.split("val mean recall ")[1].split()[0])
               for line in logged if "val mean recall" in line}
    best = load_distilled(tmp_path / "covmatch" / "best_val.safetensors")
    assert sorted(recalls) == [2, 4] and best.meta["chosen_on"] == "val"
    assert round(best.meta["val_mean_recall"], 2) == max(recalls.values())
    assert recalls[best.meta["iteration"]] == max(recalls.values())
    assert f"iteration {best.meta['iteration']} chosen on val" in describe(best, "best_val.safetensors")["model"]
