"""Contrastive losses over a logits matrix Z (rows = images, columns = texts), with soft targets S.

S is the (block of the) image–text similarity matrix; S = I gives the plain losses. Every loss takes
(logits, targets) so the distillation inner loop and the students trained on a distilled set share them.
"""
import torch
from torch.nn import functional as F


def _eye_like(logits):
    return torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype)


def infonce(logits, targets=None):
    """½[−mean_j Σ_k S_jk log softmax_k Z_j· − mean_k Σ_j S_jk log softmax_j Z_·k]; S = I: symmetric InfoNCE."""
    if targets is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
    image_to_text = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_to_image = -(targets * F.log_softmax(logits, dim=0)).sum(dim=0).mean()
    return 0.5 * (image_to_text + text_to_image)


def wbce(logits, targets, eps=0.0, no_positive="whole"):
    """LoRS's weighted BCE: element-wise BCE of σ(Z) against S, averaged separately over the positives
    (S > 0.5, a mask without gradient) and the negatives, then ½(pos + neg) so the few positives count
    as much as the many negatives. With eps = 0 written with log-sigmoid (exact and stable); the public code's
    log(σ(Z) + eps) and log(1 − σ(Z) + eps) otherwise. A minibatch without a positive gives the negative term
    whole, or `no_positive="half"` half of it (as the public code: ½(0 + neg))."""
    if eps:
        p = torch.sigmoid(logits)
        elementwise = -(targets * torch.log(p + eps) + (1 - targets) * torch.log(1 - p + eps))
    else:
        elementwise = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    # masked sums, not branches on the data: students trained together (evaluate.together, under vmap) use it too
    positive = (targets > 0.5).detach().to(elementwise.dtype)
    counts = torch.stack([positive.sum(), (1 - positive).sum()])
    means = torch.stack([(elementwise * positive).sum(), (elementwise * (1 - positive)).sum()]) / counts.clamp_min(1)
    terms = (counts > 0).to(elementwise.dtype).sum()
    if no_positive == "half":  # without a positive: ½(0 + neg)
        terms = torch.where(counts[0] > 0, terms, torch.full_like(terms, 2.0))
    return means.sum() / terms


def bce(logits, targets):
    """Element-wise BCE of σ(Z) against S, one mean over all pairs."""
    return F.binary_cross_entropy_with_logits(logits, targets)


def cwcl(logits, targets, eps=1e-8):
    """Continuously weighted contrastive loss: soft InfoNCE with each row (image→text) and each column
    (text→image) of S normalised to sum to one."""
    rows = targets / targets.sum(dim=1, keepdim=True).clamp_min(eps)
    cols = targets / targets.sum(dim=0, keepdim=True).clamp_min(eps)
    image_to_text = -(rows * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    text_to_image = -(cols * F.log_softmax(logits, dim=0)).sum(dim=0).mean()
    return 0.5 * (image_to_text + text_to_image)


def kl(logits, targets, eps=1e-6):
    """Symmetric KL(q ‖ softmax Z) with q the rows (columns) of max(S, 0) + ε normalised to sum to one.
    The ε keeps q > 0: ∂(q log q)/∂q = log q + 1 is −∞ at a zero target, and S starts at the identity."""
    positive = targets.clamp_min(0) + eps
    rows = positive / positive.sum(dim=1, keepdim=True)
    cols = positive / positive.sum(dim=0, keepdim=True)
    image_to_text = F.kl_div(F.log_softmax(logits, dim=1), rows, reduction="sum") / logits.shape[0]
    text_to_image = F.kl_div(F.log_softmax(logits, dim=0).t(), cols.t(), reduction="sum") / logits.shape[1]
    return 0.5 * (image_to_text + text_to_image)


def mse(logits, targets):
    """Mean squared error between σ(Z) and S."""
    return F.mse_loss(torch.sigmoid(logits), targets)


def diversity(image_features, text_features):
    """EDGE's diversity loss: the mean cosine similarity between different pairs, each pair one vector
    (its raw image and text features side by side, normalised); minimising it spreads the pairs apart."""
    joint = F.normalize(torch.cat([image_features, text_features], dim=1), dim=1)
    n = joint.shape[0]
    if n < 2:
        raise ValueError("the diversity loss needs at least two pairs in a batch")
    gram = joint @ joint.t()
    return (gram.sum() - gram.diagonal().sum()) / (n * (n - 1))


LOSSES = {"infonce": infonce, "wbce": wbce, "bce": bce, "cwcl": cwcl, "kl": kl, "mse": mse}


def get_loss(name, options=None):
    """loss(logits, targets) by name, with its keyword `options` (wbce: eps, no_positive); targets default to the
    identity (one positive per row)."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    fn, options = LOSSES[name], options or {}
    return lambda logits, targets=None: fn(logits, _eye_like(logits) if targets is None else targets, **options)
