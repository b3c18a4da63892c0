"""``simclr-transfer <evaluator|tool> ...``: every subcommand comes from the evaluator registry.

Built-in evaluators register themselves when ``probes.commands`` and ``transfer.commands`` are
imported; third-party ones arrive through the ``simclr_transfer.evaluators`` entry points.
A :class:`~pretrain.errors.UserError` is printed on one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from pretrain.cli import user_error_message
from pretrain.distributed import init_from_environment, is_main_process, shutdown
from pretrain.errors import UserError
from probes.registry import EVALUATORS, load_plugins


def register_builtins() -> None:
    import probes.commands  # noqa: F401  (registers probes)
    import transfer.commands  # noqa: F401  (registers detection, export, tables, ...)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simclr-transfer",
        description="Evaluate SimCLR representations: frozen-feature probes, detection "
        "transfer, export, suites and tables.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("list", help="list every evaluator and tool, plugins included")
    for name in EVALUATORS:
        ev = EVALUATORS.get(name)
        p = sub.add_parser(name, help=ev.help, description=ev.help)
        ev.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        register_builtins()
        load_plugins()
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        if args.command == "list":
            for name in EVALUATORS:
                ev = EVALUATORS.get(name)
                print(f"{name:<12} {ev.kind:<9} {ev.help}")
            return 0
        # Under torchrun, join the process group: probes shard their feature extraction.
        init_from_environment(getattr(args, "device", "auto"))
        result = EVALUATORS.get(args.command).run(args)
        if result and getattr(args, "json", False) and is_main_process():
            print(json.dumps(result, indent=2, default=str))
        return 0
    except UserError as exc:
        print(f"error: {user_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutdown()


if __name__ == "__main__":
    sys.exit(main())
