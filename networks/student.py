"""The dual-encoder student and its functional form: each tower runs from one flat parameter vector.

A trajectory is a pair of flat vectors (θ^I, θ^T). `FlatTower` fixes the parameter order (the module's
trainable parameters in `named_parameters()` order); that layout is stored with every buffer and checked
on load, so a vector is never read with another model's order.
"""
import torch
from torch import nn
from torch.func import functional_call

from networks.encoders import ProjectionHead


class FlatTower:
    """Runs `module` from a flat vector of its trainable parameters."""

    def __init__(self, module):
        self.module = module
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in params]
        self.shapes = [tuple(p.shape) for _, p in params]
        self.sizes = [p.numel() for _, p in params]
        self.numel = sum(self.sizes)

    @property
    def layout(self):
        """[[name, shape], ...]: what a stored vector must match."""
        return [[n, list(s)] for n, s in zip(self.names, self.shapes)]

    def flatten(self):
        params = dict(self.module.named_parameters())
        return torch.cat([params[n].detach().reshape(-1) for n in self.names])

    def unflatten(self, flat):
        """name -> view into `flat` (keeps the autograd link to `flat`)."""
        if flat.shape != (self.numel,):
            raise ValueError(f"flat vector has shape {tuple(flat.shape)}, this tower needs ({self.numel},)")
        views = torch.split(flat, self.sizes)
        return {n: v.view(s) for n, v, s in zip(self.names, views, self.shapes)}

    @torch.no_grad()
    def load(self, flat):
        """Copy a flat vector into the module's own parameters."""
        params = dict(self.module.named_parameters())
        for name, value in self.unflatten(flat.to(self.device)).items():
            params[name].copy_(value)

    @property
    def device(self):
        return next(self.module.parameters()).device

    def __call__(self, flat, *inputs):
        return functional_call(self.module, self.unflatten(flat), inputs)


class DualEncoder(nn.Module):
    """Image tower (trainable; with `ImageTower.add_projection_head` only its head) + projection head over frozen
    text features; logits = img·txtᵀ / τ."""

    towers = ("image", "text")

    def __init__(self, image_tower, text_dim, temperature=0.07, dropout=0.1):
        super().__init__()
        self.image = image_tower
        self.text = ProjectionHead(text_dim, image_tower.out_dim, dropout)
        self.temperature = temperature
        self.flat = {"image": FlatTower(self.image), "text": FlatTower(self.text)}

    def encode_image(self, images, theta=None):
        out = self.image(images) if theta is None else self.flat["image"](theta, images)
        return nn.functional.normalize(out, dim=-1)

    def encode_text(self, text_features, theta=None):
        out = self.text(text_features) if theta is None else self.flat["text"](theta, text_features)
        return nn.functional.normalize(out, dim=-1)

    def forward(self, images, text_features, theta_image=None, theta_text=None):
        """Logits (images × texts); with θ vectors given, runs functionally from them."""
        img = self.encode_image(images, theta_image)
        txt = self.encode_text(text_features, theta_text)
        return img @ txt.t() / self.temperature

    def flatten(self):
        """{tower: flat θ} of the current parameters."""
        return {t: self.flat[t].flatten() for t in self.towers}

    def load_flat(self, thetas):
        for tower, theta in thetas.items():
            self.flat[tower].load(theta)

    def layouts(self):
        return {t: self.flat[t].layout for t in self.towers}

