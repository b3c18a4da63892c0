"""Where a number was produced: code version and hardware, written beside every result."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import torch

from pretrain import __version__


def code_version() -> str:
    """Package version plus the git commit of the source tree, when there is one."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def cpu_description() -> str:
    """``x86_64 CPU x2``: the CPU, even when a GPU is present."""
    return f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()}"


def hardware(device: str = "") -> str:
    """The GPU's name when ``device`` is CUDA (or, with no device given, when CUDA is present);
    else the CPU."""
    on_cuda = device.startswith("cuda") if device else torch.cuda.is_available()
    if on_cuda and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return cpu_description()
