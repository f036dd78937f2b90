"""Coreset selection (docs/methods.md §6): which N real training pairs to keep, as a distilled set with S = I.

- random: N pairs drawn with a seed (the same draw as distillation's initial set);
- herding, k-center, k-means (the pairs nearest N centroids: MDM's initialisation): on the joint (image, text)
  embeddings of an expert snapshot (`joint_embeddings`);
- forgetting: replays expert 0's training (buffer.* recipe and seed), counting per pair how often it was
  forgotten (`ForgettingCounter`), and keeps the N forgotten most often.
`herding` and `k_center` return indices into the rows they were given; `select` into the training split's captions.
"""
import math

import torch

from artefacts.pairs import random_pairs
from common.errors import InputError
from training.experts import expert_seed, expert_students, fit_expert
from training.fit import encode_split
from training.trajectories import expert_path

CORESETS = ("random", "herding", "k-center", "k-means", "forgetting")
# docs/methods.md §8 (NFNet-l0 + BERT): the random coreset's "IR@1/5/10 · TR@1/5/10", as the papers report it (last epoch)
PUBLISHED = {"random": ("last epoch", {
    "flickr30k": {100: "1.0/4.0/6.5 · 1.3/5.9/10.1", 200: "1.1/4.8/9.2 · 2.1/8.7/13.2",
                  500: "2.4/10.5/17.4 · 5.2/18.3/25.7", 1000: "3.8/11.8/19.9 · 5.2/15.6/21.4"},
    "coco": {100: "0.3/1.3/2.7 · 0.8/3.0/5.0", 200: "0.6/2.3/4.4 · 1.0/4.0/7.2",
             500: "1.1/5.0/8.7 · 1.9/7.5/12.5", 1000: "1.5/5.6/9.6 · 1.9/7.6/12.7"}})}


def _check_budget(n, available):
    if not 1 <= n <= available:
        raise InputError(f"budget {n}: the pool holds {available} pairs; choose a budget from 1 to {available}")


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


def kmeans(features, n, seed=0):
    """The rows nearest each of n k-means centroids (scikit-learn's KMeans, seeded) of the rows as unit vectors, so
    the clusters are those of the cosine; a centroid whose nearest row is taken gets its nearest untaken one."""
    from sklearn.cluster import KMeans
    _check_budget(n, len(features))
    rows = torch.nn.functional.normalize(features.double(), dim=1)
    centroids = KMeans(n_clusters=n, n_init=1, random_state=seed).fit(rows.numpy()).cluster_centers_
    distance = torch.cdist(torch.from_numpy(centroids), rows)
    taken, picks = torch.zeros(len(rows), dtype=torch.bool), []
    for row in distance:
        picks.append(int(row.masked_fill(taken, float("inf")).argmin()))
        taken[picks[-1]] = True
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


def joint_embeddings(ctx, student):
    """One row per training pair (caption): its image's and its caption's normalised embeddings, side by side."""
    train = ctx.splits["train"]
    images, texts = encode_split(student, train, ctx.features["train"], ctx.test_transform, ctx.device,
                                 image_cache=ctx.image_cache)
    return torch.cat([images[torch.as_tensor(train.caption_image)], texts], dim=1).cpu() / math.sqrt(2)


def forgetting_counts(ctx):
    """Forgetting events of every training pair over a replay of expert 0's training."""
    counter = ForgettingCounter(len(ctx.splits["train"].captions))
    seed = expert_seed(ctx.cfg["buffer"]["seed"], 0)
    fit_expert(ctx, seed, lambda *_: None, name="forgetting run",
               on_batch=lambda captions, logits: counter.update(captions, pairs_right(logits)))
    return counter


def select(ctx, method, budget, seed, expert=None, expert_epoch=None):
    """(caption indices of the chosen pairs, what to record about the choice)."""
    available = len(ctx.splits["train"].captions)
    if not 1 <= budget <= available:
        raise InputError(f"--budget {budget}: the training split has {available} pairs; choose 1 to {available}")
    if method == "random":
        return random_pairs(ctx.splits["train"], budget, seed), {}
    if method == "forgetting":
        return forgetting_counts(ctx).most_forgotten(budget, seed), {"expert_seed": expert_seed(
            ctx.cfg["buffer"]["seed"], 0)}
    expert = expert or expert_path(ctx.cfg["buffer"]["out_dir"], 0)
    students, meta = expert_students(ctx, expert, None if expert_epoch is None else [expert_epoch])
    epoch, student = students[-1]
    features = joint_embeddings(ctx, student)
    picks = {"herding": lambda: herding(features, budget), "k-center": lambda: k_center(features, budget, seed),
             "k-means": lambda: kmeans(features, budget, seed)}[method]()
    return picks, {"expert": str(expert), "expert_epoch": epoch}
