"""Run configuration: one YAML file, every key overridable from the command line.

`--train.epochs 3` sets cfg["train"]["epochs"] = 3. Values are parsed as YAML scalars, so
`--x.flag false` is the boolean False (unlike argparse's `type=bool`), `1e-3` is a float and
`null` is None. Unknown keys are errors: a typo must not silently fall back to a default.
"""
import argparse
import copy
import re
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` (no dot) as a string; learning rates are written that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _parse(text):
    return yaml.load(text, Loader=_Loader)


def load_config(path, overrides=()):
    """Read a YAML config and apply `dotted.key=value` overrides (pairs of strings).

    A config may start from another one: `base: buffer.yaml` (relative to the file) reads that first and
    lays this file's sections over it, key by key."""
    cfg = _read(Path(path).resolve(), seen=())
    for key, value in overrides:
        set_dotted(cfg, key, value, source=str(path))
    return cfg


def _read(path, seen):
    if path in seen:
        raise ConfigError(f"config file {path} is its own base (through {' -> '.join(map(str, seen))})")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found" + (f" (the base of {seen[-1]})" if seen else ""))
    try:
        cfg = _parse(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = cfg.pop("base", None)
    # resolved, so that a cycle through ../sub/ paths is seen too
    return _merge(_read((path.parent / base).resolve(), (*seen, path)), cfg) if base else cfg


def _merge(base, over):
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def set_dotted(cfg, dotted_key, raw_value, source="config"):
    """Set cfg[a][b][c] for 'a.b.c'; the key must already exist in the config."""
    *parents, leaf = dotted_key.split(".")
    node = cfg
    for i, part in enumerate(parents):
        if not isinstance(node.get(part), dict):
            where = ".".join(parents[: i + 1])
            raise ConfigError(f"unknown config section '{where}' in override --{dotted_key} ({source})")
        node = node[part]
    if leaf not in node:
        known = ", ".join(sorted(node)) or "none"
        raise ConfigError(f"unknown config key '{dotted_key}' ({source}); known keys here: {known}")
    node[leaf] = _parse(raw_value) if isinstance(raw_value, str) else raw_value


def parse_args(argv=None, description=None, extra=None):
    """Parse `--config FILE` plus dotted overrides; `extra(parser)` may add script-specific flags.

    Returns (cfg, args). Flags the script declares are parsed by argparse; everything else of the
    form `--a.b value`, `--a.b=value` or `--key value` is an override of the YAML config.
    """
    parser = argparse.ArgumentParser(
        description=description, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Any config key can be overridden with --section.key value, e.g. --train.epochs 3.")
    parser.add_argument("--config", required=True, help="YAML config file")
    if extra:
        extra(parser)
    args, rest = parser.parse_known_args(argv)
    overrides = []
    i = 0
    while i < len(rest):
        token = rest[i]
        if not token.startswith("--"):
            parser.error(f"unrecognised argument {token!r} (overrides look like --section.key value)")
        if "=" in token:
            key, value = token[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(rest):
                parser.error(f"override {token} needs a value")
            key, value = token[2:], rest[i + 1]
            i += 2
        overrides.append((key, value))
    from utils.validate import check_config  # it builds on this module
    try:
        cfg = load_config(args.config, overrides)
        check_config(cfg)
    except ConfigError as err:
        parser.error(str(err))
    return cfg, args


def save_config(cfg, path):
    """Write the resolved config next to an output (atomically)."""
    from utils.io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(copy.deepcopy(cfg), sort_keys=False))
