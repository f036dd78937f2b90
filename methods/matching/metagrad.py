"""Meta-gradients of trajectory matching (docs/methods.md §4): one interface, three modes.

The inner loop runs K SGD steps of a student from θ_0 on synthetic minibatches,
θ_{i+1} = θ_i − η ∇θ ℓ_i(θ_i) (per tower, each with its own η), and the outer loss compares θ_K with
the expert's θ*: L = Σ_towers ‖θ_K − θ*‖² / D, D = ‖θ_0 − θ*‖² per tower (or one D over both towers
with `merge`). We need ∂L/∂ of every synthetic tensor and of the learning rates.

- `unroll`: autograd through all K steps. Exact; memory grows with K (MTT-VL).
- `exact`: run the K steps without a graph, keep θ_0 … θ_{K−1}, then go back with the adjoint
  λ_K = ∂L/∂θ_K = 2(θ_K − θ*)/D. Step i's graph is rebuilt from θ_i, and one vector–Jacobian product of
  Σ_t η_t g_i^t·λ_{i+1}^t gives the synthetic tensors' share (times −1) and H_i λ, so that
  λ_i = λ_{i+1} − H_i λ_{i+1}; ∂L/∂η_t += −g_i^t·λ_{i+1}^t. Equals `unroll` up to rounding, one graph at a time.
- `tesla`: the same with λ frozen at λ_K (TESLA's first-order surrogate: it drops how step i changes the
  later steps' gradients). Its η gradient is then exactly the closed form of L(η) = ‖θ_0 − ηG − θ*‖²/D.

`step_loss(i, thetas, syn)` computes inner step i's loss from the tower vectors `thetas` and the synthetic
tensors `syn`; it must replay step i's randomness (dropout, blending) identically every time it is called.
"""
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch.autograd import forward_ad

from networks.forward_mode import normalized_jvp, segmented_jvp

MODES = ("unroll", "tesla", "exact")
OFFLOADS = ("none", "host", "disk")


def normalisers(theta_start, theta_target, merge=False):
    """{tower: D}: each tower's squared distance from start to target (or their sum for every tower)."""
    dist = {t: (theta_start[t] - theta_target[t]).pow(2).sum() for t in theta_start}
    if merge:
        total = sum(dist.values())
        return {t: total for t in dist}
    return dist


def matching_loss(theta_end, theta_target, denominators):
    return sum((theta_end[t] - theta_target[t]).pow(2).sum() / denominators[t] for t in theta_end)


def meta_gradient(mode, step_loss, theta_start, theta_target, lrs, syn, *, num_steps, merge=False,
                  offload="none", scratch=None):
    """(L, {name: ∂L/∂syn[name]}, {tower: ∂L/∂lrs[tower]}) for one trajectory segment.

    theta_start, theta_target: {tower: flat θ}; lrs: {tower: scalar tensor}; syn: {name: tensor}.
    `offload` (exact, tesla) keeps the stored θ_i off the compute device: in host memory ("host", for a
    GPU) or in temporary files ("disk", in the folder `scratch`, default the system's temporary folder), so that
    memory stays flat in K; "none" keeps them where they are.
    """
    if mode not in MODES:
        raise ValueError(f"unknown meta-gradient mode {mode!r}; choose one of {', '.join(MODES)}")
    if offload not in OFFLOADS:
        raise ValueError(f"unknown offload {offload!r}; choose one of {', '.join(OFFLOADS)}")
    theta_start = {t: v.detach() for t, v in theta_start.items()}
    theta_target = {t: v.detach() for t, v in theta_target.items()}
    denominators = normalisers(theta_start, theta_target, merge)
    if mode == "unroll":
        return _unrolled(step_loss, theta_start, theta_target, lrs, syn, num_steps, denominators)
    with StepStore(offload, scratch) as store:
        return _adjoint(step_loss, theta_start, theta_target, lrs, syn, num_steps, denominators,
                        frozen=(mode == "tesla"), store=store)


def _unrolled(step_loss, theta_start, theta_target, lrs, syn, num_steps, denominators):
    thetas = {t: v.clone().requires_grad_(True) for t, v in theta_start.items()}
    for i in range(num_steps):
        loss = step_loss(i, thetas, syn)
        grads = torch.autograd.grad(loss, list(thetas.values()), create_graph=True)
        thetas = {t: thetas[t] - lrs[t] * g for t, g in zip(thetas, grads)}
    outer = matching_loss(thetas, theta_target, denominators)
    leaves = {**{("syn", k): v for k, v in syn.items()}, **{("lr", t): v for t, v in lrs.items()}}
    wanted = [k for k, v in leaves.items() if v.requires_grad]
    grads = dict(zip(wanted, torch.autograd.grad(outer, [leaves[k] for k in wanted], allow_unused=True)
                     if wanted else []))
    grads = {k: torch.zeros_like(v) if grads.get(k) is None else grads[k] for k, v in leaves.items()}
    return (outer.detach(), {k: grads["syn", k] for k in syn}, {t: grads["lr", t] for t in lrs})


