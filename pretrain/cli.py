"""``simclr-pretrain --config configs/X.yaml [section.key=value ...] [--resume]``.

Parses, loads the config, calls :func:`pretrain.train.train`. A user mistake is printed as
``error: <message>`` on one line with exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from pretrain import distributed as dist_utils
from pretrain.config import PretrainConfig
from pretrain.config_io import load_config
from pretrain.errors import RaisingParser, UserError


def build_parser() -> argparse.ArgumentParser:
    parser = RaisingParser(
        prog="simclr-pretrain",
        description="Pretrain a SimCLR encoder (Chen et al. 2020) and write a run directory.",
    )
    parser.add_argument("--config", help="YAML config (configs/*.yaml); defaults when omitted")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="config overrides, e.g. train.epochs=10 model.head=linear optim.lr=0.5",
    )
    parser.add_argument("--resume", action="store_true", help="continue the run from its checkpoint")
    return parser


def user_error_message(exc: BaseException) -> str:
    """One line: DataLoader workers wrap errors with a traceback; keep only the final line."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return text.splitlines()[0] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        cfg = load_config(PretrainConfig, args.config, args.overrides)
        dist_utils.init_from_environment(cfg.train.device)
        from pretrain.train import train

        summary = train(cfg, resume=args.resume)
        if dist_utils.is_main_process() and summary.get("already_complete"):
            print(f"run {summary['run_dir']} is already complete ({summary['epochs']} of "
                  f"{cfg.train.epochs} epochs trained); nothing to resume, no file changed")
        elif dist_utils.is_main_process():
            print(
                f"done: {summary['epochs']} epochs, final loss {summary['final_loss']:.4f}, "
                f"{summary['train_time_s']:.1f} s -> {summary['run_dir']}"
            )
        return 0
    except UserError as exc:
        print(f"error: {user_error_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    finally:
        dist_utils.shutdown()


if __name__ == "__main__":
    sys.exit(main())
