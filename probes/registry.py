"""One registry for every ``simclr-transfer`` subcommand: probes, transfer evaluators and tools.

An :class:`Evaluator` is a name, a one-line help, a function that adds its arguments to an
argparse sub-parser, and a function that runs it and returns a flat dict of namespaced metrics
(``{"knn/top1@k200": 91.2}``). Tools that are not evaluators (``export``, ``table``) use the
same shape and return an empty or informational dict.

Third-party packages add evaluators through the entry-point group
``simclr_transfer.evaluators``; each entry point names an :class:`Evaluator` object.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from pretrain.errors import UserError
from pretrain.registry import Registry

ENTRY_POINT_GROUP = "simclr_transfer.evaluators"


@dataclass(frozen=True)
class Evaluator:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], dict[str, Any]]
    kind: str = "evaluator"  # "evaluator" (writes records) or "tool"


EVALUATORS: Registry[Evaluator] = Registry("evaluator")


def register_evaluator(evaluator: Evaluator) -> Evaluator:
    """Add ``evaluator`` to the registry (raises ``KeyError`` on a duplicate name)."""
    EVALUATORS.add(evaluator.name, evaluator)
    return evaluator


def load_plugins() -> list[str]:
    """Register evaluators advertised by installed packages; returns the names added."""
    added = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in EVALUATORS:
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the built-in commands
            raise UserError(
                f"cannot load evaluator plugin {ep.name!r} ({ep.value}): {exc}"
            ) from None
        if not isinstance(obj, Evaluator):
            raise UserError(f"plugin {ep.name!r} ({ep.value}) is not a probes.registry.Evaluator")
        register_evaluator(obj)
        added.append(obj.name)
    return added
