"""The student lrs a distillation learns (`distill.lr_space`): a raw lr below zero stops the run, a log-space one
cannot cross zero."""
import math

import pytest
import torch

import methods.matching as matching
from conftest import distill_config as distill_cfg
from conftest import file_digests
from methods.loop import Distillation, LearnedLrs
from methods.registry import resolve_method
from training.context import RunContext


def _quiet(_msg):
    pass


@pytest.fixture(scope="module")
def ctx(distill_base):
    return RunContext(distill_base, splits=("train",), log=_quiet)


def _pushing_the_image_lr_down(monkeypatch):
    """The meta-gradient of the image lr replaced by 1e4: one SGD step of lr_lr 1e-5 moves its parameter by -0.1."""
    real = matching.meta_gradient

    def pushed(*args, **kwargs):
        loss, syn_grads, lr_grads = real(*args, **kwargs)
        return loss, syn_grads, {**lr_grads, "image": torch.tensor(1e4)}

    monkeypatch.setattr(matching, "meta_gradient", pushed)


def _run(distill_base, ctx, out, **distill):
    return Distillation.from_context(ctx, distill_cfg(distill_base, out, **distill), log=_quiet).run()


def test_a_raw_learned_lr_below_zero_stops_the_run_and_writes_nothing(distill_base, ctx, tmp_path, monkeypatch):
    out = tmp_path / "negative"
    _run(distill_base, ctx, out, iterations=2, lr_space="raw")
    before = file_digests(out)
    _pushing_the_image_lr_down(monkeypatch)  # 0.01 - 0.1 < 0
    with pytest.raises(FloatingPointError, match=r"distillation iteration 2: the learned student lr became "
                                                 r"\{'image': -0\.0[0-9]+\}; nothing was written"):
        _run(distill_base, ctx, out, iterations=4, lr_space="raw")
    assert file_digests(out) == before


def test_a_log_space_learned_lr_stays_positive_under_the_same_push(distill_base, ctx, tmp_path, monkeypatch):
    """lr = lr₀·exp(u/lr₀); the step that takes a raw lr to -0.09 takes u to -0.1: lr = 0.01·e^-10."""
    assert distill_cfg(distill_base, tmp_path / "x")["distill"]["lr_space"] is None  # the recipe's: ours → log
    _pushing_the_image_lr_down(monkeypatch)
    dset = _run(distill_base, ctx, tmp_path / "log", iterations=1)
    assert dset.lrs["image"] == pytest.approx(0.01 * math.exp(-10), rel=1e-4)
    reference = distill_cfg(distill_base, tmp_path / "ref")["distill"]
    assert resolve_method(reference, "full", "reference")["lr_space"] == "raw"  # the public code's, which stops


@pytest.mark.parametrize("space", ["log", "raw"])
def test_learned_lr_gradients_follow_the_chain_rule(space):
    """LearnedLrs.gradient is autograd's d loss/d u through lr(u), and the parameter of lr₀ is 0 in log space."""
    lrs = LearnedLrs({"image": 0.05}, space)
    start = lrs.parameter("image", torch.tensor(0.05))
    assert start.item() == pytest.approx(0.0 if space == "log" else 0.05)
    u = torch.tensor(0.03, requires_grad=True)
    lr = lrs.value("image", u)
    (lr ** 2).backward()  # d loss / d lr = 2 lr
    assert lrs.gradient("image", u.detach(), 2 * lr.detach()).item() == pytest.approx(u.grad.item(), rel=1e-6)
    assert lrs.value("image", lrs.parameter("image", torch.tensor(0.2))).item() == pytest.approx(0.2, rel=1e-6)
