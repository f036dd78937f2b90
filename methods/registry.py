"""The method registry: each distillation method registers once, under its name, with everything the one loop
(methods/loop.py), the config schema, `--help` and the results tables need to know about it. Nothing else names a
method.

A method is a `MethodSpec`: its own distill keys (common.schema.Key, checked with the loop's before any compute),
the values it gives the keys a config leaves null (`presets`), what it needs (`needs_buffer`: expert trajectories of
buffer.py; `trainable`: a model.trainable mode), and `build(ctx, cfg, d, log)`, which returns the run's `Method` (the
initial set, the optimizer groups and one gradient step; methods/loop.py says what the loop asks of it).
"""
from dataclasses import dataclass, field
from typing import Callable

from common.errors import ConfigError
from common.schema import SECTIONS
from training.recipe import distill_recipe


@dataclass(frozen=True)
class MethodSpec:
    name: str
    summary: str                    # one line for --help and the docs
    build: Callable                 # build(ctx, cfg, d, log) -> Method; d: cfg's distill section, resolved
    keys: dict = field(default_factory=dict)      # {key: common.schema.Key}: its own distill keys
    presets: dict = field(default_factory=dict)   # {key: value} for its keys the config leaves null
    needs_buffer: bool = False      # reads the expert trajectories of buffer.py (buffer.out_dir)
    trainable: str = None           # the model.trainable it needs (None: either)
    family: str = ""                # e.g. "trajectory matching"
    published: dict = field(default_factory=dict)  # {dataset: {budget: "IR@1/5/10 · TR@1/5/10"}} (docs/methods.md §8)
    published_protocol: str = None  # the protocol those were reported under (docs/methods.md §7)


REGISTRY = {}  # name -> MethodSpec, in registration order (the order of the results tables)


def register(spec):
    if spec.name in REGISTRY:
        raise ValueError(f"a method named {spec.name!r} is already registered")
    unknown = set(spec.presets) - set(spec.keys) - set(SECTIONS["distill"])
    if unknown:
        raise ValueError(f"method {spec.name}: presets of undeclared keys {sorted(unknown)}")
    REGISTRY[spec.name] = spec
    return spec


def unregister(name):
    """Remove a method (a test's own toy method, when the test ends)."""
    REGISTRY.pop(name, None)


def get_method(name):
    if name not in REGISTRY:
        raise ConfigError(f"unknown distill.method {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def method_keys():
    """{method: {key: Key}}: each method's own distill keys, for common.config's schema."""
    return {name: spec.keys for name, spec in REGISTRY.items()}


def resolve_method(dcfg, trainable="full", recipe=None):
    """The distill section with the method's presets where the config leaves a key null, and the `recipe`'s value
    of every recipe key (common.schema.Key.recipe) left null; `trainable`: the run's model.trainable."""
    spec = get_method(dcfg["method"])
    if spec.trainable and trainable != spec.trainable:
        raise ConfigError(f"distill.method {spec.name} ({spec.summary}) needs model.trainable: {spec.trainable}, but "
                          f"this run has model.trainable: {trainable}; use configs/<dataset>/{spec.name}*.yaml or "
                          f"set --model.trainable {spec.trainable}")
    keys = {**SECTIONS["distill"], **spec.keys}
    presets = {k: v for k, v in spec.presets.items() if dcfg.get(k) is None}
    return {**dcfg, **presets, **distill_recipe({"recipe": recipe, "distill": dcfg}, keys)}
