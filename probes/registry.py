"""One registry for every ``simclr-transfer`` subcommand: probes, transfer evaluators and tools.

An :class:`Evaluator` is a name, a one-line help, a function that adds its arguments to an
argparse sub-parser, and a function that runs it and returns a flat dict of namespaced metrics
(``{"knn/top1@k200": 91.2}``). Tools that are not evaluators (``export``, ``table``) use the
same shape and return an empty or informational dict.

Third-party packages add evaluators through the entry-point group
``simclr_transfer.evaluators``; each entry point names an :class:`Evaluator` object
(:func:`load_plugins`; one that cannot be loaded is skipped with a one-line reason).

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

from pretrain.errors import RaisingParser, UserError
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


def load_plugins() -> tuple[list[str], list[str]]:
    """Register the evaluators advertised by installed packages.

    A plugin that fails to import, is not an :class:`Evaluator`, takes a registered name or
    cannot add its arguments is skipped: a broken plugin must never break ``list`` or the
    built-in commands.

    Returns:
        (names added, one line per skipped plugin saying which and why).
    """
    added, skipped = [], []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in EVALUATORS:
            continue
        try:
            obj = ep.load()
            if not isinstance(obj, Evaluator):
                raise TypeError(f"{type(obj).__name__} is not a probes.registry.Evaluator")
            obj.add_arguments(argparse.ArgumentParser(prog=obj.name))  # the parser must build
            register_evaluator(obj)
        except Exception as exc:  # whatever a plugin raises, it is skipped
            text = str(exc).strip()
            why = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
            skipped.append(f"evaluator plugin {ep.name!r} ({ep.value}) skipped: {why}")
            continue
        added.append(obj.name)
    return added, skipped


PROG = "simclr-transfer"
DESCRIPTION = ("Evaluate SimCLR representations: frozen-feature probes, detection transfer, "
               "export, suites and tables.")


def build_parser(parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser,
                 ) -> argparse.ArgumentParser:
    """``simclr-transfer`` with one sub-command per registered evaluator or tool, plus ``list``
    (sub-parsers are of ``parser_class`` too)."""
    parser = parser_class(prog=PROG, description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("list", help="list every evaluator and tool, plugins included")
    for name in EVALUATORS:
        ev = EVALUATORS.get(name)
        p = sub.add_parser(name, help=ev.help, description=ev.help)
        ev.add_arguments(p)
    return parser


def parse_command(argv: list[str]) -> tuple[Evaluator, argparse.Namespace]:
    """The evaluator named by ``argv[0]`` and its parsed arguments.

    A line that does not parse is a one-line :class:`UserError` carrying argparse's message
    (``unrecognized arguments: --tapp h``; nothing is printed), so a caller inside a longer
    job fails with one line instead of exiting.
    """
    if not argv or argv[0] not in EVALUATORS:
        name = argv[0] if argv else ""
        raise UserError(f"unknown command {name!r}; valid: {', '.join(EVALUATORS.names())}")
    try:
        args = build_parser(RaisingParser).parse_args(argv)
    except SystemExit:  # --help inside a command line
        raise UserError("asks for help, not a run") from None
    return EVALUATORS.get(argv[0]), args


def run_command(argv: list[str]) -> dict[str, Any]:
    """Run one command line (``["knn", RUN, "--tap", "h"]``) in this process."""
    try:
        evaluator, args = parse_command(argv)
    except UserError as exc:
        raise UserError(f"command {' '.join(argv)!r}: {exc}") from None
    return evaluator.run(args)
