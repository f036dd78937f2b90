"""Tests for training/similarity.py: the starting value of each kind, the low-rank formula
S = diag(a) + (α/r)·L Rᵀ against explicit loops, blocks as sub-matrices, gradients that reach only the
selected rows, blocks built from another params dict, the spec round trip and seeded initialisation."""
import pytest
import torch

from training.similarity import KINDS, Similarity


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def hand_lowrank(n=5, rank=3, alpha=2.0, seed=0):
    """A lowrank similarity whose three factors are all non-trivial."""
    sim = Similarity("lowrank", n, rank=rank, alpha=alpha, generator=seeded(seed))
    gen = seeded(seed + 100)
    sim.params["sim_diag"] = torch.rand(n, generator=gen) + 0.5
    sim.params["sim_right"] = torch.randn(n, rank, generator=gen)
    return sim


def explicit_entry(params, alpha, rank, a, b):
    low = sum(params["sim_left"][a, k].item() * params["sim_right"][b, k].item() for k in range(rank))
    return (params["sim_diag"][a].item() if a == b else 0.0) + alpha / rank * low


def test_lowrank_and_full_start_as_the_identity():
    for kind in ("lowrank", "full"):
        sim = Similarity(kind, 6, rank=4, generator=seeded(0))
        assert torch.equal(sim.matrix(), torch.eye(6))
    lowrank = Similarity("lowrank", 6, rank=4, generator=seeded(0))
    assert lowrank.params["sim_left"].abs().sum() > 0  # L is random, R = 0 makes the product vanish
    assert lowrank.params["sim_right"].shape == (6, 4) and lowrank.params["sim_diag"].shape == (6,)


def test_identity_kind_has_no_params_and_gives_eye():
    sim = Similarity("identity", 4)
    assert sim.params == {}
    assert torch.equal(sim.matrix(), torch.eye(4))
    assert torch.equal(sim.block(torch.tensor([3, 1])), torch.eye(2))
    assert torch.equal(sim.block([0, 2, 3]), torch.eye(3))


def test_unknown_kind_raises_with_choices():
    with pytest.raises(ValueError) as info:
        Similarity("diagonal", 3)
    assert "diagonal" in str(info.value)
    for kind in KINDS:
        assert kind in str(info.value)


def test_lowrank_matrix_matches_explicit_formula():
    sim = hand_lowrank(n=4, rank=3, alpha=2.0)
    matrix = sim.matrix()
    for a in range(4):
        for b in range(4):
            assert matrix[a, b].item() == pytest.approx(explicit_entry(sim.params, 2.0, 3, a, b), abs=1e-5)
    assert not torch.allclose(matrix, matrix.t())  # L Rᵀ is not symmetric: rows and columns differ


def test_lowrank_block_is_the_sub_matrix():
    sim = hand_lowrank()
    idx = torch.tensor([4, 0, 2])  # unsorted on purpose
    block = sim.block(idx)
    assert block.shape == (3, 3)
    assert torch.allclose(block, sim.matrix()[idx][:, idx], atol=1e-6)
    for i, a in enumerate(idx.tolist()):
        for j, b in enumerate(idx.tolist()):
            assert block[i, j].item() == pytest.approx(explicit_entry(sim.params, 2.0, 3, a, b), abs=1e-5)


def test_full_block_is_the_sub_matrix():
    sim = Similarity("full", 5)
    sim.params["sim_full"] = torch.arange(25.0).reshape(5, 5)
    block = sim.block(torch.tensor([3, 1]))
    assert torch.equal(block, torch.tensor([[18.0, 16.0], [8.0, 6.0]]))
    assert torch.equal(sim.matrix(), sim.params["sim_full"])


def test_block_uses_the_passed_params_not_its_own():
    sim = hand_lowrank()
    own = {k: v.clone() for k, v in sim.params.items()}
    other = {k: v * 2 + 1 for k, v in sim.params.items()}
    idx = torch.tensor([1, 3])
    block = sim.block(idx, other)
    for i, a in enumerate(idx.tolist()):
        for j, b in enumerate(idx.tolist()):
            assert block[i, j].item() == pytest.approx(explicit_entry(other, 2.0, 3, a, b), abs=1e-4)
    assert not torch.allclose(block, sim.block(idx))
    assert torch.allclose(sim.matrix(other)[idx][:, idx], block, atol=1e-5)
    for key in own:
        assert torch.equal(sim.params[key], own[key])

    full = Similarity("full", 3)
    replacement = {"sim_full": torch.full((3, 3), 7.0)}
    assert torch.equal(full.matrix(replacement), torch.full((3, 3), 7.0))
    assert torch.equal(full.matrix(), torch.eye(3))


