"""Tests for training/losses.py: each loss against a hand computation on a tiny logits matrix (explicit
loops and `math`, no torch reductions), the relations between the losses, the name registry, and the
gradients that must reach both the logits and the (learned) soft targets."""
import math

import pytest
import torch

from training.losses import LOSSES, bce, cwcl, get_loss, infonce, kl, mse, wbce

Z3 = [[2.0, 0.5, -1.0],
      [0.3, 1.5, 0.2],
      [-0.7, 0.9, 1.1]]
# a soft similarity block: 0.6 off the diagonal is a positive, the diagonal 0.5 is not (S > 0.5)
S3 = [[0.9, 0.1, 0.6],
      [0.2, 0.5, 0.0],
      [0.3, 0.4, 1.0]]
# doubly stochastic: every row and every column sums to one
Q3 = [[0.5, 0.3, 0.2],
      [0.2, 0.5, 0.3],
      [0.3, 0.2, 0.5]]
EYE3 = [[1.0 if i == j else 0.0 for j in range(3)] for i in range(3)]


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def column(m, j):
    return [row[j] for row in m]


def log_softmax(values):
    top = max(values)
    log_sum = top + math.log(sum(math.exp(v - top) for v in values))
    return [v - log_sum for v in values]


def log_sigmoid(z):
    return -math.log1p(math.exp(-z))


def bce_term(z, s):
    return -(s * log_sigmoid(z) + (1 - s) * log_sigmoid(-z))


def hand_soft_infonce(z, s):
    n = len(z)
    rows = sum(-sum(s[i][j] * lp for j, lp in enumerate(log_softmax(z[i]))) for i in range(n)) / n
    cols = sum(-sum(s[i][j] * lp for i, lp in enumerate(log_softmax(column(z, j)))) for j in range(n)) / n
    return 0.5 * (rows + cols)


def test_plain_infonce_matches_hand_cross_entropy():
    n = 3
    rows = sum(-log_softmax(Z3[i])[i] for i in range(n)) / n
    cols = sum(-log_softmax(column(Z3, j))[j] for j in range(n)) / n
    assert infonce(t(Z3)).item() == pytest.approx(0.5 * (rows + cols), abs=1e-12)


def test_soft_infonce_with_identity_equals_plain_infonce():
    assert infonce(t(Z3), t(EYE3)).item() == pytest.approx(infonce(t(Z3)).item(), abs=1e-12)


def test_soft_infonce_matches_hand_computation():
    assert infonce(t(Z3), t(S3)).item() == pytest.approx(hand_soft_infonce(Z3, S3), abs=1e-12)


def test_wbce_averages_positives_and_negatives_separately():
    positives, negatives = [], []
    for i in range(3):
        for j in range(3):
            term = bce_term(Z3[i][j], S3[i][j])
            (positives if S3[i][j] > 0.5 else negatives).append(term)
    assert len(positives) == 3 and len(negatives) == 6  # 0.9, 0.6, 1.0 vs the rest (0.5 included)
    expected = 0.5 * (sum(positives) / len(positives) + sum(negatives) / len(negatives))
    assert wbce(t(Z3), t(S3)).item() == pytest.approx(expected, abs=1e-12)
    # and it is not the plain mean, which weights the six negatives twice as much
    assert wbce(t(Z3), t(S3)).item() != pytest.approx(bce(t(Z3), t(S3)).item(), abs=1e-6)


def test_wbce_with_one_group_only_is_the_plain_mean():
    zeros = torch.zeros(3, 3, dtype=torch.float64)
    ones = torch.ones(3, 3, dtype=torch.float64)
    for targets in (zeros, ones, torch.full((3, 3), 0.25, dtype=torch.float64)):
        value = wbce(t(Z3), targets)
        assert torch.isfinite(value)
        assert value.item() == pytest.approx(bce(t(Z3), targets).item(), abs=1e-12)


