"""Dataclass configs from YAML with strict keys and ``section.key=value`` overrides.

Every stage has one dataclass (possibly nested, one dataclass per section). Loading rejects an
unknown key with the list of valid keys, checks value types, and applies command-line
overrides whose values are parsed as YAML (``optim.lr=0.3``, ``model.head=mlp``,
``data.name=imagefolder:/data/x``). YAML that does not parse names the file and line (or the
override and column).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pretrain.errors import ConfigError

C = TypeVar("C")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (allowing int -> float and None for Optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {_type_name(tp)} keys, got {value!r}")
        # an annotation is a class, never a dataclass instance
        return from_dict(typing.cast("type[Any]", tp), value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-6" as a string
            return float(value)
        except ValueError:
            pass
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def from_dict(cls: type[C], data: dict[str, Any], where: str = "") -> C:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys (listing the valid ones)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]}; valid keys"
            f"{' in ' + where if where else ''}: {', '.join(fields)}"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{where}.{name}" if where else name)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or cls.__name__}: {exc}") from None
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass config (what gets saved as ``config.yaml``)."""
    return dataclasses.asdict(cfg)


class Replace(dict):
    """A mapping given whole on the command line (``variants={a: [..]}``): it replaces the
    configured mapping instead of being merged into it, unlike dotted keys (``model.head=x``)."""


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["optim.lr=0.3", "model.head=mlp"]`` into a nested dict; values are parsed as YAML."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:  # never a half-typed list or mapping taken as a string
            detail = yaml_problem(exc, columns_only=True)
            joiner = " at " if detail.startswith("column") else ": "
            raise ConfigError(
                f"override {item!r}: invalid YAML value{joiner}{detail}; quote a value meant as a "
                f"string: {key}='\"{raw}\"'"
            ) from None
        node = nested
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override")
        node[leaf] = Replace(value) if isinstance(value, dict) else value
    return nested


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and not isinstance(value, Replace) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def yaml_problem(exc: yaml.YAMLError, columns_only: bool = False) -> str:
    """One line saying where and what: ``line 3, column 1: found a tab ...`` (PyYAML's marks are
    0-based; ``columns_only`` for a one-line text such as an override value)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    where = ""
    if mark is not None:
        where = (f"column {mark.column + 1}" if columns_only
                 else f"line {mark.line + 1}, column {mark.column + 1}")
    if "\\t" in problem or "\t" in problem:
        problem += " (YAML indents with spaces, not tabs)"
    if context and context_mark is not None:
        started = (f"column {context_mark.column + 1}" if columns_only
                   else f"line {context_mark.line + 1}")
        problem += f" ({context} started at {started})"
    return " ".join(f"{where}: {problem}".split() if where else problem.split())


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        detail = yaml_problem(exc)
        raise ConfigError(f"{path}{', ' if detail.startswith('line') else ': '}{detail}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_config(cls: type[C], path: str | Path | None, overrides: list[str] | None = None) -> C:
    """Load ``cls`` from a YAML file (or defaults when ``path`` is None) plus overrides."""
    data = read_yaml(path) if path is not None else {}
    if overrides:
        data = merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def write_yaml(data: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))
