"""The one config system of DistinctAD: typed dataclasses, loaded from YAML, overridden from the command line.

Precedence is CLI ``--section.key value`` > YAML file > dataclass defaults (as in torchtitan). Every field is
checked against its type annotation; an unknown key, a value of the wrong type or a missing file raises
:class:`ConfigError`, whose message is one line naming the key or the file.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import textwrap
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from distinctad.common import atomic_write_text

T = TypeVar("T")


class ConfigError(ValueError):
    """A user mistake in a config file or an override; the message is a single line."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to the annotated type ``tp``, or raise ConfigError naming ``key``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: expected one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, val_tp = get_args(tp) or (Any, Any)
        return {str(k): _coerce(v, val_tp, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a section (mapping), got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected bool, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected str, got {value!r}")
        return str(value)
    if isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")


def _factory_overrides(f: dataclasses.Field, tp: Any) -> dict[str, Any]:
    """What a section's ``default_factory`` changes against the section class's own defaults, as a nested dict.

    ``Stage2Job.model`` is ``field(default_factory=_default_model)`` (a tiny captioner): a YAML or CLI that sets only
    some ``model.*`` keys must keep the factory's other values, not fall back to ``CaptionerConfig()``'s.
    """
    if f.default_factory is dataclasses.MISSING or f.default_factory is tp or not dataclasses.is_dataclass(tp):
        return {}
    return _diff(f.default_factory(), tp())


def _diff(inst: Any, ref: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(inst):
        a, b = getattr(inst, f.name), getattr(ref, f.name)
        if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and type(a) is type(b):
            sub = _diff(a, b)
            if sub:
                out[f.name] = sub
        elif a != b:
            out[f.name] = dataclasses.asdict(a) if dataclasses.is_dataclass(a) else a
    return out


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "", base: dict[str, Any] | None = None) -> T:
    """Build dataclass ``cls`` from a (nested) mapping, rejecting unknown keys and wrong types.

    Layers, lowest first: the class defaults, ``base`` (what the parent section's factory sets, see
    :func:`_factory_overrides`), a named preset (``preset`` key, for classes with a ``PRESETS`` dict), then ``data``.
    """
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' (valid keys in this section: {sorted(fields)})")
    base = base or {}
    presets = getattr(cls, "PRESETS", None)
    preset = data.get("preset", base.get("preset"))
    preset_values: dict[str, Any] = {}
    if isinstance(presets, dict) and preset:
        if preset not in presets:
            raise ConfigError(f"{prefix}preset: unknown preset {preset!r} (choose from {', '.join(presets)})")
        preset_values = presets[preset]  # keys given explicitly (YAML or CLI) still win over it
    merged = {**{k: v for k, v in base.items() if k not in data}, **preset_values, **data}
    kwargs = {}
    for k, v in merged.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp) and isinstance(v, dict):
            sub_base = base.get(k) if isinstance(base.get(k), dict) else _factory_overrides(fields[k], tp)
            kwargs[k] = from_dict(tp, v, prefix=f"{prefix}{k}.", base=sub_base)
        else:
            kwargs[k] = _coerce(v, tp, f"{prefix}{k}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts (JSON/YAML serialisable)."""
    return dataclasses.asdict(cfg)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}``, the form MLflow params take."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _parse_cli_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """``["--train.lr", "1e-4", "--run.name=x"]`` -> ``{"train.lr": "1e-4" as parsed YAML, "run.name": "x"}``."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument '{arg}' (overrides look like --section.key VALUE)")
        key = arg[2:]
        if "=" in key:
            key, text = key.split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"override '--{key}' has no value")
            i += 1
            text = args[i]
        out[key.replace("-", "_")] = _parse_cli_value(text)
        i += 1
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '--{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"config file {path} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> T:
    """Defaults of ``cls``, updated by the YAML file at ``path``, updated by CLI ``overrides``."""
    data = load_yaml(path) if path else {}
    for key, value in parse_overrides(overrides or []).items():
        _set_dotted(data, key, value)
    return from_dict(cls, data)


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically); it loads back with :func:`load_config`."""
    atomic_write_text(path, dump_yaml(cfg))


def config_hash(cfg: Any) -> str:
    """A short stable hash of the config, stored in checkpoints to notice a changed config on resume."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------------------------
# Field documentation: the string literal below each field (torchtitan / litgpt convention)


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field name: its docstring}`` for dataclass ``cls`` and its bases, read from the source with ``ast``.

    A field is documented by a string literal on the line after it::

        lr: float = 1e-4
        \"\"\"Peak learning rate after warm-up.\"\"\"

    Fields without one map to ``""`` (a test asserts that every job's keys have help).
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):  # no source (frozen app): help without texts, never a crash
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, after in zip(body, [*body[1:], None], strict=True):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                doc = ""
                if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                    doc = " ".join(str(after.value.value).split())
                docs[node.target.id] = doc
    return docs


def describe(cfg: Any, prefix: str = "", section_help: str = "") -> list[str]:
    """``--help`` lines: a title per section, then ``  --section.key (type, default D): help`` per field.

    ``cfg`` is a job config instance (or class): defaults are read from the instance, so a section whose factory
    sets job-specific values (Stage-II's tiny captioner) shows those, not the section class's own defaults.
    """
    if isinstance(cfg, type):
        cfg = cfg()
    cls = type(cfg)
    hints = get_type_hints(cls)
    docs = field_docs(cls)
    lines: list[str] = []
    if prefix:
        lines.append(f"{prefix.rstrip('.')}: {section_help}".rstrip(": "))
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            lines.extend(describe(value, prefix=f"{prefix}{f.name}.", section_help=docs.get(f.name, "")))
            continue
        tp = hints[f.name]
        if get_origin(tp) is Literal:
            name = "|".join(map(str, get_args(tp)))
        else:
            name = _type_name(tp).replace("NoneType", "None")
        lines.append(f"  --{prefix}{f.name} ({name}, default {value!r}): {docs.get(f.name, '')}")
    return lines


__all__ = [
    "ConfigError",
    "describe",
    "field_docs",
    "config_hash",
    "dump_yaml",
    "flatten",
    "from_dict",
    "load_config",
    "load_yaml",
    "parse_overrides",
    "save_config",
    "to_dict",
]