def test_reference_wbce_takes_logs_of_sigma_plus_eps_as_the_public_code():
    eps = 1e-6
    sigma = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    term = lambda z, s: -(s * math.log(sigma(z) + eps) + (1 - s) * math.log(1 - sigma(z) + eps))  # noqa: E731
    pos = [term(Z3[i][j], S3[i][j]) for i in range(3) for j in range(3) if S3[i][j] > 0.5]
    neg = [term(Z3[i][j], S3[i][j]) for i in range(3) for j in range(3) if S3[i][j] <= 0.5]
    expected = 0.5 * (sum(pos) / len(pos) + sum(neg) / len(neg))
    got = wbce(t(Z3), t(S3), eps=eps).item()
    assert got == pytest.approx(expected, abs=1e-12)
    assert got != pytest.approx(wbce(t(Z3), t(S3)).item(), abs=1e-9)  # ε changes the value
    # ε bounds the loss where log-sigmoid does not: wrong by 80 costs -log(1e-6 + σ(-80)) ≈ 13.8, not 80
    wrong = wbce(t([[-80.0, 80.0], [80.0, -80.0]]), t([[1.0, 0.0], [0.0, 1.0]]), eps=eps).item()
    assert wrong == pytest.approx(-math.log(eps + sigma(-80)), rel=1e-9)


def test_wbce_without_a_positive_gives_the_negative_term_whole_or_half():
    targets = torch.full((3, 3), 0.25, dtype=torch.float64)
    negative = sum(bce_term(Z3[i][j], 0.25) for i in range(3) for j in range(3)) / 9
    assert wbce(t(Z3), targets).item() == pytest.approx(negative, abs=1e-12)
    assert wbce(t(Z3), targets, no_positive="half").item() == pytest.approx(negative / 2, abs=1e-12)
    # with a positive in the batch both variants are the same
    assert wbce(t(Z3), t(S3), no_positive="half").item() == pytest.approx(wbce(t(Z3), t(S3)).item(), abs=1e-15)
    assert get_loss("wbce", {"no_positive": "half"})(t(Z3), targets).item() == pytest.approx(negative / 2)


