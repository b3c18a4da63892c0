"""Typed errors for user mistakes.

A :class:`UserError` means the person running the tool did something we can explain in one
line (a mistyped config key, a missing dataset, a corrupt image). The command-line entry points
catch it, print ``error: <message>`` and exit with status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class UserError(Exception):
    """A mistake the user can fix; the message says what was wrong and what to do."""


class ConfigError(UserError):
    """An invalid configuration: unknown key, wrong type, bad override."""


class DataError(UserError):
    """A missing, empty or unreadable dataset, image or annotation file."""


class CheckpointError(UserError):
    """A missing, corrupt or incompatible checkpoint file."""


class NonFiniteLossError(UserError):
    """Training produced a NaN or infinite loss; the message names the step."""


class RaisingParser(argparse.ArgumentParser):
    """An argument parser whose mistakes raise a one-line :class:`UserError` (``error: argument
    --k: ... (see simclr-transfer knn --help)``) instead of printing the usage and exiting, so a
    command line typed by hand and one inside a longer job (a suite's) fail the same way."""

    def error(self, message: str) -> NoReturn:
        first = message.splitlines()[0] if message else "invalid arguments"
        raise UserError(f"{first} (see {self.prog} --help)")
