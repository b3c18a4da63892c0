"""Typed evaluator options: one dataclass per evaluator, the same from Python and the CLI.

Each field is declared once with :func:`option` (default, help, how the command line spells it)
and serves both ways: :func:`add_options` turns a dataclass into argparse arguments, and
:func:`from_args` turns the parsed namespace back into the dataclass. So a notebook runs
``knn(KnnOptions(run="runs/x", tap="h,z"))`` with exactly the defaults of ``simclr-transfer knn``,
and a default lives in one place.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_CLI = "cli"


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str = "",
    positional: bool = False,
    **argparse_kwargs: Any,
) -> Any:
    """A dataclass field that is also a command-line argument.

    Args:
        default: the value when neither Python nor the command line gives one; lists and other
            mutable defaults are copied per instance.
        help: the argparse help text.
        flag: the option string (default ``--<field-name-with-dashes>``).
        positional: a positional argument instead of an option.
        argparse_kwargs: passed to ``add_argument`` (``type``, ``choices``, ``action``,
            ``metavar``, ...).
    """
    meta = {_CLI: {"help": help, "flag": flag, "positional": positional, **argparse_kwargs}}
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: copy.deepcopy(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one argument per :func:`option` field of dataclass ``cls`` (in field order)."""
    for f in dataclasses.fields(cls):
        spec = dict(f.metadata.get(_CLI, {}))
        if not spec:
            continue
        flag, positional = spec.pop("flag"), spec.pop("positional")
        if positional:
            parser.add_argument(f.name, **spec)
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": _default(f), **spec}
        if kwargs.get("action") in ("store_true", "store_false"):
            kwargs.pop("type", None)
        parser.add_argument(flag or "--" + f.name.replace("_", "-"), **kwargs)


def from_args(cls: Callable[..., T], args: argparse.Namespace) -> T:
    """The dataclass ``cls`` with every field that ``args`` has (others keep their default)."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return cls(**{n: getattr(args, n) for n in names if hasattr(args, n)})
