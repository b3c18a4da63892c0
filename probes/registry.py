"""One registry for every ``simclr-transfer`` subcommand: probes, transfer evaluators and tools.

An :class:`Evaluator` is a name, a one-line help, a function that adds its arguments to an
argparse sub-parser, and a function that runs it and returns a flat dict of namespaced metrics
(``{"knn/top1@k200": 91.2}``). Tools that are not evaluators (``export``, ``table``) use the
same shape and return an empty or informational dict.

Third-party packages add evaluators through the entry-point group
``simclr_transfer.evaluators``; each entry point names an :class:`Evaluator` object.

The command-line parser is built from the registry (:func:`build_parser`), and
:func:`run_command` runs one ``simclr-transfer`` command line in this process: the CLI and the
suite runner both go through it, so a command parses the same way everywhere.
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


PROG = "simclr-transfer"
DESCRIPTION = ("Evaluate SimCLR representations: frozen-feature probes, detection transfer, "
               "export, suites and tables.")


def build_parser() -> argparse.ArgumentParser:
    """``simclr-transfer`` with one sub-command per registered evaluator or tool, plus ``list``."""
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("list", help="list every evaluator and tool, plugins included")
    for name in EVALUATORS:
        ev = EVALUATORS.get(name)
        p = sub.add_parser(name, help=ev.help, description=ev.help)
        ev.add_arguments(p)
    return parser


def parse_command(argv: list[str]) -> tuple[Evaluator, argparse.Namespace]:
    """The evaluator named by ``argv[0]`` and its parsed arguments.

    A line that does not parse is a :class:`UserError` (argparse's own message is printed to
    stderr first), so a caller inside a longer job fails with one line instead of exiting.
    """
    if not argv or argv[0] not in EVALUATORS:
        name = argv[0] if argv else ""
        raise UserError(f"unknown command {name!r}; valid: {', '.join(EVALUATORS.names())}")
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        raise UserError(f"command {' '.join(argv)!r} does not parse (see the message above)") from None
    return EVALUATORS.get(argv[0]), args


def run_command(argv: list[str]) -> dict[str, Any]:
    """Run one command line (``["knn", RUN, "--tap", "h"]``) in this process."""
    evaluator, args = parse_command(argv)
    return evaluator.run(args)
