"""EDGE fine-tuning (docs/methods.md §5): the denoiser learns to produce images that a frozen CLIP matches to their
captions (bi-directional contrastive loss), that differ from each other (diversity loss), while still
denoising (the standard ε loss, which the released code omits; on by default).

The clean estimate comes from the *noisy* latent, the VAE sees images in its own [−1, 1] range, and the
decoded images reach CLIP resized and normalised as CLIP expects: the three defects of the released code
docs/methods.md §5 lists are not copied. Random draws come from a generator seeded per step, so a run resumed
from a checkpoint continues exactly as an uninterrupted one.
"""
import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F
from tqdm import tqdm

from common.distributed import agree, barrier, join, leave
from common.errors import BusyError, DivergedError
from common.io import read_tensor_file, save_tensors
from data.annotations import load_split
from data.images import SplitImages, build_transform
from networks.generator import FrozenCLIP, load_generator, make_trainable
from training.losses import diversity, infonce

VAE_RANGE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))   # Normalize(mean, std) taking [0, 1] pixels to [−1, 1]
SETTINGS = ("generator", "clip", "trainable", "lora_rank", "lr", "momentum", "batch_size", "tau",
            "lambda_div", "lambda_mse", "seed")


class FinetuneError(BusyError):
    pass


def noised(z0, eps, alpha_bar):
    """z_t = √ᾱ_t z₀ + √(1−ᾱ_t) ε."""
    return alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * eps


def clean_estimate(z_t, eps_hat, alpha_bar):
    """The one-step estimate of z₀ from the noisy latent: ẑ₀ = (z_t − √(1−ᾱ_t) ε̂) / √ᾱ_t."""
    return (z_t - (1 - alpha_bar).sqrt() * eps_hat) / alpha_bar.sqrt()


def contrastive(image_features, text_features, tau):
    """L_C: symmetric cross-entropy over s_ij = u_i·v_j / τ of the normalised features (pairs on the diagonal)."""
    u, v = F.normalize(image_features, dim=1), F.normalize(text_features, dim=1)
    return infonce(u @ v.t() / tau)


@dataclass
class EdgeLoss:
    contrastive: torch.Tensor
    diversity: torch.Tensor
    mse: torch.Tensor
    total: torch.Tensor

    def items(self):
        return {"L_C": self.contrastive.item(), "L_D": self.diversity.item(), "mse": self.mse.item()}


def edge_loss(gen, clip, pixels, captions, rng, tau=0.1, lambda_div=1.0, lambda_mse=1.0, unet=None):
    """L_C + λ_D L_D + λ_mse ‖ε − ε̂‖² for a batch of real pairs (pixels in [−1, 1]); `rng` draws the VAE
    sample, t and ε. `unet` is the denoiser to call (the DDP wrapper under torchrun)."""
    device = pixels.device
    with torch.no_grad():
        z0 = gen.vae.encode(pixels).latent_dist.sample(generator=rng) * gen.latent_scale
        states = gen.encode_prompts(captions)
        text = clip.text_features(captions)
    t = torch.randint(0, gen.scheduler.config.num_train_timesteps, (len(pixels),), generator=rng).to(device)
    eps = torch.randn(z0.shape, generator=rng).to(device)
    alpha_bar = gen.alpha_bar(t)
    z_t = noised(z0, eps, alpha_bar)
    eps_hat = (unet or gen.unet)(z_t, t, encoder_hidden_states=states).sample
    decoded = gen.vae.decode(clean_estimate(z_t, eps_hat, alpha_bar) / gen.latent_scale).sample
    image, text = clip.image_features(decoded).float(), text.float()
    matching, spread = contrastive(image, text, tau), diversity(image, text)
    mse = F.mse_loss(eps_hat.float(), eps.float())
    return EdgeLoss(matching, spread, mse, matching + lambda_div * spread + lambda_mse * mse)


def checkpoint_activations(gen):
    """Recompute activations in the backward pass of the denoiser and of the VAE decoder (at 512 px a step
    holds ~6 GB of them per image otherwise: bench/edge.py --sd15). CLIP's tower is left alone:
    transformers checkpoints only in training mode, and the frozen CLIP stays in eval mode."""
    gen.unet.enable_gradient_checkpointing()
    gen.vae.enable_gradient_checkpointing()


def step_rng(seed, draw):
    """The random draws of one step of one process (draw = step × processes + rank)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + draw)


def batches(n, batch_size, seed, epoch):
    """This epoch's batches of pair indices, in an order fixed by (seed, epoch); none smaller than two
    (the contrastive and diversity losses need a second pair)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    return [b for b in (order[i:i + batch_size] for i in range(0, n, batch_size)) if len(b) >= 2]


def settings_of(ecfg, data_name):
    return {**{k: ecfg[k] for k in SETTINGS}, "generator": str(ecfg["generator"]), "clip": str(ecfg["clip"]),
            "dataset": data_name}


def save_finetune(path, trainable, optimizer, settings, step, done):
    tensors = {f"param/{n}": p for n, p in trainable.items()}
    for n, p in trainable.items():
        buf = optimizer.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum/{n}"] = buf
    save_tensors(path, tensors, {"format": "mmdd-edge-v1", "settings": settings, "step": step, "done": done})


