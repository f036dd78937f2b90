"""Run configuration: one YAML file, every key overridable from the command line, checked against the one schema
(common/schema.py) before anything else runs.

`--buffer.epochs 3` sets cfg["buffer"]["epochs"] = 3. Values are parsed as YAML scalars, so `--x.flag false` is the
boolean False (unlike argparse's `type=bool`), `1e-3` is a float and `null` is None. Unknown keys and sections are
errors, in a file as on the command line: a typo must not silently fall back to a default. After the check every key
of a section the config has (and of every section that needs no path) holds a value, its own or the schema's
default, so code reads cfg[section][key].
"""
import argparse
import copy
import difflib
import re
import sys
from dataclasses import replace
from pathlib import Path

import yaml

from common.errors import ConfigError
from common.schema import REQUIRED, SECTIONS, TOP, one_of


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` (no dot) as a string; learning rates are written that way, so read it as a float.
    A key given twice in one mapping is an error (YAML would keep the last silently), and so is an alias (`*name`):
    a config needs none, and aliases of aliases can grow a small file into gigabytes."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "an alias (*name) in a config: write the value out",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice in one mapping",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _parse(text):
    return yaml.load(text, Loader=_Loader)


class Schema:
    """The sections and top-level keys of common/schema.py, with the distill keys of each registered method
    (`method_keys`: {method: {key: Key}}, from methods.method_keys())."""

    def __init__(self, method_keys=None):
        self.method_keys = method_keys or {}

    def keys(self, section, values=None):
        """{key: Key} of `section` (None: the top level); for distill, the loop's and those of `values`' method."""
        if section is None:
            return TOP
        keys = dict(SECTIONS.get(section, {}))
        if section == "distill" and self.method_keys:
            keys["method"] = replace(keys["method"], check=one_of(*self.method_keys))
            keys.update(self.method_keys.get((values or {}).get("method"), {}))
        return keys

    def owners(self, key):
        """The methods that declare distill key `key`."""
        return [name for name, keys in self.method_keys.items() if key in keys]


def load_config(path, overrides=(), schema=None, reads=()):
    """Read a YAML config and apply `dotted.key=value` overrides (pairs of strings); with `schema`, check it and fill in
    the defaults (`resolve`). With `reads` (the sections a tool reads), an override of a section that the tool does
    not read and the config lacks is left out, with a note (`_for_this_tool`).

    A config may start from another one: `base: buffer.yaml` (relative to the file) reads that first and
    lays this file's sections over it, key by key."""
    cfg = _read(Path(path).resolve(), seen=())
    overrides = _for_this_tool(path, cfg, overrides, reads)
    for key, value in overrides:
        set_dotted(cfg, key, value, source=str(path), schema=schema)
    return resolve(cfg, schema, str(path) + (" with its overrides" if overrides else "")) if schema else cfg


def _read(path, seen):
    if path in seen:
        raise ConfigError(f"config file {path} is its own base (through {' -> '.join(map(str, seen))})")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found" + (f" (the base of {seen[-1]})" if seen else ""))
    try:
        cfg = _parse(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {path} is not UTF-8 text ({err.reason} at byte {err.start})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = cfg.pop("base", None)
    if base is not None and not isinstance(base, str):
        raise ConfigError(f"config file {path}: base must be the path of another config file, not {base!r}")
    # resolved, so that a cycle through ../sub/ paths is seen too
    return _merge(_read((path.parent / base).resolve(), (*seen, path)), cfg) if base else cfg


def _merge(base, over):
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def set_dotted(cfg, dotted_key, raw_value, source="config", schema=None):
    """Set cfg[a][b] for 'a.b'; the key must exist in the config or, with `schema`, be declared there."""
    *parents, leaf = dotted_key.split(".")
    node = cfg
    for i, part in enumerate(parents):
        if not isinstance(node.get(part), dict):
            where = ".".join(parents[: i + 1])
            if part in node:  # e.g. `--buffer 5` before `--buffer.out_dir …`
                raise ConfigError(f"config section {where} must be a mapping of keys to values, not "
                                  f"{node[part]!r}, so override --{dotted_key} has nowhere to go ({source})")
            raise ConfigError(f"unknown config section '{where}' in override --{dotted_key} ({source})")
        node = node[part]
    declared = schema is not None and len(parents) <= 1 and leaf in schema.keys(parents[0] if parents else None, node)
    if leaf not in node and not declared:
        known = ", ".join(sorted(node)) or "none"
        raise ConfigError(f"unknown config key '{dotted_key}' ({source}); known keys here: {known}")
    node[leaf] = _parse(raw_value) if isinstance(raw_value, str) else raw_value


def _unknown(name, known, what):
    close = difflib.get_close_matches(name, known, n=1)
    return f"unknown {what} '{name}'" + (f" (did you mean {close[0]}?)" if close else "")


def resolve(cfg, schema, source="config"):
    """Check every key of `cfg` against `schema` and fill in the defaults; one ConfigError names every problem."""
    problems = []
    sections = [name for name, value in cfg.items() if name not in TOP]
    for name in sections:
        if name not in SECTIONS:
            problems.append(_unknown(name, [*SECTIONS, *TOP], "config section or top-level key") + f" in {source}")
        elif not isinstance(cfg[name], dict):
            problems.append(f"config section {name} must be a mapping of keys to values, not {cfg[name]!r} "
                            f"({source})")
    if problems:
        raise ConfigError("; ".join(problems))
    for name, keys in SECTIONS.items():  # a section the config lacks is all defaults, if it can be
        if name not in cfg and all(key.default is not REQUIRED for key in keys.values()):
            cfg[name] = {}
            sections.append(name)
    for section in [None, *sections]:
        values = cfg if section is None else cfg[section]
        keys = schema.keys(section, values)
        prefix = f"{section}." if section else ""
        for key in [] if section is None else values:
            if key not in keys:
                owners = schema.owners(key) if section == "distill" else []
                problems.append(f"distill.{key} is a key of {', '.join(owners)}, not of distill.method "
                                f"{values.get('method')!r} ({source})" if owners else
                                _unknown(f"{prefix}{key}", [f"{prefix}{k}" for k in keys], "config key") +
                                f" in {source}")
        for key, spec in keys.items():
            if key not in values:
                if spec.default is REQUIRED:
                    problems.append(f"{prefix}{key} is required ({spec.help}) and {source} does not set it")
                else:
                    values[key] = copy.deepcopy(spec.default)
                continue
            ok, wanted = spec.check(values[key])
            if not ok:
                problems.append(f"{prefix}{key} must be {wanted}, not {values[key]!r} ({source})")
    if problems:
        raise ConfigError("; ".join(problems))
    _place_outputs(cfg)
    return cfg


OUTPUT_SECTIONS = ("buffer", "distill", "edge")  # the sections whose out_dir is a folder the run writes


def _place_outputs(cfg):
    """`{budget}` in distill.out_dir becomes the budget (lors_{budget}: a budget override moves the run); with
    out_root, every out_dir moves into that folder under its own name. Both idempotent: a saved config resolves
    to itself."""
    if "distill" in cfg:
        cfg["distill"]["out_dir"] = str(cfg["distill"]["out_dir"]).replace("{budget}", str(cfg["distill"]["budget"]))
    if cfg.get("out_root"):
        for section in OUTPUT_SECTIONS:
            if section in cfg:
                cfg[section]["out_dir"] = str(Path(cfg["out_root"]) / Path(cfg[section]["out_dir"]).name)


def differing_keys(a, b, ignore=(), prefix=""):
    """The dotted keys whose values differ between configs `a` and `b`, leaving out those in `ignore`."""
    out = []
    for key in sorted(set(a) | set(b)):
        name, x, y = f"{prefix}{key}", a.get(key), b.get(key)
        if name in ignore:
            continue
        if isinstance(x, dict) and isinstance(y, dict):
            out += differing_keys(x, y, ignore, f"{name}.")
        elif x != y:
            out.append(name)
    return out


def resolved_section(name, values):
    """One section (`data`, `model`, … not `distill`) checked and with its defaults: for a library function given a
    section alone."""
    return resolve({name: dict(values)}, Schema(), f"the {name} section")[name]


def _keys_help(schema, sections):
    """The `--help` text of the keys of `sections`: default and one line each; distill's per method."""
    def lines(prefix, keys):
        for key, spec in keys.items():
            default = "required" if spec.default is REQUIRED else f"default {spec.default!r}"
            recipe = f"; null: the recipe's (ours {spec.recipe[0]!r}, reference {spec.recipe[1]!r})" \
                if spec.recipe else ""
            yield f"  --{prefix}{key:<26} {spec.help} ({default}{recipe})"
    out = ["config keys (--section.key value overrides the config file):"]
    out += lines("", TOP)
    for section in sections:
        out += lines(f"{section}.", SECTIONS[section])
        if section == "distill":
            for method, keys in schema.method_keys.items():
                out += [f" distill.method {method} also reads:"] + list(lines("distill.", keys))
    return "\n".join(out)


def parse_args(argv=None, description=None, extra=None, reads=(), method_keys=None):
    """Parse `--config FILE` plus dotted overrides; `extra(parser)` may add script-specific flags; `reads`: the
    config sections the script reads (listed by --help); `method_keys`: the registry's (methods.method_keys()).

    Returns (cfg, args), cfg checked and completed (`resolve`). Flags the script declares are parsed by argparse;
    everything else of the form `--a.b value`, `--a.b=value` or `--key value` is an override of the YAML config.
    """
    schema = Schema(method_keys)
    example = f"--{reads[0]}.{next(iter(SECTIONS[reads[0]]))} VALUE" if reads else "--section.key VALUE"
    parser = argparse.ArgumentParser(
        description=description, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Any config key can be overridden, e.g. {example}.\n\n{_keys_help(schema, reads)}")
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
    try:
        cfg = load_config(args.config, overrides, schema, reads)
    except ConfigError as err:
        parser.error(str(err))
    return cfg, args


def _for_this_tool(path, cfg, overrides, reads):
    """The overrides without those of a section that this tool does not read and its config `cfg` lacks (one set
    of overrides, e.g. the README's TINY, can then go to every tool); each one left out is said in a note."""
    if not reads:
        return overrides
    skipped = [key for key, _ in overrides
               if "." in key and key.split(".")[0] in SECTIONS and key.split(".")[0] not in {*reads, *cfg}]
    if skipped:
        print(f"note: {' '.join('--' + k for k in skipped)}: not read by this tool ({path} has no such section), "
              f"left out", file=sys.stderr)
    return [(key, value) for key, value in overrides if key not in skipped]


def save_config(cfg, path):
    """Write the resolved config next to an output (atomically)."""
    from common.io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(copy.deepcopy(cfg), sort_keys=False))
