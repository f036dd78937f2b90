"""Contrastive losses over a logits matrix Z (rows = images, columns = texts)."""
import torch
from torch.nn import functional as F


def infonce(logits):
    """Symmetric InfoNCE ½[CE(Z, I) + CE(Zᵀ, I)]: pair j's image matches pair j's text."""
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))
