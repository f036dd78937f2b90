"""The statistics the trajectory-free methods match (docs/methods.md §4b), between the features of a real
batch and of the synthetic set under the same model.

- `covmatch`: ‖ρ·C(real) − C(syn)‖²_F + λ(‖μ(z_v real) − μ(z_v syn)‖² + ‖μ(z_t real) − μ(z_t syn)‖²), C the centred
  cross-covariance of the pre-projection features (h_v, h_t), z the normalised embeddings; norms as sums.
- `gke`: InfoNCE of the synthetic pairs + λ_u MMD²(u) + λ_g MMD²(g), u = n(z_v + z_t) (agreement), g = n(z_v − z_t)
  (discrepancy), with the geodesic Gaussian kernel exp(−arccos(⟨a, b⟩)²/2σ²). MMD² itself, the unbiased estimate:
  the public code's sqrt(max(MMD², 0) + 1e-12) has a gradient of ~5·10⁵ near 0 (docs/differences.md).
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.losses import infonce

COSINE_LIMIT = 1 - 1e-6  # arccos is clamped inside (−1, 1): its slope is infinite at ±1


@dataclass
class Features:
    """One batch under one model: pre-projection h (image tower output, cached text feature) and normalised
    embeddings z."""
    h_v: torch.Tensor
    h_t: torch.Tensor
    z_v: torch.Tensor
    z_t: torch.Tensor


def cross_covariance(a, b):
    """C = 1/(n−1) Σ_i (a_i − μ_a)(b_i − μ_b)ᵀ: the off-diagonal block of torch.cov of the stacked features."""
    return (a - a.mean(0)).t() @ (b - b.mean(0)) / (a.shape[0] - 1)


def covmatch(real, syn, rho, lam):
    covariance = (rho * cross_covariance(real.h_v, real.h_t) - cross_covariance(syn.h_v, syn.h_t)).pow(2).sum()
    means = sum((r.mean(0) - s.mean(0)).pow(2).sum() for r, s in ((real.z_v, syn.z_v), (real.z_t, syn.z_t)))
    return covariance + lam * means


def geodesic_kernel(a, b, sigma):
    """exp(−φ²/2σ²), φ the angle between rows of `a` and `b` (unit vectors)."""
    angle = torch.arccos((a @ b.t()).clamp(-COSINE_LIMIT, COSINE_LIMIT))
    return torch.exp(-angle.pow(2) / (2 * sigma ** 2))


def mmd2(x, y, sigma, unbiased=True):
    """MMD² between the rows of x and y: the unbiased estimate (the kernel's diagonals left out of the within-set
    means), or the V-statistic (every entry)."""
    kxx, kyy, kxy = geodesic_kernel(x, x, sigma), geodesic_kernel(y, y, sigma), geodesic_kernel(x, y, sigma)
    if not unbiased:
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    m, n = len(x), len(y)
    within = lambda k, size: (k.sum() - k.diagonal().sum()) / (size * (size - 1))  # noqa: E731
    return within(kxx, m) + within(kyy, n) - 2 * kxy.mean()


def gke(real, syn, temperature, sigma, lam_u, lam_g):
    agreement = [F.normalize(f.z_v + f.z_t, dim=-1) for f in (real, syn)]
    discrepancy = [F.normalize(f.z_v - f.z_t, dim=-1) for f in (real, syn)]
    return (infonce(syn.z_v @ syn.z_t.t() / temperature) + lam_u * mmd2(*agreement, sigma)
            + lam_g * mmd2(*discrepancy, sigma))
