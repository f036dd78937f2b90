"""Coreset selection (METHOD §6): which N real training pairs to keep.

`herding` and `k_center` work on one feature row per pair (coreset.py uses an expert's joint image–text
features); `ForgettingCounter` counts, per pair, how often it was forgotten while an expert trained.
All return indices into the rows they were given.
"""
import torch


def _check_budget(n, available):
    if not 1 <= n <= available:
        raise ValueError(f"budget {n}: the pool holds {available} pairs; choose a budget from 1 to {available}")


def herding(features, n):
    """Indices in herding order (Welling 2009): each pick brings the mean of the picks as close as
    possible to the mean of all rows."""
    _check_budget(n, len(features))
    features = features.double()
    target = features.mean(0)
    norms = (features * features).sum(1)
    total = torch.zeros_like(target)
    taken = torch.zeros(len(features), dtype=torch.bool)
    picks = []
    for k in range(1, n + 1):
        # ‖target − (total + x)/k‖² without forming (total + x) for every row: only the x-dependent terms
        residual = target - total / k
        distance = norms / k ** 2 - 2.0 / k * (features @ residual)
        i = int(distance.masked_fill(taken, float("inf")).argmin())
        picks.append(i)
        taken[i] = True
        total += features[i]
    return torch.tensor(picks)


def k_center(features, n, seed=0):
    """Greedy k-center (farthest-first traversal): a seeded random first row, then each pick is the row
    farthest from everything picked so far."""
    _check_budget(n, len(features))
    features = features.double()
    norms = (features * features).sum(1)
    first = int(torch.randint(len(features), (1,), generator=torch.Generator().manual_seed(seed)))
    picks = [first]
    nearest = torch.full((len(features),), float("inf"), dtype=torch.float64)
    for _ in range(n - 1):
        last = features[picks[-1]]
        distance = (norms - 2.0 * (features @ last) + norms[picks[-1]]).clamp_min(0)
        nearest = torch.minimum(nearest, distance)
        nearest[picks] = -1.0  # never pick a row twice, even among duplicates at distance 0
        picks.append(int(nearest.argmax()))
    return torch.tensor(picks)


class ForgettingCounter:
    """Forgetting events (Toneva et al. 2019) of each pair: a presentation where the pair is wrong after
    being right at its previous presentation. Pairs never right count as forgotten most often."""

    def __init__(self, n):
        self.correct = torch.zeros(n, dtype=torch.bool)      # at the latest presentation
        self.learned = torch.zeros(n, dtype=torch.bool)      # right at least once
        self.forgotten = torch.zeros(n, dtype=torch.long)

    def update(self, indices, correct):
        indices, correct = torch.as_tensor(indices).cpu(), torch.as_tensor(correct, dtype=torch.bool).cpu()
        self.forgotten[indices] += (self.correct[indices] & ~correct).long()
        self.correct[indices] = correct
        self.learned[indices] |= correct

    def scores(self):
        return self.forgotten.double().masked_fill(~self.learned, float("inf"))

    def most_forgotten(self, n, seed=0):
        """The `n` pairs forgotten most often; ties broken in a seeded random order."""
        _check_budget(n, len(self.forgotten))
        shuffled = torch.randperm(len(self.forgotten), generator=torch.Generator().manual_seed(seed))
        order = torch.sort(self.scores()[shuffled], descending=True, stable=True).indices
        return shuffled[order[:n]]


def pairs_right(logits):
    """Per pair of a contrastive batch: its image ranks its own caption first and its caption ranks its
    own image first."""
    own = torch.arange(len(logits), device=logits.device)
    return (logits.argmax(1) == own) & (logits.argmax(0) == own)