def load_finetune(path):
    """(settings, step, done, {name: tensor}) of a fine-tuning checkpoint; a clear error if it is not one."""
    from safetensors.torch import load_file
    try:
        meta, _ = read_tensor_file(path)
        tensors = load_file(str(path))
    except Exception as err:
        raise FinetuneError(f"{path} is unreadable ({err}); it is truncated or damaged") from err
    if meta.get("format") != "mmdd-edge-v1":
        raise FinetuneError(f"{path} is not an EDGE fine-tuning checkpoint of this toolkit")
    return meta["settings"], meta["step"], meta["done"], tensors


def apply_params(trainable, tensors, path):
    missing = [n for n in trainable if f"param/{n}" not in tensors]
    if missing:
        raise FinetuneError(f"{path} lacks {len(missing)} trainable tensors (e.g. {missing[0]}): another "
                            f"generator or edge.trainable mode")
    with torch.no_grad():
        for n, p in trainable.items():
            p.copy_(tensors[f"param/{n}"])


def restore(checkpoint, trainable, optimizer, path):
    """Put a checkpoint's parameters and momentum in place; returns its step."""
    _, step, _, tensors = checkpoint
    apply_params(trainable, tensors, path)
    for n, p in trainable.items():
        if f"momentum/{n}" in tensors:
            optimizer.state[p]["momentum_buffer"] = tensors[f"momentum/{n}"].to(p.device)
    return step


def finetuned_generator(path):
    """The base generator of a finished fine-tuning run with its trained parameters in place."""
    settings, _, done, tensors = load_finetune(path)
    if not done:
        raise FinetuneError(f"{path} is an unfinished fine-tuning run: rerun `generate.py finetune` to finish it")
    gen = load_generator(settings["generator"])
    apply_params(make_trainable(gen.unet, settings["trainable"], settings["lora_rank"]), tensors, path)
    gen.unet.requires_grad_(False)
    return gen


def finetune(cfg, log=print):
    """Fine-tune `edge.generator` on the training pairs; checkpoints `edge.out_dir/finetune.safetensors`
    every `edge.checkpoint_every` steps and resumes from it. Returns the checkpoint's path."""
    ecfg = cfg["edge"]
    path = Path(ecfg["out_dir"]) / "finetune.safetensors"
    settings = settings_of(ecfg, cfg["data"]["name"])
    checkpoint = load_finetune(path) if path.is_file() else None
    if checkpoint:
        saved, saved_step, done, _ = checkpoint
        if saved != settings:
            changed = ", ".join(k for k in settings if saved.get(k) != settings[k])
            raise FinetuneError(f"{path} was made with other settings ({changed}); choose another edge.out_dir "
                                f"or delete it to start over")
        if done:
            log(f"{path} is finished ({saved_step} steps); nothing to do")
            return path
    rank, world, device = join(cfg["device"])
    if world > 1:
        agree(cfg)
    gen = load_generator(ecfg["generator"]).to(device)
    trainable = make_trainable(gen.unet, ecfg["trainable"], ecfg["lora_rank"])
    clip = FrozenCLIP(ecfg["clip"]).to(device)
    optimizer = torch.optim.SGD(list(trainable.values()), lr=ecfg["lr"], momentum=ecfg["momentum"])
    step = restore(checkpoint, trainable, optimizer, path) if checkpoint else 0
    if step:
        log(f"resuming EDGE fine-tuning at step {step}")
    on_gpu = device.type == "cuda"
    if ecfg["gradient_checkpointing"] == "auto" and on_gpu or ecfg["gradient_checkpointing"] is True:
        checkpoint_activations(gen)
    unet = gen.unet
    if world > 1:
        unet = torch.nn.parallel.DistributedDataParallel(unet, device_ids=[device.index] if on_gpu else None)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu and ecfg["bf16"] else nullcontext()
    split = load_split(cfg["data"], "train")
    pairs = SplitImages(split, build_transform(gen.resolution, *VAE_RANGE), per_caption=True)
    per_epoch = [batches(len(pairs), ecfg["batch_size"], ecfg["seed"], e) for e in range(ecfg["epochs"])]
    schedule = [b for epoch in per_epoch for b in epoch]
    if not schedule:
        raise FinetuneError(f"the training split has {len(pairs)} pairs: EDGE needs at least two")
    bar = tqdm(total=len(schedule), initial=step, desc="EDGE fine-tuning", disable=rank > 0)
    while step < len(schedule):
        mine = schedule[step][rank::world]
        pixels = torch.stack([pairs[i][0] for i in mine]).to(device)
        rng = step_rng(ecfg["seed"], step * world + rank)
        with autocast:
            loss = edge_loss(gen, clip, pixels, [split.captions[i] for i in mine], rng, ecfg["tau"],
                             ecfg["lambda_div"], ecfg["lambda_mse"], unet)
        if not math.isfinite(loss.total.item()):
            raise DivergedError(f"EDGE loss became {loss.total.item()} at step {step}; lower edge.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()
        step += 1
        bar.update()
        bar.set_postfix({k: f"{v:.3f}" for k, v in loss.items().items()})
        if rank == 0 and (step % ecfg["checkpoint_every"] == 0 or step == len(schedule)):
            save_finetune(path, trainable, optimizer, settings, step, done=step == len(schedule))
    bar.close()
    barrier()
    leave()
    if rank == 0:
        log(f"EDGE fine-tuning done ({step} steps): {path}")
    return path
