"""`recipe: ours | reference`: the details around the LoRS iteration where the public LoRS code and this one differ
(docs/differences.md).

`reference` does them as silicx/LoRS_Distill does, to reproduce its tables; `ours` keeps this code's choices. Every
detail is also its own key: a key left null (or absent) takes the recipe's value, so one detail can be changed alone.
"""
RECIPES = ("ours", "reference")

# dotted key: (ours, reference, what else it may be)
ITEMS = {
    # 1. text features while experts train: M cached encodings per caption with the encoder in train mode (dropout)
    "buffer.text_encoder_dropout": (False, True, (False, True)),
    "buffer.text_feature_samples": (1, 5, int),
    # 2. expert images: BLIP's RandomAugment(2, 5) after crop and flip; the loader drops the short last batch
    "data.randaugment": (False, True, (False, True)),
    "buffer.drop_last": (False, True, (False, True)),
    # 3. pixel space: the image model's own mean/std, or CLIP's; synthetic images start from the train transform
    "data.pixel_stats": ("model", "clip", ("model", "clip")),
    "distill.init_augment": (False, True, (False, True)),
    # 4. WBCE: log(σ + ε), log(1 − σ + ε); a minibatch without a positive gives the whole or half the negative term
    "distill.wbce_eps": (0.0, 1e-6, float),
    "distill.wbce_no_positive": ("whole", "half", ("whole", "half")),
    # 5. inner minibatches: one queue across iterations, or a fresh permutation per iteration with the tail dropped
    "distill.minibatches": ("queue", "permutation", ("queue", "permutation")),
}
CLIP_STATS = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))  # (mean, std)


def pixel_stats(recipe, tower):
    """(mean, std) images are normalised with: CLIP's (data.pixel_stats: clip) or the image tower's own."""
    return CLIP_STATS if recipe["data.pixel_stats"] == "clip" else (tower.mean, tower.std)


class RecipeError(ValueError):
    pass


def recipe_name(cfg):
    name = cfg.get("recipe") or "ours"
    if name not in RECIPES:
        raise RecipeError(f"recipe must be one of {', '.join(RECIPES)}, not {name!r}")
    return name


def recipe_value(cfg, key):
    """The value of one detail: the config's own, or the recipe's where the config leaves it null."""
    section, leaf = key.split(".")
    value = (cfg.get(section) or {}).get(leaf)
    if key == "buffer.text_feature_samples" and value is None and not recipe_value(cfg, "buffer.text_encoder_dropout"):
        return 1  # without dropout every encoding is the same: one sample, whatever the recipe
    if value is None:
        ours, reference, _ = ITEMS[key]
        return reference if recipe_name(cfg) == "reference" else ours
    return _checked(key, value)


def _checked(key, value):
    allowed = ITEMS[key][2]
    if allowed is int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise RecipeError(f"{key} must be a whole number ≥ 1, not {value!r}")
    elif allowed is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 0.5:
            raise RecipeError(f"{key} must be a number in [0, 0.5), not {value!r}")
        value = float(value)
    elif value not in allowed or type(value) is not type(allowed[0]):
        raise RecipeError(f"{key} must be one of {', '.join(map(str, allowed))} (or null: the recipe's), "
                          f"not {value!r}")
    return value


def expert_recipe(cfg):
    """{key: value} of every detail that shapes the experts (all but the distill ones): what a buffer records and a
    distillation run must agree with. Checks the combination."""
    resolved = {key: recipe_value(cfg, key) for key in ITEMS if not key.startswith("distill.")}
    if resolved["buffer.text_feature_samples"] > 1 and not resolved["buffer.text_encoder_dropout"]:
        raise RecipeError("buffer.text_feature_samples > 1 needs buffer.text_encoder_dropout: true (without dropout "
                          "every encoding of a caption is the same feature)")
    return resolved


def recipe_differences(recorded, wanted):
    """The expert details (dotted keys) on which a buffer's `recorded` recipe and the `wanted` one (`expert_recipe`)
    disagree; a detail a buffer does not record (one from before recipes) was made as `ours` makes it."""
    recorded = recorded or {}
    return [key for key, value in wanted.items() if recorded.get(key, ITEMS[key][0]) != value]


def distill_recipe(cfg):
    """{leaf: value} of the distill details (wbce_eps, minibatches, ...): what `resolve_method` adds to a distill
    section."""
    return {key.split(".")[1]: recipe_value(cfg, key) for key in ITEMS if key.startswith("distill.")}


def loss_options(dcfg):
    """Keyword options of a resolved distill section's loss (only wbce has any: the recipe's ε and no-positive rule)."""
    return {"eps": dcfg["wbce_eps"], "no_positive": dcfg["wbce_no_positive"]} if dcfg["loss"] == "wbce" else {}