def _adjoint(step_loss, theta_start, theta_target, lrs, syn, num_steps, denominators, frozen, store):
    eta = {t: lr.detach() for t, lr in lrs.items()}
    theta_end = _inner_loop(step_loss, theta_start, eta, {k: v.detach() for k, v in syn.items()}, num_steps, store)
    outer = matching_loss(theta_end, theta_target, denominators)
    backward = _Backward(step_loss, syn, eta, frozen,
                         adjoint={t: 2 * (theta_end[t] - theta_target[t]) / denominators[t] for t in theta_end},
                         lr_grads={t: torch.zeros_like(lr) for t, lr in lrs.items()})
    del theta_end  # pass 2, where the peak is, needs nothing else of pass 1
    for i in reversed(range(num_steps)):  # pass 2: rebuild each step's graph, pull the adjoint through it
        backward.step(i, store.get(i, theta_start))
    return outer, backward.syn_grads, backward.lr_grads


def _inner_loop(step_loss, thetas, eta, syn, num_steps, store):
    """Pass 1: the K steps without a graph to the synthetic tensors, storing θ_0 … θ_{K−1}; returns θ_K."""
    for i in range(num_steps):
        store.put(i, thetas)
        leaves = {t: v.detach().requires_grad_(True) for t, v in thetas.items()}
        grads = torch.autograd.grad(step_loss(i, leaves, syn), list(leaves.values()))
        thetas = {t: leaves[t].detach() - eta[t] * g for t, g in zip(leaves, grads)}
    return thetas


class _Backward:
    """Pass 2 of `exact`/`tesla`: the adjoint λ (taken from λ_{i+1} to λ_i in place, or frozen at λ_K) and the
    gradients of the synthetic tensors and the lrs it accumulates, one rebuilt step at a time."""

    def __init__(self, step_loss, syn, eta, frozen, *, adjoint, lr_grads):
        self.step_loss, self.syn, self.eta, self.frozen = step_loss, syn, eta, frozen
        self.adjoint, self.lr_grads = adjoint, lr_grads
        self.syn_grads = {k: torch.zeros_like(v) for k, v in syn.items()}
        self.wanted = [k for k, v in syn.items() if v.requires_grad]

    def step(self, i, theta):
        """Step i: adds its shares to syn_grads and lr_grads and (unless frozen) takes λ_{i+1} to λ_i. Its θ_i,
        graph and H_i λ are freed on return, before step i−1 is rebuilt."""
        leaves = {t: v.requires_grad_(True) for t, v in theta.items()}
        dots = gradient_dots(self.step_loss, i, leaves, self.syn, self.adjoint)  # g_i^t · λ_{i+1}^t
        for t, dot in dots.items():
            self.lr_grads[t] -= dot.detach()
        weighted = sum(self.eta[t] * dot for t, dot in dots.items())
        inputs = [self.syn[k] for k in self.wanted] + ([] if self.frozen else list(leaves.values()))
        vjp = torch.autograd.grad(weighted, inputs, allow_unused=True)
        for k, g in zip(self.wanted, vjp):
            if g is not None:
                self.syn_grads[k] -= g
        if not self.frozen:
            for t, h_lambda in zip(leaves, vjp[len(self.wanted):]):
                if h_lambda is not None:
                    self.adjoint[t] -= h_lambda


def gradient_dots(step_loss, i, thetas, syn, adjoint):
    """{tower: g_i^t · λ^t}, the step's gradient along the adjoint, as a graph over θ_i and the set (for the
    Hessian-vector product): the step's own way where it has one (InnerLoop), else reverse over reverse."""
    own = getattr(step_loss, "gradient_dots", None)
    dots = own(i, thetas, syn, adjoint) if own else None
    if dots is None:
        grads = torch.autograd.grad(step_loss(i, thetas, syn), list(thetas.values()), create_graph=True)
        dots = {t: (g * adjoint[t]).sum() for t, g in zip(thetas, grads)}
    return dots


class StepStore:
    """θ_0 … θ_{K−1} of pass 1, kept for pass 2: as they are, in host memory, or in temporary files."""

    def __init__(self, where, scratch=None):
        self.where, self.scratch, self.items, self.folder = where, scratch, {}, None

    def __enter__(self):
        if self.where == "disk":
            if self.scratch is not None:
                Path(self.scratch).mkdir(parents=True, exist_ok=True)
            self.folder = tempfile.TemporaryDirectory(prefix="mmdd-steps-", dir=self.scratch)
        return self

    def __exit__(self, *exc):
        if self.folder is not None:
            self.folder.cleanup()

    def put(self, i, thetas):
        if self.where == "none":
            self.items[i] = thetas
        elif self.where == "host":
            self.items[i] = {t: _to_host(v) for t, v in thetas.items()}
        else:
            for t, v in thetas.items():
                v.detach().cpu().numpy().tofile(Path(self.folder.name) / f"{i}_{t}")

    def get(self, i, like):
        """Step i's θ on the device and dtype of `like` (a dict of tensors), detached."""
        if self.where == "disk":
            items = {t: torch.from_numpy(np.fromfile(Path(self.folder.name) / f"{i}_{t}",
                                                     dtype=str(v.dtype).removeprefix("torch.")))
                     for t, v in like.items()}
        else:
            items = self.items.pop(i)
        return {t: v.to(like[t].device, non_blocking=True).detach() for t, v in items.items()}


