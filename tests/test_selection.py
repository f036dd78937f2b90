"""Coreset selection (methods/coresets.py): herding, k-center, forgetting counts, pairs_right, budget checks."""
import pytest
import torch

from methods.coresets import ForgettingCounter, herding, k_center, pairs_right


def herding_reference(features, n):
    """Brute force: at step k try every unpicked row, form the mean of the picks explicitly."""
    x = features.double()
    target, picks = x.mean(0), []
    for k in range(1, n + 1):
        candidates = [i for i in range(len(x)) if i not in picks]
        gap = lambda i: torch.linalg.norm(target - x[picks + [i]].mean(0)).item()  # noqa: E731
        picks.append(min(candidates, key=gap))
    return picks


def nearest_earlier(points, earlier):
    """Per row: distance to the nearest of the rows `earlier` (float64)."""
    return torch.cdist(points.double(), points[earlier].double()).min(1).values


def random_points(rows, dims, seed):
    return torch.randn(rows, dims, generator=torch.Generator().manual_seed(seed))


# ---- herding ----------------------------------------------------------------------------------------------

def test_herding_hand_computed_order():
    # mean of all = 16/5 = 3.2; at step k pick x with (sum + x)/k closest to 3.2, i.e. x closest to 3.2k − sum:
    # k=1: x ≈ 3.2 → 3 (row 3), sum 3;  k=2: x ≈ 3.4 → 2 (row 2), sum 5;
    # k=3: x ≈ 4.6 among {0, 1, 10} → 1 (row 1, |1−4.6| = 3.6 < |10−4.6| = 5.4), sum 6;
    # k=4: x ≈ 6.8 among {0, 10} → 10 (row 4);  k=5: 0 (row 0)
    features = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]])
    assert herding(features, 5).tolist() == [3, 2, 1, 4, 0]
    assert herding(features, 2).tolist() == [3, 2]


@pytest.mark.parametrize("n", [1, 4, 10])
def test_herding_matches_brute_force(n):
    features = random_points(10, 6, seed=1)
    assert herding(features, n).tolist() == herding_reference(features, n)


def test_herding_full_pool_is_a_permutation():
    features = random_points(10, 6, seed=2)
    picks = herding(features, 10)
    assert sorted(picks.tolist()) == list(range(10))


# ---- k-center ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k_center_is_farthest_first(seed):
    points = random_points(30, 2, seed=10 + seed)
    picks = k_center(points, 12, seed=seed).tolist()
    for j in range(1, len(picks)):
        distance = nearest_earlier(points, picks[:j])
        unpicked = [i for i in range(len(points)) if i not in picks[:j]]
        assert distance[picks[j]].item() == pytest.approx(distance[unpicked].max().item(), abs=1e-9)


def test_k_center_never_picks_a_row_twice():
    points = random_points(20, 2, seed=3)
    assert sorted(k_center(points, 20, seed=0).tolist()) == list(range(20))


def test_k_center_with_duplicated_rows():
    points = random_points(4, 2, seed=4).repeat(3, 1)  # 12 rows, each point three times
    picks = k_center(points, 12, seed=0).tolist()
    assert sorted(picks) == list(range(12))
    # the first four picks cover the four distinct points before any duplicate is taken
    assert len({tuple(points[i].tolist()) for i in picks[:4]}) == 4


def test_k_center_first_pick_follows_the_seed():
    points = random_points(25, 2, seed=5)
    assert k_center(points, 6, seed=7).tolist() == k_center(points, 6, seed=7).tolist()
    firsts = {int(k_center(points, 1, seed=s)[0]) for s in range(20)}
    assert len(firsts) > 1


# ---- forgetting -------------------------------------------------------------------------------------------

def scripted_counter():
    """pair 0: right, wrong, right, wrong → 2 events; pair 1: never right → inf; pair 2: right, right → 0;
    pair 3: wrong, right, wrong → 1; pair 4: right, wrong → 1."""
    counter = ForgettingCounter(5)
    counter.update([0, 1, 2, 3], [True, False, True, False])
    counter.update(torch.tensor([4, 0, 3]), torch.tensor([True, False, True]))
    counter.update([1, 2, 0, 4], [False, True, True, False])
    counter.update([0, 3], [False, False])
    return counter


def test_forgetting_counts_and_scores():
    counter = scripted_counter()
    assert counter.forgotten.tolist() == [2, 0, 0, 1, 1]
    assert counter.scores().tolist() == [2.0, float("inf"), 0.0, 1.0, 1.0]


def test_most_forgotten_order():
    counter = scripted_counter()
    orders = {s: counter.most_forgotten(5, seed=s).tolist() for s in range(20)}
    for order in orders.values():
        assert order[:2] == [1, 0] and sorted(order[2:4]) == [3, 4] and order[4] == 2
    assert {tuple(order[2:4]) for order in orders.values()} == {(3, 4), (4, 3)}  # the tie depends on the seed
    assert counter.most_forgotten(5, seed=3).tolist() == orders[3]
    assert counter.most_forgotten(2, seed=0).tolist() == [1, 0]


# ---- pairs_right ------------------------------------------------------------------------------------------

def test_pairs_right():
    # rows: images, columns: captions
    logits = torch.tensor([[5.0, 0.0, 3.0],   # image 0 → caption 0 (right); caption 0 → image 0 (right)
                           [0.0, 3.0, 1.0],   # image 1 → caption 1 (right); caption 1 → image 2 (wrong, 4 > 3)
                           [0.0, 4.0, 2.0]])  # image 2 → caption 1 (wrong); caption 2 → image 0 (wrong, 3 > 2)
    assert pairs_right(logits).tolist() == [True, False, False]
    assert pairs_right(logits.T).tolist() == [True, False, False]  # pair 1 now right caption → image only


# ---- budgets ----------------------------------------------------------------------------------------------

def forgetting_pick(features, n):
    return scripted_counter().most_forgotten(n)


@pytest.mark.parametrize("select", [herding, k_center, forgetting_pick])
@pytest.mark.parametrize("budget", [6, 0])
def test_budget_outside_the_pool_raises(select, budget):
    with pytest.raises(ValueError, match=rf"budget {budget}\b.*\b5 pairs"):
        select(random_points(5, 3, seed=6), budget)
