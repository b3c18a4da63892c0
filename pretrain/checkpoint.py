"""Atomic checkpoint writes and safe loads.

Writes go to a temporary file in the same folder, are flushed to disk and then renamed over the
target (``os.replace`` is atomic on POSIX), so a killed run never leaves a half-written
``checkpoint.pt``. Loads use ``torch.load(weights_only=True)``: only tensors and plain
containers are unpickled, never arbitrary objects.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

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


def load_checkpoint_and_hash(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], str]:
    """The checkpoint at ``path`` (``weights_only=True``) and the sha256 of its bytes.

    The file is read once: its bytes are hashed and then unpickled from memory, so a probe
    that needs both the weights and their identity (the feature-cache key) costs one read.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {first}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict of tensors")
    return state, hashlib.sha256(data).hexdigest()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; a missing or corrupt file names the path."""
    return load_checkpoint_and_hash(path, map_location)[0]
