"""Atomic checkpoint writes and safe loads.

Writes go to a temporary file in the same folder, are flushed to disk and then renamed over the
target (``os.replace`` is atomic on POSIX), so a killed run never leaves a half-written
``checkpoint.pt``. Loads use ``torch.load(weights_only=True)``: only tensors and plain
containers are unpickled, never arbitrary objects. Every ``torch.load`` of the project goes
through :func:`load_checkpoint` or :func:`load_checkpoint_and_hash`, so a refused or corrupt
file is always the same one-line :class:`~pretrain.errors.CheckpointError` naming it, and
:func:`load_state_strict` names the keys when weights do not fit a model.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pretrain.errors import CheckpointError


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class UnsafeCheckpointError(CheckpointError):
    """A pickle that ``weights_only=True`` refuses: it holds objects other than tensors.

    Attributes:
        global_name: the refused class or function (``lightning.fabric...AttributeDict``).
        problem: the message without its ``cannot load checkpoint <path>: `` prefix.
    """

    def __init__(self, message: str, global_name: str, problem: str) -> None:
        super().__init__(message)
        self.global_name = global_name
        self.problem = problem


# torch names the refused object so: "Unsupported global: GLOBAL module.Class was not ..."
_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_ZIP_MAGIC = b"PK\x03\x04"


def _describe_failure(data: bytes, exc: BaseException) -> tuple[str, str]:
    """(what is wrong with a file torch.load refused, the refused global or "")."""
    found = _UNSUPPORTED_GLOBAL.search(str(exc))
    if found:
        name = found.group(1)
        return (f"it pickles a {name} object besides tensors, which a safe load "
                "(torch.load weights_only=True) refuses to unpickle"), name
    if not data:
        return "the file is empty (0 bytes)", ""
    if data.startswith(_ZIP_MAGIC):
        return ("the zip archive is truncated or damaged (an interrupted write or copy?); "
                "write or copy it again"), ""
    head = data[:8]
    printable = all(32 <= b < 127 or b in (9, 10, 13) for b in head)
    looks = "text" if printable else f"bytes {head!r}"
    return (f"not a PyTorch checkpoint (neither a torch zip archive nor a torch pickle; it "
            f"starts with {looks})"), ""


def _torch_load(data: bytes, path: Path, map_location: str | torch.device) -> dict[str, Any]:
    """Unpickle ``data`` (read from ``path``) with ``weights_only=True``; every failure is one
    :class:`CheckpointError` line naming the file, never torch's own advice or warnings."""
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": the refusal below says all there is to say
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # arbitrary bytes make the unpickler raise anything (KeyError, ...)
        problem, name = _describe_failure(data, exc)
        message = f"cannot load checkpoint {path}: {problem}"
        if name:
            raise UnsafeCheckpointError(message, name, problem) from None
        raise CheckpointError(message) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict of tensors")
    return state


def load_checkpoint_and_hash(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], str]:
    """The checkpoint at ``path`` (``weights_only=True``) and the sha256 of its bytes.

    The file is read once: its bytes are hashed and then unpickled from memory, so a probe
    that needs both the weights and their identity (the feature-cache key) costs one read.
    A missing file, one that is no torch checkpoint and one that pickles other objects than
    tensors are each a one-line :class:`CheckpointError` naming the file.
    """
    data = _read_bytes(path)
    return _torch_load(data, Path(path), map_location), hashlib.sha256(data).hexdigest()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a missing or corrupt file names the path."""
    return _torch_load(_read_bytes(path), Path(path), map_location)


def _read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None


def _some(keys: list[str], shown: int = 5) -> str:
    head = ", ".join(keys[:shown])
    return f"{head}, ..." if len(keys) > shown else head


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def state_dict_mismatch(module: nn.Module, state: Mapping[str, Any]) -> str:
    """Why ``state`` does not load strictly into ``module``; "" when it fits.

    Names a few of the missing keys, the unexpected keys and the shape mismatches, with counts:
    ``"2 missing keys (a, b), 1 unexpected key (c)"``.
    """
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    wrong = [
        f"{k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} in the model"
        for k in sorted(own)
        if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != own[k].shape
    ]
    kinds = ((missing, "missing key", "missing keys", 5),
             (unexpected, "unexpected key", "unexpected keys", 5),
             (wrong, "shape mismatch", "shape mismatches", 3))
    return ", ".join(f"{_count(len(keys), one, many)} ({_some(keys, shown)})"
                     for keys, one, many, shown in kinds if keys)


def load_state_strict(module: nn.Module, state: Mapping[str, Any], what: str) -> None:
    """``module.load_state_dict(state)`` (strict); a mismatch is one :class:`CheckpointError`
    line ``"<what>: 2 missing keys (a, b), 1 unexpected key (c)"``.

    Args:
        what: says whose weights and where, e.g. ``"checkpoint run/checkpoint.pt does not
            match its config (head)"``.
    """
    problem = state_dict_mismatch(module, state)
    if problem:
        raise CheckpointError(f"{what}: {problem}")
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:  # e.g. a value that is no tensor
        detail = " ".join(str(exc).split())
        raise CheckpointError(f"{what}: {detail[:300]}") from None
