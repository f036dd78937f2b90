"""The three meta-gradient modes on a tiny dual encoder (dropout on, low-rank similarity, wbce):
`exact` equals `unroll`, `tesla` equals them at one step only, and both agree with finite differences."""
import subprocess
import sys

import pytest
import torch
from torch import nn

from conftest import ROOT
from methods.matching.metagrad import InnerLoop, meta_gradient
from networks.checkpointing import checkpoint_blocks
from networks.forward_mode import build_chain, chain_matches, segmented_jvp
from networks.student import DualEncoder, FlatTower
from training.losses import get_loss
from training.similarity import Similarity

N, TEXT_DIM, SIZE = 6, 5, 6


class TinyTower(nn.Module):
    out_dim = 7

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, self.out_dim, 3)

    def forward(self, x):
        return torch.tanh(self.conv(x)).mean(dim=(2, 3))


class BlockTower(nn.Module):
    """Two blocks in a `blocks` sequence (what checkpoint_blocks looks for), dropout inside the second."""
    out_dim = 7

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh()),
                                    nn.Sequential(nn.Dropout(0.3), nn.Conv2d(4, self.out_dim, 3), nn.Tanh()))

    def forward(self, x):
        return self.blocks(x).mean(dim=(2, 3))


class ChainTower(nn.Module):
    """A plain chain of children (as timm's backbones are), which the forward-mode segments can follow."""
    out_dim = 7

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.blocks = nn.Sequential(nn.Sequential(nn.Tanh(), nn.Conv2d(4, 6, 3)), nn.Sequential(nn.GELU()))
        self.head = nn.Sequential(nn.Conv2d(6, self.out_dim, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def make_problem(steps, dtype=torch.float32, blend=False, tower=TinyTower, checkpointed=False, precision="fp32"):
    """Student, inner loop and learnable tensors of a 6-pair synthetic set, plus an expert segment."""
    torch.manual_seed(0)
    student = DualEncoder(tower(), TEXT_DIM, temperature=0.5, dropout=0.1).to(dtype).train()
    segments = None
    if checkpointed and tower is ChainTower:
        segments = build_chain(student.image, student.flat["image"])
        probe = torch.randn(2, 3, SIZE, SIZE, dtype=dtype, generator=torch.Generator().manual_seed(5))
        assert len(segments) == 5 and chain_matches(student.image, segments, probe)
    elif checkpointed:
        assert checkpoint_blocks(student.image) == (5 if tower is BlockTower else 1)  # every layer of the 2 stages
    sim = Similarity("lowrank", N, rank=2, alpha=1.0, generator=torch.Generator().manual_seed(1))
    sim.params["sim_right"] = 0.3 * torch.randn(N, 2)  # away from the all-zero init: every factor matters
    syn = {"images": torch.randn(N, 3, SIZE, SIZE), "texts": torch.randn(N, TEXT_DIM), **sim.params}
    syn = {k: v.to(dtype).requires_grad_(True) for k, v in syn.items()}
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randperm(N, generator=gen)[:3] for _ in range(steps)]
    seeds = torch.randint(2 ** 31, (steps,), generator=gen)
    inner = InnerLoop(student, get_loss("wbce"), sim, batches, seeds, blend=blend, precision=precision,
                      segments=segments)
    start = student.flatten()
    target = {t: v + 0.05 * torch.randn(v.shape, generator=gen, dtype=dtype) for t, v in start.items()}
    return inner, syn, start, target


def run(mode, steps, eta, merge, dtype=torch.float32, blend=False, offload="none", **problem):
    inner, syn, start, target = make_problem(steps, dtype, blend, **problem)
    lrs = {"image": torch.tensor(eta, dtype=dtype, requires_grad=True),
           "text": torch.tensor(0.7 * eta, dtype=dtype, requires_grad=True)}
    loss, syn_grads, lr_grads = meta_gradient(mode, inner, start, target, lrs, syn, num_steps=steps, merge=merge, offload=offload)
    return loss, {**syn_grads, **{f"lr_{t}": g for t, g in lr_grads.items()}}


def relative_error(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize("steps", [1, 4, 8])
@pytest.mark.parametrize("eta", [0.1, 0.5])
@pytest.mark.parametrize("merge", [False, True])
def test_exact_equals_unroll(steps, eta, merge):
    loss_u, unrolled = run("unroll", steps, eta, merge)
    loss_e, exact = run("exact", steps, eta, merge)
    assert loss_e.item() == pytest.approx(loss_u.item(), rel=1e-5)
    assert set(exact) == {"images", "texts", "sim_diag", "sim_left", "sim_right", "lr_image", "lr_text"}
    for name, g in unrolled.items():
        assert g.abs().sum() > 0, name
        assert relative_error(exact[name], g) < 1e-4, name


@pytest.mark.parametrize("offload", ["host", "disk"])
def test_offloaded_steps_give_the_same_gradients(offload):
    _, kept = run("exact", 4, 0.5, False)
    _, offloaded = run("exact", 4, 0.5, False, offload=offload)
    for name, g in kept.items():
        assert torch.equal(offloaded[name], g), name


@pytest.mark.parametrize("tower", [TinyTower, BlockTower, ChainTower])
def test_checkpointed_activations_give_the_same_meta_gradient(tower):
    for mode in ("exact", "tesla", "unroll"):
        _, plain = run(mode, 4, 0.5, False, tower=tower)
        _, checkpointed = run(mode, 4, 0.5, False, tower=tower, checkpointed=True)
        for name, g in plain.items():
            assert g.abs().sum() > 0 and relative_error(checkpointed[name], g) < 1e-6, (mode, name)
    _, unrolled = run("unroll", 4, 0.5, False, tower=tower, checkpointed=True)
    _, exact = run("exact", 4, 0.5, False, tower=tower, checkpointed=True)
    for name, g in unrolled.items():  # and exact still equals unroll with it on
        assert relative_error(exact[name], g) < 1e-4, name


def segmented_and_torchs_gradients(tower, chain):
    """The gradients (θ, images) of a weighted sum of the tower's output and its directional derivative, through
    `segmented_jvp` over `chain` and through torch's own forward-mode graph (draws continue the caller's seed)."""
    flat = FlatTower(tower)
    theta, tangent = flat.flatten().requires_grad_(True), torch.randn(flat.numel)
    images = torch.randn(2, 3, 8, 8, requires_grad=True)
    weights = torch.randn(2, 2, 5, 4, 4)

    def gradients(u, u_dot):
        return torch.autograd.grad((weights[0] * u + weights[1] * u_dot).sum(), [theta, images])

    segmented = gradients(*segmented_jvp(chain, flat, theta, tangent, images))
    own = gradients(*torch.func.jvp(flat, (theta, images), (tangent, torch.zeros_like(images))))
    return zip(segmented, own)


def test_segment_recomputation_keeps_torchs_numbers_with_silu():
    """A segment recomputes SiLU's tangent its own way (keeping less for the backward): the gradients through it are
    those of torch's own forward-mode graph, bit for bit, with SiLU in place too (NFNet's)."""
    torch.manual_seed(0)
    tower = nn.Sequential(nn.Conv2d(3, 4, 3), nn.SiLU(inplace=True), nn.Conv2d(4, 5, 3), nn.SiLU())
    for mine, torchs in segmented_and_torchs_gradients(tower, [(tower, "")]):
        assert torch.equal(mine, torchs)


@pytest.mark.parametrize("act", [nn.SiLU, nn.ReLU])
def test_a_segment_that_works_in_place_leaves_its_input_alone(act):
    """An activation that is a segment of its own and works in place (NFNet's final_act before timm 1.0.31) would
    overwrite the input its segment keeps for the backward; segments run it out of place, with torch's gradients."""
    torch.manual_seed(0)
    tower = nn.Sequential(nn.Conv2d(3, 4, 3), act(inplace=True), nn.Conv2d(4, 5, 3))
    chain = [(module, f"{i}.") for i, module in enumerate(tower)]
    for mine, torchs in segmented_and_torchs_gradients(tower, chain):
        assert relative_error(mine, torchs) < 1e-6


@pytest.mark.parametrize("eta", [0.1, 0.5])
def test_bf16_meta_gradient_stays_within_five_percent_of_fp32(eta):
    """Bound: 5% relative error and cosine ≥ 0.998 per tensor. This tower's few, tiny layers round like bf16's 8-bit
    mantissa without averaging (measured 0.3–3.4%); docs/benchmarks.md (bf16) gives the figure on the demo model."""
    _, fp32 = run("exact", 4, eta, False, tower=BlockTower)
    _, bf16 = run("exact", 4, eta, False, tower=BlockTower, precision="bf16")
    errors = {name: relative_error(bf16[name], g) for name, g in fp32.items()}
    assert 0 < max(errors.values()) <= 5e-2, errors  # > 0: bf16 really ran
    for name, g in fp32.items():
        assert torch.nn.functional.cosine_similarity(bf16[name].flatten(), g.flatten(), dim=0) >= 0.998, name


def test_exact_equals_unroll_with_representation_blending():
    _, unrolled = run("unroll", 4, 0.5, False, blend=True)
    _, exact = run("exact", 4, 0.5, False, blend=True)
    for name, g in unrolled.items():
        assert relative_error(exact[name], g) < 1e-4, name


def test_tesla_is_exact_at_one_step_and_a_surrogate_beyond():
    _, unrolled = run("unroll", 1, 0.5, False)
    _, tesla = run("tesla", 1, 0.5, False)
    for name, g in unrolled.items():
        assert relative_error(tesla[name], g) < 1e-4, name
    _, unrolled = run("unroll", 8, 0.5, False)
    _, tesla = run("tesla", 8, 0.5, False)
    errors = {name: relative_error(tesla[name], g) for name, g in unrolled.items()}
    assert errors["images"] > 1e-2 and errors["texts"] > 1e-2, errors


def test_dropout_is_replayed_when_a_step_is_rebuilt():
    inner, syn, start, _ = make_problem(2)
    first, second = inner(1, start, syn), inner(1, start, syn)
    assert torch.equal(first, second)
    other = inner(0, start, syn)  # another step: another batch and another dropout mask
    assert not torch.equal(first, other)


@pytest.mark.parametrize("mode", ["exact", "unroll"])
def test_gradients_match_finite_differences(mode):
    steps, eta = 3, 0.3
    _, grads = run(mode, steps, eta, False, dtype=torch.float64)
    inner, syn, start, target = make_problem(steps, torch.float64)
    lrs = {"image": torch.tensor(eta, dtype=torch.float64), "text": torch.tensor(0.7 * eta, dtype=torch.float64)}
    gen = torch.Generator().manual_seed(3)
    for name in ("images", "texts"):
        direction = torch.randn(syn[name].shape, generator=gen, dtype=torch.float64)
        h = 1e-5

        def loss_at(shift):
            shifted = {k: (v + shift * direction if k == name else v).detach() for k, v in syn.items()}
            loss, _, _ = meta_gradient("unroll", inner, start, target, lrs, shifted, num_steps=steps)
            return loss.item()

        numeric = (loss_at(h) - loss_at(-h)) / (2 * h)
        analytic = (grads[name] * direction).sum().item()
        assert analytic == pytest.approx(numeric, rel=1e-5), name


def test_unknown_mode_is_refused():
    inner, syn, start, target = make_problem(1)
    with pytest.raises(ValueError, match="unroll, tesla, exact"):
        meta_gradient("second-order", inner, start, target, {"image": 0.1, "text": 0.1}, syn, num_steps=1)


def test_bf16_meta_gradient_runs_on_the_demo_tower(tiny_cfg):
    """The real EfficientNet-Lite0 (BatchNormAct, ReLU6 in place) under bf16: forward mode under autocast failed there
    (a convolution got a bf16 weight and an fp32 input), so bf16 steps take reverse over reverse. The meta-gradient is
    finite, and bf16 really ran (it differs from fp32's)."""
    from training.context import RunContext
    ctx = RunContext(tiny_cfg, splits=("test",), log=lambda *_: None)
    grads = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        student = ctx.new_student(0).train()
        sim = Similarity("identity", N)
        syn = {"images": torch.randn(N, 3, 32, 32, requires_grad=True),
               "texts": torch.randn(N, ctx.text_encoder.hidden_size, requires_grad=True)}
        batches = [torch.arange(3), torch.arange(3, 6)]
        inner = InnerLoop(student, get_loss("wbce"), sim, batches, [1, 2], precision=precision)
        start = student.flatten()
        noise = torch.Generator().manual_seed(3)
        target = {t: v + 0.01 * torch.randn(v.shape, generator=noise) for t, v in start.items()}
        lrs = {t: torch.tensor(0.01, requires_grad=True) for t in start}
        _, syn_grads, _ = meta_gradient("exact", inner, start, target, lrs, syn, num_steps=2, merge=False, offload="none")
        grads[precision] = syn_grads["images"]
        assert torch.isfinite(syn_grads["images"]).all() and syn_grads["images"].abs().sum() > 0, precision
    assert not torch.equal(grads["bf16"], grads["fp32"])


def test_forward_mode_says_nothing_of_torchs_own_scripting():
    """torch scripts its JVP decompositions on first use and warns that torch.jit.script is deprecated; importing
    networks.forward_mode (as every meta-gradient does) silences that, and only that, FutureWarning."""
    code = ("import torch, warnings\nfrom torch.autograd import forward_ad\nimport networks.forward_mode\n"
            "with forward_ad.dual_level():\n"
            "    x = forward_ad.make_dual(torch.randn(4, 3), torch.randn(4, 3))\n"
            "    torch.nn.functional.cross_entropy(x, torch.tensor([0, 1, 2, 0]))\n"
            "warnings.warn('another', FutureWarning)\n")
    done = subprocess.run([sys.executable, "-W", "error::FutureWarning", "-c", code], cwd=ROOT, capture_output=True,
                          text=True)
    assert "torch.jit.script" not in done.stderr and "FutureWarning: another" in done.stderr
