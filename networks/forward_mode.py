"""The image tower's directional derivative along θ, in segments that keep only their inputs (a checkpoint that
forward mode can use: torch's own cannot hold forward-mode tangents). Used by `distill.checkpoint_activations`.

`segmented_jvp(chain, flat, theta, tangent, images)` gives the tower's output u and its derivative u̇ = (∂u/∂θ)·θ̇,
both as ordinary tensors in the autograd graph of θ and the images. Each segment (a top-level child of the backbone,
each block of its `blocks`/`stages`, the projection head) is one autograd Function: its forward runs
`torch.func.jvp` without a graph and saves only its inputs; its backward recomputes that segment with a graph and
pulls the gradients of (u, u̇) through it. Peak memory: one segment's graph instead of the whole tower's. A chain
with active dropout is not used (forward mode would draw other masks than the plain step).
"""
import warnings

import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from networks.checkpointing import BLOCK_SEQUENCES, open_blocks, plain_blocks

# torch scripts its own JVP decompositions on the first forward-mode use, and warns that torch.jit.script is
# deprecated: torch's code, not ours, and the warning would break into every distillation's progress bar
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)


def build_chain(tower, flat):
    """[(module, its parameter prefix in the tower's flat layout)]: the backbone's top-level children with its
    `blocks`/`stages` opened into single blocks, then the projection head. None when some trainable parameter lies
    outside the chain, or dropout is active in it (forward mode would draw other masks than the plain step)."""
    backbone = getattr(tower, "backbone", tower)
    chain = []
    for name, child in backbone.named_children():
        if name in BLOCK_SEQUENCES and isinstance(child, nn.Sequential):
            chain += open_blocks(child)
        else:
            chain.append(child)
    if backbone is not tower and getattr(tower, "head", None) is not None:  # ImageTower's projection head
        chain.append(tower.head)
    names = {id(m): n for n, m in tower.named_modules()}
    prefixed = [(m, names[id(m)] + ".") for m in chain]
    covered = all(any(n.startswith(p) for _, p in prefixed) for n in flat.names)
    dropout = any(isinstance(m, nn.Dropout) and m.p > 0 and m.training for c in chain for m in c.modules())
    return prefixed if covered and not dropout else None


@torch.no_grad()
def chain_matches(tower, chain, images):
    """Does running the chain in order give the tower's output on `images` (with its own parameters)?"""
    expected, out = tower(images), images
    for module, _ in chain:
        out = module(out)
    return out.shape == expected.shape and torch.allclose(out, expected, rtol=1e-5, atol=1e-6)


def segmented_jvp(chain, flat, theta, tangent, images):
    """(u, u̇) of the tower at its flat parameters `theta` along `tangent` (`flat`: its FlatTower), segment by
    segment."""
    params, tangents = flat.unflatten(theta), flat.unflatten(tangent)
    x, x_dot = images, torch.zeros_like(images)
    for module, prefix in chain:
        names = [n for n in flat.names if n.startswith(prefix)]
        x, x_dot = _Segment.apply(module, [n[len(prefix):] for n in names], len(names), x, x_dot,
                                  *[params[n] for n in names], *[tangents[n] for n in names])
    return x, x_dot


def normalized_jvp(u, u_dot, eps=1e-12):
    """(u/‖u‖, its derivative (u̇ − n (n·u̇))/‖u‖), row by row, as F.normalize does it."""
    norm = u.norm(dim=-1, keepdim=True).clamp_min(eps)
    n = u / norm
    return n, (u_dot - n * (n * u_dot).sum(dim=-1, keepdim=True)) / norm


class _Segment(torch.autograd.Function):
    """One segment: forward = jvp without a graph, saving its inputs; backward = the same jvp recomputed with one."""

    @staticmethod
    def forward(ctx, module, names, count, x, x_dot, *params_and_tangents):
        ctx.module, ctx.names, ctx.count = module, names, count
        ctx.save_for_backward(x, x_dot, *params_and_tangents)
        with torch.no_grad(), _SegmentOps(lean_silu=False):
            return _jvp(module, names, x, x_dot, params_and_tangents[:count], params_and_tangents[count:])

    @staticmethod
    def backward(ctx, grad_y, grad_y_dot):
        x, x_dot, *rest = ctx.saved_tensors
        params, tangents = rest[:ctx.count], rest[ctx.count:]
        inputs = [t.detach().requires_grad_(True) for t in (x, x_dot, *params)]
        with torch.enable_grad():
            with _SegmentOps(lean_silu=True):
                y, y_dot = _jvp(ctx.module, ctx.names, inputs[0], inputs[1], inputs[2:], tangents)
            grads = torch.autograd.grad([y, y_dot], inputs, [grad_y, grad_y_dot], allow_unused=True)
        return (None, None, None, *grads, *([None] * len(tangents)))


def _jvp(module, names, x, x_dot, params, tangents):
    def run(x, *params):
        return functional_call(module, dict(zip(names, params)), (x,))
    with plain_blocks():  # this is the checkpoint: blocks inside run as they are
        return jvp(run, (x, *params), (x_dot, *tangents))


class _SegmentOps(TorchFunctionMode):
    """Inside a segment, activations asked to work in place (`inplace=True`) work out of place: in place they would
    overwrite the segment's input, which it keeps for its backward (timm before 1.0.31 builds NFNet's `final_act`,
    a segment of its own, in place). In the backward's recomputation (`lean_silu`), SiLU also gets a tangent that keeps
    only x and ẋ: torch's forward-mode rule (under grad mode) keeps five more activation-sized tensors, half of an
    NFNet block's graph. Same numbers either way: the same ops, recomputed in the backward."""

    def __init__(self, lean_silu):
        super().__init__()
        self.lean_silu = lean_silu

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if kwargs.get("inplace"):
            kwargs["inplace"] = False
        if self.lean_silu and func is F.silu:
            return _Silu.apply(args[0])
        return func(*args, **kwargs)


class _Silu(torch.autograd.Function):
    @staticmethod
    def forward(x):
        return F.silu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        return torch.ops.aten.silu_backward(grad, ctx.saved_tensors[0])

    @staticmethod
    def jvp(ctx, x_dot):
        return _SiluTangent.apply(ctx.saved_tensors[0], x_dot)


class _SiluTangent(torch.autograd.Function):
    """ẋ · silu'(x), saving only its inputs."""

    @staticmethod
    def forward(x, x_dot):
        return _silu_tangent(x, x_dot)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        x, x_dot = (t.detach().requires_grad_(True) for t in ctx.saved_tensors)
        with torch.enable_grad():
            return torch.autograd.grad(_silu_tangent(x, x_dot), (x, x_dot), grad)


def _silu_tangent(x, x_dot):
    """torch's forward-mode rule for silu under grad mode, op for op (infinitely_differentiable_silu_backward)."""
    s = x.sigmoid()
    return x_dot * s * (1 + x * (1 - s))
