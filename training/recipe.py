"""`recipe: ours | reference`: the details around the LoRS iteration where the public LoRS code and this one differ
(docs/differences.md).

`reference` does them as silicx/LoRS_Distill does, to reproduce its tables; `ours` keeps this code's choices. Every
detail is also its own key: a key left null (or absent) takes the recipe's value, so one detail can be changed alone.
"""
from common.errors import ConfigError
from common.schema import SECTIONS

RECIPES = ("ours", "reference")
# dotted key: (ours, reference), the expert details and the loop's (each method declares its own: MethodSpec.keys)
ITEMS = {f"{section}.{name}": key.recipe for section, keys in SECTIONS.items() for name, key in keys.items()
         if key.recipe}
CLIP_STATS = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))  # (mean, std)


def pixel_stats(recipe, tower):
    """(mean, std) images are normalised with: CLIP's (data.pixel_stats: clip) or the image tower's own."""
    return CLIP_STATS if recipe["data.pixel_stats"] == "clip" else (tower.mean, tower.std)


class RecipeError(ConfigError):
    pass


def recipe_name(cfg):
    return cfg.get("recipe") or "ours"


def recipe_value(cfg, key, pair=None):
    """The value of one detail: the config's own, or the recipe's where the config leaves it null; `pair`: its
    (ours, reference) when it is not one of ITEMS (a method's own key)."""
    section, leaf = key.split(".")
    value = (cfg.get(section) or {}).get(leaf)
    if key == "buffer.text_feature_samples" and value is None and not recipe_value(cfg, "buffer.text_encoder_dropout"):
        return 1  # without dropout every encoding is the same: one sample, whatever the recipe
    ours, reference = pair or ITEMS[key]
    if value is None:
        return reference if recipe_name(cfg) == "reference" else ours
    return float(value) if isinstance(ours, float) else value


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


def distill_recipe(cfg, keys):
    """{leaf: value} of the distill details among `keys` ({name: common.schema.Key}: the loop's and a method's):
    what `methods.registry.resolve_method` adds to a distill section."""
    return {name: recipe_value(cfg, f"distill.{name}", key.recipe) for name, key in keys.items() if key.recipe}
