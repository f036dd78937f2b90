"""The learned image–text similarity matrix S of a synthetic set (docs/methods.md §4, LoRS). Rows = images,
columns = texts; a minibatch of synthetic indices b uses the block S[b][:, b].

- `identity`: S = I, nothing learned (MTT-VL, TESLA-VL, coresets).
- `lowrank`: S = diag(a) + (α/r)·L Rᵀ, a = 1, L ~ N(0, 1), R = 0, so S starts as I; O(N·r) numbers.
- `full`: a free N×N matrix, starting at I.

The factors are plain tensors in `params`; `block` and `matrix` also accept another dict of the same
tensors (e.g. detached ones), which is how the meta-gradient rebuilds a step without touching the leaves.
"""
import torch

KINDS = ("identity", "lowrank", "full")


class Similarity:
    def __init__(self, kind, n, rank=10, alpha=1.0, generator=None, params=None):
        if kind not in KINDS:
            raise ValueError(f"unknown similarity type {kind!r}; choose one of {', '.join(KINDS)}")
        self.kind, self.n, self.rank, self.alpha = kind, n, rank, alpha
        self.params = params if params is not None else self._init(generator)

    def _init(self, generator):
        if self.kind == "lowrank":
            return {"sim_diag": torch.ones(self.n),
                    "sim_left": torch.randn(self.n, self.rank, generator=generator),
                    "sim_right": torch.zeros(self.n, self.rank)}
        if self.kind == "full":
            return {"sim_full": torch.eye(self.n)}
        return {}

    def block(self, idx, params=None):
        """S restricted to the synthetic indices `idx` (rows and columns)."""
        p = self.params if params is None else params
        if self.kind == "identity":
            return torch.eye(len(idx), device=getattr(idx, "device", None))
        if self.kind == "full":
            return p["sim_full"][idx][:, idx]
        return torch.diag(p["sim_diag"][idx]) + (self.alpha / self.rank) * p["sim_left"][idx] @ p["sim_right"][idx].t()

    def matrix(self, params=None):
        return self.block(torch.arange(self.n), params)

    def spec(self):
        """What, besides the tensors, rebuilds this similarity (stored in an artefact's metadata)."""
        return {"kind": self.kind, "n": self.n, "rank": self.rank, "alpha": self.alpha}

    @classmethod
    def from_spec(cls, spec, params):
        return cls(spec["kind"], spec["n"], spec["rank"], spec["alpha"], params=params)

    def to(self, device):
        self.params = {k: v.to(device) for k, v in self.params.items()}
        return self
