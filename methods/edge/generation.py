"""EDGE's set: images sampled from the fine-tuned generator for seeded training captions, extra captions
from a captioner, and the export to the distilled-set artefact (docs/methods.md §5.6–5.8).

The sample folder is `images/0000.png …` + `prompts.json` (the captions and the sampling settings) and,
once every image exists, a Karpathy-style `dataset.json` (one caption per image; CPI after `caption`),
the folder format `evaluate.py` and `artefacts.export.read_folder` read. Image i is drawn from its own
seeded noise, so a resumed run keeps the finished images and makes the rest as an uninterrupted run would.
"""
import json
from pathlib import Path

import torch
from tqdm import tqdm

from artefacts.distilled import save_distilled
from artefacts.export import read_folder, write_captions
from artefacts.pairs import random_pairs
from common.distributed import pick_device
from common.errors import BusyError
from common.io import atomic_path, atomic_write_json
from data.annotations import load_split
from data.images import load_image
from methods.edge import EDGE
from methods.edge.finetune import finetuned_generator
from training.context import RunContext


class SampleError(BusyError):
    pass


def image_count(budget, cpi):
    """N pairs with CPI captions per image use N / CPI images."""
    if not 1 <= cpi <= budget:
        raise SampleError(f"edge.cpi = {cpi} captions per image does not fit a budget of {budget} pairs: "
                          f"choose 1 ≤ cpi ≤ budget")
    if budget % cpi:
        raise SampleError(f"edge.budget = {budget} is not a multiple of edge.cpi = {cpi}: each image carries cpi pairs")
    return budget // cpi


def set_folder(ecfg):
    """Where the set of `edge.budget` pairs is sampled, captioned and exported (fine-tuning is shared)."""
    return Path(ecfg["out_dir"]) / f"budget_{ecfg['budget']}"


def image_names(n):
    return [f"{i:04d}.png" for i in range(n)]


def image_seed(seed, index):
    return seed * 1_000_003 + index


@torch.no_grad()
def generate_images(gen, scheduler, prompts, seeds, steps, guidance):
    """uint8 (n, H, W, 3) images, one per prompt, each from the noise of its own seed; DDIM-style
    deterministic steps with classifier-free guidance (none at guidance 1)."""
    device = next(gen.unet.parameters()).device
    channels, size = gen.unet.config.in_channels, gen.unet.config.sample_size
    latents = torch.stack([torch.randn((channels, size, size), generator=torch.Generator().manual_seed(s))
                           for s in seeds]).to(device) * scheduler.init_noise_sigma
    states = gen.encode_prompts(prompts)
    guided = guidance != 1
    if guided:
        states = torch.cat([gen.encode_prompts([""] * len(prompts)), states])
    scheduler.set_timesteps(steps, device=device)
    for t in scheduler.timesteps:
        inputs = scheduler.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
        eps = gen.unet(inputs, t, encoder_hidden_states=states).sample
        if guided:
            unconditional, conditional = eps.chunk(2)
            eps = unconditional + guidance * (conditional - unconditional)
        latents = scheduler.step(eps, t, latents).prev_sample
    images = gen.vae.decode(latents / gen.latent_scale).sample
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def sample(cfg, finetuned, folder, log=print):
    """Generate the set's images into `folder`; returns how many were made in this call."""
    from diffusers import DDIMScheduler
    from PIL import Image
    ecfg, folder = cfg["edge"], Path(folder)
    n = image_count(ecfg["budget"], ecfg["cpi"])
    split = load_split(cfg["data"], "train")
    if n > len(split.captions):
        raise SampleError(f"{n} images need {n} training captions; the split has {len(split.captions)}")
    sources = [int(i) for i in random_pairs(split, n, ecfg["seed"])]
    record = {"prompts": [split.captions[i] for i in sources], "source_captions": sources,
              "settings": {"finetuned": str(finetuned), "steps": ecfg["steps"], "guidance": ecfg["guidance"],
                           "seed": ecfg["seed"], "budget": ecfg["budget"], "cpi": ecfg["cpi"]}}
    prompts_file = folder / "prompts.json"
    if prompts_file.is_file() and json.loads(prompts_file.read_text()) != record:
        raise SampleError(f"{folder} holds images sampled with other prompts or settings; choose another folder")
    atomic_write_json(prompts_file, record)
    names = image_names(n)
    todo = [i for i in range(n) if not (folder / "images" / names[i]).is_file()]
    if todo:
        gen = finetuned_generator(finetuned).to(pick_device(cfg["device"]))
        scheduler = DDIMScheduler.from_config(gen.scheduler.config)
        size = ecfg["sample_batch_size"]
        log(f"sampling {len(todo)} of {n} images ({n - len(todo)} kept from an earlier run)")
        for start in tqdm(range(0, len(todo), size), desc="EDGE sampling", unit="batch"):
            chunk = todo[start:start + size]
            images = generate_images(gen, scheduler, [record["prompts"][i] for i in chunk],
                                     [image_seed(ecfg["seed"], i) for i in chunk], ecfg["steps"], ecfg["guidance"])
            for i, pixels in zip(chunk, images):
                with atomic_path(folder / "images" / names[i]) as tmp:
                    Image.fromarray(pixels.numpy()).save(tmp, format="PNG")
    if todo or not (folder / "dataset.json").is_file():  # a rerun over a finished set keeps its captions
        write_dataset(folder, names, [[p] for p in record["prompts"]], captioned=False)
    return len(todo)


def write_dataset(folder, names, captions, captioned):
    write_captions(folder, names, captions, {"method": "edge", "captioned": captioned})


def caption(cfg, folder, captioner, log=print):
    """Give every sampled image CPI captions: its prompt and CPI − 1 from `captioner`."""
    ecfg, folder = cfg["edge"], Path(folder)
    prompts_file = folder / "prompts.json"
    if not prompts_file.is_file():
        raise SampleError(f"{folder} holds no prompts.json: run `generate.py sample` first")
    prompts = json.loads(prompts_file.read_text())["prompts"]
    names = image_names(len(prompts))
    missing = [n for n in names if not (folder / "images" / n).is_file()]
    if missing:
        raise SampleError(f"{folder} lacks {len(missing)} sampled images (e.g. {missing[0]}): finish "
                          f"`generate.py sample` first")
    extra, size = ecfg["cpi"] - 1, ecfg["sample_batch_size"]
    captions = [[p] for p in prompts]
    for start in tqdm(range(0, len(names), size) if extra else (), desc="EDGE captions", unit="batch"):
        images = [load_image(folder / "images" / n) for n in names[start:start + size]]
        new = captioner(images, prompts[start:start + size], extra, seed=ecfg["seed"] + start)
        for i, more in enumerate(new):
            captions[start + i] += more
    write_dataset(folder, names, captions, captioned=True)
    log(f"{len(names)} images × {ecfg['cpi']} captions = {len(names) * ecfg['cpi']} pairs in {folder / 'dataset.json'}")
    return captions


def export(cfg, folder, out, log=print):
    """The sampled and captioned `folder` as a distilled-set file `out` (captions encoded by the run's text encoder)."""
    ctx = RunContext(cfg, splits=(), log=log)
    dset = read_folder(folder, ctx.text_encoder, ctx.test_transform,
                       {**ctx.artefact_identity(), "method": EDGE, "seed": cfg["edge"]["seed"],
                        "cpi": cfg["edge"]["cpi"], "config": cfg})
    save_distilled(out, dset)
    log(f"EDGE set of {len(dset)} pairs written to {out}")
    return out
