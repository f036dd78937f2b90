"""EDGE cost: seconds and peak memory per fine-tuning step and per sampled image.

    python bench/edge.py                                  # tiny random components (networks/tiny.py), CPU
    python bench/edge.py --sd15 --batch 1 --steps 1 --images 1  # Stable Diffusion v1.5 shapes, random init
    python bench/edge.py --components models/edge --batch 128 --sample-steps 50   # local real checkpoints, GPU

`--components DIR` names a folder with generator/ (diffusers layout) and clip/, as `python -m networks.tiny`
writes them; without it the tiny ones are built in a temporary folder. Inputs are random pixels with
made-up captions (the cost does not depend on the data). Memory is the peak above the level after set-up
(GPU: allocated; CPU: RSS). Prints figures only; asserts nothing.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, when run as a script
from bench.common import peak_memory, reset_peak, sync  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--components", type=Path, help="folder with generator/ and clip/ (default: tiny, built now)")
    p.add_argument("--sd15", action="store_true",
                   help="Stable Diffusion v1.5 and CLIP ViT-B/32 shapes, random init, 512 px (built now)")
    p.add_argument("--batch", type=int, default=8, help="fine-tuning batch")
    p.add_argument("--steps", type=int, default=3, help="timed fine-tuning steps (after one warm-up step)")
    p.add_argument("--trainable", default="bias-norm", choices=("bias-norm", "lora"))
    p.add_argument("--images", type=int, default=4, help="images sampled (one batch)")
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def finetune_cost(components, args, device):
    from networks.generator import FrozenCLIP, load_generator, make_trainable
    from methods.edge.finetune import checkpoint_activations, edge_loss
    gen = load_generator(components / "generator").to(device)
    params = list(make_trainable(gen.unet, args.trainable).values())
    clip = FrozenCLIP(components / "clip").to(device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        checkpoint_activations(gen)
    optimizer = torch.optim.SGD(params, lr=1e-3)
    pixels = torch.rand(args.batch, 3, gen.resolution, gen.resolution, device=device) * 2 - 1
    captions = [f"a photo of thing number {i}" for i in range(args.batch)]

    def step(i):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            loss = edge_loss(gen, clip, pixels, captions, torch.Generator().manual_seed(i))
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()

    step(0)
    baseline = reset_peak(device)
    sync(device)
    start = time.time()
    for i in range(args.steps):
        step(i + 1)
    sync(device)
    return (time.time() - start) / args.steps, peak_memory(device, baseline), gen, sum(p.numel() for p in params)


def sampling_cost(gen, args, device):
    from diffusers import DDIMScheduler
    from methods.edge.generation import generate_images
    gen.unet.requires_grad_(False)
    scheduler = DDIMScheduler.from_config(gen.scheduler.config)
    prompts = [f"a photo of thing number {i}" for i in range(args.images)]
    baseline = reset_peak(device)
    sync(device)
    start = time.time()
    generate_images(gen, scheduler, prompts, list(range(args.images)), args.sample_steps, guidance=7.5)
    sync(device)
    return (time.time() - start) / args.images, peak_memory(device, baseline)


def main(argv=None):
    args = parse(argv)
    from common.distributed import pick_device
    device = pick_device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        components, label = args.components, str(args.components)
        if args.sd15:
            from networks.tiny import build_sd15_shaped
            components, label = build_sd15_shaped(Path(tmp)), "Stable Diffusion v1.5 + CLIP ViT-B/32 shapes, random init"
        elif components is None:
            from networks.tiny import build_all
            components, label = build_all(Path(tmp), resolution=32), "tiny random components"
        seconds, memory, gen, trained = finetune_cost(components, args, device)
        per_image, sample_memory = sampling_cost(gen, args, device)
    print(f"\nEDGE, {label}, {gen.resolution} px, {device}; {trained:,} trainable ({args.trainable}) of "
          f"{sum(p.numel() for p in gen.unet.parameters()):,} denoiser parameters\n")
    print("| phase | setting | seconds | peak memory above set-up (MiB) |\n|---|---|---:|---:|")
    for phase, setting, s, m in (("fine-tuning step", f"batch {args.batch}", seconds, memory),
                                 ("sampled image", f"{args.sample_steps} steps, guidance 7.5, batch {args.images}",
                                  per_image, sample_memory)):
        print(f"| {phase} | {setting} | {s:.3f} | {m['memory'] - (m['baseline'] or 0):.0f} |")
    print(f"\nmemory: {memory['memory_kind']}")


if __name__ == "__main__":
    main()
