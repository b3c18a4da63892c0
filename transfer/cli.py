"""``simclr-transfer <evaluator|tool> ...``: every subcommand comes from the evaluator registry.

Built-in evaluators and tools are registered by :mod:`transfer.commands`; third-party ones
arrive through the ``simclr_transfer.evaluators`` entry points (one that cannot be loaded is
skipped, with one ``warning:`` line on stderr). A :class:`~pretrain.errors.UserError` is
printed on one line and exits with status 2.
"""

from __future__ import annotations

import json
import sys

import transfer.commands  # noqa: F401  (registers the built-in evaluators and tools)
from pretrain.cli import user_error_message
from pretrain.distributed import init_from_environment, is_main_process, shutdown
from pretrain.errors import RaisingParser, UserError
from probes.registry import EVALUATORS, build_parser, load_plugins


def main(argv: list[str] | None = None) -> int:
    try:
        for problem in load_plugins()[1]:
            print(f"warning: {problem}", file=sys.stderr)
        parser = build_parser(RaisingParser)
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
