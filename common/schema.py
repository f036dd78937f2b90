"""Config values checked in one place, before any compute: types, ranges and known names of every key the entry
points read. `check_config(cfg)` checks the sections the config has and raises one ConfigError naming every bad key.

Relations that need the data (a budget within the split, a rank within the set) are checked where the split is
first known (utils/distillation.py); the recipe's keys are checked by utils/recipe.py.
"""
import math
import numbers

from utils.config import ConfigError


def whole(low):
    """A whole number ≥ low."""
    def check(value):
        return (isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= low,
                f"a whole number ≥ {low}")
    return check


def number(low=None, high=None, low_open=False, high_open=True, nullable=False):
    """A finite number in [low, high) (or (low, …) with low_open)."""
    def check(value):
        if value is None and nullable:
            return True, ""
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        lo = "" if low is None else f"{'>' if low_open else '≥'} {low}"
        hi = "" if high is None else f"{'<' if high_open else '≤'} {high}"
        return ok, "a number " + " and ".join(p for p in (lo, hi) if p)
    return check


def one_of(*names, nullable=False):
    def check(value):
        return (value in names or (nullable and value is None),
                "one of " + ", ".join(map(str, names)) + (" (or null)" if nullable else ""))
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


POSITIVE, COUNT, FRACTION = number(0, low_open=True), whole(1), number(0, 1)
RULES = {
    "data": {"image_size": whole(8), "num_workers": whole(0), "max_words": whole(1),
             "allow_outside_root": one_of(True, False), "image_cache": one_of(True, False)},
    "model": {"temperature": POSITIVE, "text_dropout": FRACTION, "text_max_length": whole(1),
              "trainable": one_of("full", "heads")},
    "buffer": {"num_experts": COUNT, "epochs": COUNT, "lr_image": POSITIVE, "lr_text": POSITIVE,
               "momentum": FRACTION, "batch_size": COUNT, "augment": one_of(True, False), "eval_every": whole(0),
               "dtype": one_of("fp32", "bf16"), "seed": whole(0)},
    "evaluate": {"students": COUNT, "epochs": COUNT, "checkpoint_every": whole(0), "together": COUNT,
                 "batch_size": COUNT, "momentum": FRACTION, "weight_decay": number(0), "lr_image": POSITIVE,
                 "lr_text": POSITIVE},
    "distill": {"method": one_of("lors", "mtt-vl", "tesla-vl", "repblend"),
                "metagrad": one_of("unroll", "tesla", "exact", nullable=True),
                "loss": one_of("infonce", "wbce", "bce", "cwcl", "kl", "mse", nullable=True),
                "sim_type": one_of("identity", "lowrank", "full", nullable=True),
                "reserve_pair": one_of(True, False, nullable=True), "blend": one_of(True, False, nullable=True),
                "budget": whole(2), "sim_rank": COUNT, "sim_alpha": number(0, low_open=True), "syn_steps": COUNT,
                "expert_epochs": COUNT, "max_start_epoch": COUNT, "mini_batch_size": COUNT, "iterations": whole(0),
                "lr_image": POSITIVE, "lr_text": POSITIVE, "lr_sim": number(0), "lr_lr": number(0),
                "lr_teacher": per_tower(POSITIVE), "momentum": FRACTION,
                "offload": one_of("auto", "none", "host", "disk"), "merge_branches": one_of(True, False),
                "init": one_of("real", "noise"), "checkpoint_every": COUNT, "eval_every": whole(0),
                "eval_students": COUNT, "seed": whole(0), "checkpoint_activations": one_of(True, False),
                "precision": one_of("fp32", "bf16"), "segments_per_iteration": COUNT},
    "log": {"tensorboard": lambda value: (value is None or (isinstance(value, str) and value != ""),
                                          "a folder path (or null: off)")},
}


def check_config(cfg):
    """Raise one ConfigError listing every key of a known section whose value is out of range or of the wrong kind."""
    problems = []
    for section, rules in RULES.items():
        values = cfg.get(section)
        if not isinstance(values, dict):
            continue
        for key, rule in rules.items():
            if key in values:
                ok, wanted = rule(values[key])
                if not ok:
                    problems.append(f"{section}.{key} must be {wanted}, not {values[key]!r}")
    if problems:
        raise ConfigError("; ".join(problems))