def _to_host(v):
    """A GPU tensor copied into page-locked host memory without waiting for it (torch's caching host allocator
    reuses those pages from step to step): the copy back in pass 2 runs on the same stream, so it is ordered after
    this one. Elsewhere, a plain copy."""
    if not v.is_cuda:
        return v.to("cpu")
    host = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
    return host.copy_(v, non_blocking=True)


class InnerLoop:
    """`step_loss` of the student's inner loop: step i trains on synthetic minibatch `batches[i]` with the
    similarity block as targets, under its own random seed `seeds[i]` (dropout, blending), so a step
    rebuilt in the backward pass is the very step of the forward pass."""

    def __init__(self, student, loss_fn, similarity, batches, seeds, *, blend=False, precision="fp32",
                 segments=None):
        self.student, self.loss_fn, self.similarity = student, loss_fn, similarity
        self.batches, self.seeds, self.blend = batches, [int(s) for s in seeds], blend
        self.bf16 = precision == "bf16"  # the image tower under bf16 autocast; θ, λ, the set and the loss stay fp32
        self.segments = segments  # networks.forward_mode.build_chain: the image tower's jvp segment by segment

    def __call__(self, i, thetas, syn):
        with self._step_rng(i, syn):
            images = self._images(i, thetas["image"], syn)
            return self._loss(i, images, thetas, syn)

    def gradient_dots(self, i, thetas, syn, adjoint):
        """{tower: g^t · λ^t} of step i with the image tower in forward mode: its tangent along λ^I is pulled back
        by one ordinary backward, where reverse over reverse would run a convolution's double backward (on a CPU,
        depthwise ones are split channel by channel). The text head, small, stays reverse over reverse (torch's
        reverse-over-forward of LayerNorm is wrong). None (reverse over reverse) with blending, which mixes the
        features non-linearly, and with bf16: forward mode under autocast fails on timm's EfficientNet blocks
        (a convolution gets a bf16 weight and an fp32 input; torch 2.14)."""
        if self.blend or self.bf16:
            return None
        if self.segments is not None:  # checkpointed: one segment's graph at a time
            with self._step_rng(i, syn):
                images, tangent = normalized_jvp(*segmented_jvp(
                    self.segments, self.student.flat["image"], thetas["image"], adjoint["image"],
                    syn["images"][self.batches[i]]))
                loss = self._loss(i, images, thetas, syn)
        else:
            with self._step_rng(i, syn), forward_ad.dual_level():
                dual = self._images(i, forward_ad.make_dual(thetas["image"], adjoint["image"]), syn)
                images, tangent = forward_ad.unpack_dual(dual)
                loss = self._loss(i, images, thetas, syn)
        grad_images, grad_text = torch.autograd.grad(loss, [images, thetas["text"]], create_graph=True)
        return {"image": (grad_images * tangent).sum(), "text": (grad_text * adjoint["text"]).sum()}

    @contextmanager
    def _step_rng(self, i, syn):
        """Step i's own random stream (dropout), the global one left as it was."""
        device = syn["images"].device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seeds[i])
            yield

    def _images(self, i, theta, syn):
        with torch.autocast(syn["images"].device.type, dtype=torch.bfloat16, enabled=self.bf16):
            images = self.student.encode_image(syn["images"][self.batches[i]], theta)
        return images.float() if self.bf16 else images

    def _loss(self, i, images, thetas, syn):
        idx = self.batches[i]
        texts = self.student.encode_text(syn["texts"][idx], thetas["text"])
        targets = self.similarity.block(idx.to(syn["images"].device), syn)
        if self.blend:
            images, texts, targets = blend_representations(images, texts, targets)
        return self.loss_fn(images @ texts.t() / self.student.temperature, targets)


def blend_representations(images, texts, targets):
    """RepBlend: mix each pair's image and text features with those of a permuted pair, with one
    λ ~ Beta(1, 1) for both modalities; targets mix alike, S' = λS + (1−λ) S[π][:, π]."""
    lam = torch.rand((), device=images.device)
    perm = torch.randperm(images.shape[0], device=images.device)
    mix = lambda x: torch.nn.functional.normalize(lam * x + (1 - lam) * x[perm], dim=-1)
    return mix(images), mix(texts), lam * targets + (1 - lam) * targets[perm][:, perm]