@pytest.mark.parametrize("no_positive", ["whole", "half"])
def test_wbce_runs_under_vmap_as_students_trained_together_call_it(no_positive):
    """evaluate.together > 1 trains students under vmap: wbce must not branch on the data. Per student (one with
    positives, one without, one with positives only) it equals the plain call."""
    logits = torch.randn(3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    targets = torch.stack([torch.eye(4), torch.full((4, 4), 0.25), torch.ones(4, 4)]).double()
    loss = lambda z, s: wbce(z, s, no_positive=no_positive)  # noqa: E731
    batched = torch.vmap(loss)(logits, targets)
    for k in range(3):
        assert batched[k].item() == pytest.approx(loss(logits[k], targets[k]).item(), abs=1e-12)
    assert batched[1].item() == pytest.approx(
        (0.5 if no_positive == "half" else 1) * wbce(logits[1], targets[1]).item(), abs=1e-12)


def test_wbce_is_stable_for_large_logits():
    logits = t([[80.0, -80.0], [-80.0, 80.0]])
    assert wbce(logits, t([[1.0, 0.0], [0.0, 1.0]])).item() == pytest.approx(0.0, abs=1e-12)
    # wrong by 80 on every pair: log σ(-80) = -80 to double precision
    assert wbce(-logits, t([[1.0, 0.0], [0.0, 1.0]])).item() == pytest.approx(80.0, rel=1e-12)


def test_wbce_target_gradient_is_the_elementwise_derivative():
    # d/ds BCE(z, s) = log σ(-z) - log σ(z) = -z; each pair is weighted by 1 / (2 · size of its group)
    logits, targets = t(Z3), t(S3).requires_grad_()
    (grad,) = torch.autograd.grad(wbce(logits, targets), targets)
    for i in range(3):
        for j in range(3):
            group = 3 if S3[i][j] > 0.5 else 6
            assert grad[i, j].item() == pytest.approx(-Z3[i][j] / (2 * group), abs=1e-12)


def test_wbce_gradients_match_finite_differences():
    logits = t(Z3).requires_grad_()
    # S3 with its 0.5 moved to 0.45, so no entry is within h of the (non-differentiable) threshold
    targets = t([[0.9, 0.1, 0.6], [0.2, 0.45, 0.0], [0.3, 0.4, 1.0]]).requires_grad_()
    grads = torch.autograd.grad(wbce(logits, targets), (logits, targets))
    h = 1e-6
    for which, grad in zip((0, 1), grads):
        for i in range(3):
            for j in range(3):
                plus = [logits.detach().clone(), targets.detach().clone()]
                minus = [logits.detach().clone(), targets.detach().clone()]
                plus[which][i, j] += h
                minus[which][i, j] -= h
                numeric = (wbce(*plus) - wbce(*minus)).item() / (2 * h)
                assert grad[i, j].item() == pytest.approx(numeric, abs=1e-7)


def test_bce_is_the_mean_over_all_pairs():
    expected = sum(bce_term(Z3[i][j], S3[i][j]) for i in range(3) for j in range(3)) / 9
    assert bce(t(Z3), t(S3)).item() == pytest.approx(expected, abs=1e-12)


def test_cwcl_equals_soft_infonce_for_doubly_stochastic_targets():
    assert cwcl(t(Z3), t(Q3)).item() == pytest.approx(infonce(t(Z3), t(Q3)).item(), abs=1e-12)
    assert cwcl(t(Z3), t(Q3)).item() == pytest.approx(hand_soft_infonce(Z3, Q3), abs=1e-12)


def test_cwcl_is_invariant_to_scaling_the_targets():
    base = cwcl(t(Z3), t(S3)).item()
    for scale in (0.01, 3.0, 250.0):
        assert cwcl(t(Z3), scale * t(S3)).item() == pytest.approx(base, abs=1e-12)
    # soft infonce is not: it grows linearly with S
    assert infonce(t(Z3), 3.0 * t(S3)).item() == pytest.approx(3.0 * infonce(t(Z3), t(S3)).item(), abs=1e-12)


def test_cwcl_normalises_rows_and_columns_separately():
    z = [[1.0, -0.5], [0.25, 2.0]]
    # S = [[1, 1], [0, 1]]: rows -> [[.5, .5], [0, 1]], columns -> [[1, .5], [0, .5]]
    row0, row1 = log_softmax(z[0]), log_softmax(z[1])
    col0, col1 = log_softmax(column(z, 0)), log_softmax(column(z, 1))
    image_to_text = (-(0.5 * row0[0] + 0.5 * row0[1]) - row1[1]) / 2
    text_to_image = (-col0[0] - (0.5 * col1[0] + 0.5 * col1[1])) / 2
    expected = 0.5 * (image_to_text + text_to_image)
    assert cwcl(t(z), t([[1.0, 1.0], [0.0, 1.0]])).item() == pytest.approx(expected, abs=1e-12)


def test_kl_is_zero_when_softmax_matches_the_targets():
    # log Q has row-softmax Q and column-softmax Q because Q's rows and columns sum to one
    log_q = t(Q3).log()
    assert kl(log_q, t(Q3)).item() == pytest.approx(0.0, abs=1e-12)
    assert kl(log_q + 5.0, 2.0 * t(Q3)).item() == pytest.approx(0.0, abs=1e-12)  # shift and scale
    assert kl(t(Z3), t(Q3)).item() > 1e-3


def test_kl_matches_hand_computation_with_zero_and_negative_targets():
    z = [[1.0, -0.5], [0.25, 2.0]]
    s = [[1.0, 1.0], [-0.3, 1.0]]  # the negative entry is clamped to 0, and 0 · log 0 counts as 0
    rows = [[0.5, 0.5], [0.0, 1.0]]
    cols = [[1.0, 0.5], [0.0, 0.5]]

    def term(q, log_p):
        return sum(qk * (math.log(qk) - lp) for qk, lp in zip(q, log_p) if qk > 0)

    image_to_text = (term(rows[0], log_softmax(z[0])) + term(rows[1], log_softmax(z[1]))) / 2
    text_to_image = (term(column(cols, 0), log_softmax(column(z, 0)))
                     + term(column(cols, 1), log_softmax(column(z, 1)))) / 2
    value = kl(t(z), t(s))
    assert torch.isfinite(value)
    # kl adds ε = 1e-6 to the clamped targets (finite target gradients), hence the tolerance
    assert value.item() == pytest.approx(0.5 * (image_to_text + text_to_image), abs=1e-4)


def test_kl_is_nonnegative_and_differs_from_cwcl_by_a_logits_free_constant():
    gen = torch.Generator().manual_seed(0)
    targets = torch.rand(4, 4, generator=gen, dtype=torch.float64)
    gaps = []
    for _ in range(3):
        logits = torch.randn(4, 4, generator=gen, dtype=torch.float64) * 3
        assert kl(logits, targets).item() >= 0.0
        gaps.append(cwcl(logits, targets).item() - kl(logits, targets).item())
    # cwcl is cross-entropy, kl is cross-entropy minus the targets' entropy (up to kl's ε = 1e-6)
    assert gaps[1] == pytest.approx(gaps[0], abs=1e-4) and gaps[2] == pytest.approx(gaps[0], abs=1e-4)
    assert gaps[0] > 0.1


def test_mse_matches_hand_computation():
    expected = sum((1 / (1 + math.exp(-Z3[i][j])) - S3[i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    assert mse(t(Z3), t(S3)).item() == pytest.approx(expected, abs=1e-12)


def test_registry_names():
    assert set(LOSSES) == {"infonce", "wbce", "bce", "cwcl", "kl", "mse"}


def test_get_loss_unknown_name_lists_the_choices():
    with pytest.raises(ValueError) as info:
        get_loss("nope")
    message = str(info.value)
    assert "nope" in message
    for name in LOSSES:
        assert name in message


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_get_loss_defaults_to_identity_targets(name):
    logits = t(Z3)
    loss = get_loss(name)
    assert loss(logits).item() == pytest.approx(LOSSES[name](logits, t(EYE3)).item(), abs=1e-12)
    # explicit targets are passed through, and they change the value
    assert loss(logits, t(S3)).item() == pytest.approx(LOSSES[name](logits, t(S3)).item(), abs=1e-12)
    assert loss(logits, t(S3)).item() != pytest.approx(loss(logits).item(), abs=1e-6)


def test_get_loss_identity_keeps_dtype():
    logits = torch.tensor(Z3, dtype=torch.float32)
    assert get_loss("bce")(logits).dtype == torch.float32
    assert get_loss("bce")(t(Z3)).dtype == torch.float64


@pytest.mark.parametrize("name,targets", [
    *[(name, "soft") for name in sorted(LOSSES)],
    *[pytest.param(name, "identity")
      for name in sorted(LOSSES)],
])
def test_gradients_reach_logits_and_targets(name, targets):
    # "identity" is where a learned similarity starts (S = I, zeros off the diagonal)
    logits = t(Z3).requires_grad_()
    soft = [[0.9, 0.1, 0.6], [0.2, 0.5, 0.05], [0.3, 0.4, 1.0]]
    targets = t(soft if targets == "soft" else EYE3).requires_grad_()
    grad_logits, grad_targets = torch.autograd.grad(LOSSES[name](logits, targets), (logits, targets))
    assert torch.isfinite(grad_logits).all() and torch.isfinite(grad_targets).all()
    assert grad_logits.abs().sum() > 0
    assert grad_targets.abs().sum() > 0