def test_lowrank_block_gradients_reach_only_selected_rows():
    sim = hand_lowrank(n=5, rank=3, alpha=2.0)
    leaves = {k: v.clone().requires_grad_() for k, v in sim.params.items()}
    idx = torch.tensor([3, 0])
    weights = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    grads = dict(zip(leaves, torch.autograd.grad((weights * sim.block(idx, leaves)).sum(), list(leaves.values()))))
    selected = torch.zeros(5, dtype=torch.bool)
    selected[idx] = True
    for key, grad in grads.items():
        assert grad.shape == leaves[key].shape
        assert torch.all(grad[~selected] == 0), key
        per_row = grad.abs() if grad.dim() == 1 else grad.abs().sum(dim=1)
        assert torch.all(per_row[selected] > 0), key
    # d/d a_idx[i] of Σ W ⊙ block is W_ii
    assert grads["sim_diag"][3].item() == pytest.approx(1.0)
    assert grads["sim_diag"][0].item() == pytest.approx(3.0)
    # d/d L_idx[i] = (α/r) Σ_j W_ij R_idx[j]
    R, L = sim.params["sim_right"], sim.params["sim_left"]
    expected_left = (2.0 / 3) * (weights[0, 0] * R[3] + weights[0, 1] * R[0])
    assert torch.allclose(grads["sim_left"][3], expected_left, atol=1e-5)
    # d/d R_idx[j] = (α/r) Σ_i W_ij L_idx[i]
    expected_right = (2.0 / 3) * (weights[0, 1] * L[3] + weights[1, 1] * L[0])
    assert torch.allclose(grads["sim_right"][0], expected_right, atol=1e-5)


def test_full_block_gradients_reach_only_the_selected_entries():
    sim = Similarity("full", 4)
    leaf = sim.params["sim_full"].requires_grad_()
    (grad,) = torch.autograd.grad(sim.block(torch.tensor([2, 0])).sum(), leaf)
    expected = torch.zeros(4, 4)
    for a in (2, 0):
        for b in (2, 0):
            expected[a, b] = 1.0
    assert torch.equal(grad, expected)


def test_spec_round_trip_reproduces_the_matrix():
    sim = hand_lowrank(n=5, rank=3, alpha=2.0)
    spec = sim.spec()
    assert spec == {"kind": "lowrank", "n": 5, "rank": 3, "alpha": 2.0}
    rebuilt = Similarity.from_spec(spec, sim.params)
    assert torch.equal(rebuilt.matrix(), sim.matrix())
    # alpha and rank both enter the matrix: a spec that lost either would not reproduce it
    assert not torch.allclose(Similarity("lowrank", 5, rank=3, alpha=1.0, params=sim.params).matrix(), sim.matrix())
    assert not torch.allclose(Similarity("lowrank", 5, rank=10, alpha=2.0, params=sim.params).matrix(), sim.matrix())

    full = Similarity("full", 3)
    full.params["sim_full"] = torch.arange(9.0).reshape(3, 3)
    assert torch.equal(Similarity.from_spec(full.spec(), full.params).matrix(), full.matrix())


def test_generator_makes_init_reproducible_without_touching_global_rng():
    state = torch.get_rng_state()
    first = Similarity("lowrank", 6, rank=2, generator=seeded(7))
    second = Similarity("lowrank", 6, rank=2, generator=seeded(7))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.params["sim_left"], second.params["sim_left"])
    other = Similarity("lowrank", 6, rank=2, generator=seeded(8))
    assert not torch.equal(first.params["sim_left"], other.params["sim_left"])


def test_to_moves_params_and_returns_self():
    sim = hand_lowrank()
    before = sim.matrix()
    assert sim.to("cpu") is sim
    assert torch.equal(sim.matrix(), before)
