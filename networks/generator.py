"""EDGE's generator: a latent text-to-image diffusion model (diffusers layout), which of its parameters
train, and the frozen CLIP model its losses are measured with (docs/methods.md §5).

A checkpoint is a hub id or a folder with the Stable Diffusion layout: unet/, vae/, text_encoder/,
tokenizer/, scheduler/. Only the denoiser trains: its bias and normalisation parameters (DiffFit) or LoRA
adapters on its attention projections.
"""
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from common.errors import InputError
from networks.weights import ModelNotFoundError

# diffusers passes huggingface_hub an argument it deprecated and ignores: a warning about their code, not the user's,
# that would break into every EDGE progress bar
warnings.filterwarnings("ignore", message=r"The `local_dir_use_symlinks` argument is deprecated")

TRAINABLE = ("bias-norm", "lora")
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def load_pretrained(loader, spec, what, **kwargs):
    """`loader.from_pretrained(spec, **kwargs)` with one clear error for a missing folder or an uncached hub id."""
    try:
        return loader.from_pretrained(str(spec), **kwargs)
    except (OSError, ValueError) as err:
        where = ("an incomplete folder" if Path(str(spec)).exists()
                 else "neither a local folder nor a hub model in the local cache")
        raise ModelNotFoundError(
            f"{what} {spec!r} cannot be loaded: it is {where} ({str(err).splitlines()[0]}). "
            f"Download it (`huggingface-cli download {spec} --local-dir models/{Path(str(spec)).name}`) and give "
            f"the folder, or build the offline test components with `python -m networks.tiny`") from err


@dataclass
class Generator:
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    scheduler: object          # the training noise schedule (ᾱ_t); sampling builds its own from its config

    @property
    def latent_scale(self):
        return self.vae.config.scaling_factor

    @property
    def resolution(self):
        return self.unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)

    def to(self, device):
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device)
        return self

    @torch.no_grad()
    def encode_prompts(self, captions):
        """The frozen text encoder's token states, the denoiser's cross-attention input."""
        device = next(self.text_encoder.parameters()).device
        tokens = self.tokenizer(list(captions), padding="max_length", truncation=True, return_tensors="pt",
                                max_length=self.tokenizer.model_max_length)
        return self.text_encoder(tokens.input_ids.to(device))[0]

    def alpha_bar(self, timesteps):
        return self.scheduler.alphas_cumprod.to(timesteps.device)[timesteps].view(-1, 1, 1, 1)


def load_generator(spec):
    """The five components of a diffusers text-to-image checkpoint, all frozen, in eval mode."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoModel, AutoTokenizer
    what = "diffusion checkpoint"
    if not Path(str(spec)).exists() and str(spec).startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{what} {spec} not found: give a folder with unet/, vae/, text_encoder/, "
                                 f"tokenizer/ and scheduler/, or a hub id")
    plain = dict(low_cpu_mem_usage=False)  # diffusers' default wants `accelerate`, and warns without it
    gen = Generator(unet=load_pretrained(UNet2DConditionModel, spec, what, subfolder="unet", **plain),
                    vae=load_pretrained(AutoencoderKL, spec, what, subfolder="vae", **plain),
                    text_encoder=load_pretrained(AutoModel, spec, what, subfolder="text_encoder"),
                    tokenizer=load_pretrained(AutoTokenizer, spec, what, subfolder="tokenizer"),
                    scheduler=load_pretrained(DDPMScheduler, spec, what, subfolder="scheduler"))
    if gen.scheduler.config.prediction_type != "epsilon":
        raise InputError(f"{spec}: EDGE's clean estimate needs an ε-prediction model, this one predicts "
                         f"{gen.scheduler.config.prediction_type}")
    for module in (gen.unet, gen.vae, gen.text_encoder):
        module.requires_grad_(False).eval()
    return gen


class LoRALinear(nn.Module):
    """y = W x + (α/r) B A x with W frozen; B starts at zero, so the adapted model starts as the original."""

    def __init__(self, base, rank, alpha=None):
        super().__init__()
        self.base, self.scale = base, (alpha or rank) / rank
        self.lora_down = nn.Linear(base.in_features, rank, bias=False)
        self.lora_up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.to(base.weight.device, base.weight.dtype)

    def forward(self, x):
        return self.base(x) + self.scale * self.lora_up(self.lora_down(x))


def _is_norm(module):
    return isinstance(module, (nn.GroupNorm, nn.LayerNorm, nn.BatchNorm2d))


def make_trainable(unet, mode="bias-norm", lora_rank=4):
    """Freeze the denoiser except what EDGE trains; returns {name: parameter} of the trainable ones."""
    if mode not in TRAINABLE:
        raise InputError(f"edge.trainable must be one of {', '.join(TRAINABLE)}, not {mode!r}")
    unet.requires_grad_(False)
    if mode == "lora":
        targets = [(name, m) for name, m in unet.named_modules()
                   if isinstance(m, nn.Linear) and name.endswith(LORA_TARGETS)]
        for name, linear in targets:
            parent, _, leaf = name.rpartition(".")
            setattr(unet.get_submodule(parent), leaf, LoRALinear(linear, lora_rank))
        chosen = {n: p for n, p in unet.named_parameters() if ".lora_" in n}
    else:
        norms = {name for name, m in unet.named_modules() if _is_norm(m)}
        chosen = {n: p for n, p in unet.named_parameters()
                  if n.endswith(".bias") or n.rpartition(".")[0] in norms}
    for p in chosen.values():
        p.requires_grad_(True)
    return chosen


class FrozenCLIP(nn.Module):
    """A CLIP model whose image tower takes generated images in [−1, 1] with gradients: resized to its
    input size and normalised with its own statistics, as its image processor would (docs/methods.md §5)."""

    def __init__(self, spec):
        super().__init__()
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel
        self.model = load_pretrained(CLIPModel, spec, "CLIP model").requires_grad_(False).eval()
        self.tokenizer = load_pretrained(AutoTokenizer, spec, "CLIP tokenizer")
        processor = load_pretrained(AutoImageProcessor, spec, "CLIP image processor")
        self.size = self.model.config.vision_config.image_size
        self.register_buffer("mean", torch.tensor(processor.image_mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(processor.image_std).view(1, 3, 1, 1))

    def preprocess(self, images):
        pixels = ((images + 1) / 2).clamp(0, 1)
        # antialiased, like the processor's PIL resize when shrinking (512 → 224 for Stable Diffusion)
        pixels = F.interpolate(pixels, size=(self.size, self.size), mode="bicubic", align_corners=False, antialias=True)
        return (pixels - self.mean) / self.std

    def image_features(self, images):
        return _pooled(self.model.get_image_features(pixel_values=self.preprocess(images)))

    @torch.no_grad()
    def text_features(self, captions):
        tokens = self.tokenizer(list(captions), padding=True, truncation=True, return_tensors="pt",
                                max_length=self.model.config.text_config.max_position_embeddings)
        tokens = {k: v.to(self.mean.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return _pooled(self.model.get_text_features(**tokens))


def _pooled(output):
    """transformers ≥ 5 returns the projected features as the output's pooler_output, earlier ones a tensor."""
    return output if torch.is_tensor(output) else output.pooler_output
