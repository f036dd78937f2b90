"""Activation checkpointing that holds under `torch.func.functional_call` and double backward.

`torch.utils.checkpoint` recomputes a block's forward during the backward pass, when functional_call has already
put the module's own parameters back: the block would be recomputed with the wrong weights and lose its link to the
flat θ. Here a block's parameters enter the checkpoint as explicit inputs and are swapped in again for the
recomputation; non-reentrant checkpointing keeps the double backward the meta-gradient needs (one Hessian-vector
product per step). A block keeps its parameter names, so a tower's flat layout does not change.
"""
import threading
from contextlib import contextmanager
from functools import partial

import torch
from torch import nn
from torch.autograd import forward_ad
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

_recomputing = threading.local()  # inside a checkpointed call: run the block's own forward


def checkpoint_blocks(tower):
    """Checkpoint every block of `tower`: the children of its `blocks` or `stages` sequence (nested sequences
    flattened one level; timm's EfficientNet and NFNet), or the whole tower when it has neither. Returns the number
    of checkpointed blocks."""
    blocks = _blocks(tower)
    for block in blocks:
        if not isinstance(block.forward, partial):  # not twice
            block.forward = partial(_checkpointed_forward, block, block.forward)
    return len(blocks)


BLOCK_SEQUENCES = ("blocks", "stages")  # where timm's backbones keep their blocks


def open_blocks(sequence):
    """The blocks of a `blocks`/`stages` sequence, its nested stages opened one level."""
    return [block for stage in sequence for block in (stage if isinstance(stage, nn.Sequential) else [stage])]


def _blocks(tower):
    module = getattr(tower, "backbone", tower)
    for name in BLOCK_SEQUENCES:
        sequence = getattr(module, name, None)
        if isinstance(sequence, nn.Sequential):
            return open_blocks(sequence)
    return [module]


def _checkpointed_forward(block, own_forward, x):
    if getattr(_recomputing, "active", False) or not torch.is_grad_enabled():
        return own_forward(x)
    names, params = zip(*block.named_parameters()) if any(True for _ in block.parameters()) else ((), ())
    if any(forward_ad.unpack_dual(t).tangent is not None for t in (x, *params)):
        return own_forward(x)  # torch's checkpoint cannot hold forward-mode tangents
    return checkpoint(_run, block, names, x, *params, use_reentrant=False)


@contextmanager
def plain_blocks():
    """Checkpointed blocks run their own forward inside (a recomputation, or another kind of checkpoint)."""
    before = getattr(_recomputing, "active", False)
    _recomputing.active = True
    try:
        yield
    finally:
        _recomputing.active = before


def _run(block, names, x, *params):
    with plain_blocks():
        return functional_call(block, dict(zip(names, params)), (x,))
