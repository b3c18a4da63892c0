"""The run checkpoint's schema: one writer (:func:`write_checkpoint`), one reader
(:func:`read_checkpoint`).

``checkpoint.pt`` holds, and every key is read back:

================  ====================================================  ======================
key               what                                                  read by
================  ====================================================  ======================
``format``        :data:`CHECKPOINT_FORMAT`                             every reader (checked)
``encoder``       encoder state dict (torchvision names for ResNets)    probes, detection, resume
``head``          projection-head state dict                            probes, resume
``optimizer``     optimizer state dict                                  resume
``epoch``         epochs completed                                      resume, records
``step``          optimizer steps completed                             resume
``total_steps``   length of the learning-rate schedule                  resume (must match)
``train_time_s``  seconds trained so far, summed over every part        resume, summary
================  ====================================================  ======================

A checkpoint written before ``train_time_s`` existed still loads (``time_recorded`` is false); a
resume derives it from ``metrics.jsonl`` (:func:`pretrain.run.resume.open_resume`).

No RNG state is stored: every epoch reseeds its shuffling and augmentation from (seed, epoch,
rank), which is what makes ``--resume`` exact. Files are written atomically and loaded with
``torch.load(weights_only=True)`` (:mod:`pretrain.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint import load_state_strict, save_checkpoint
from pretrain.errors import CheckpointError, ConfigError
from pretrain.model import SimCLRModel

CHECKPOINT_FORMAT = "simclr-transfer/run-checkpoint/1"


@dataclass
class RunState:
    """Where training stands, besides the weights: what a resumed run continues from."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    train_time_s: float = 0.0  # seconds of training so far, summed over every part of the run


@dataclass
class RunCheckpoint:
    """The contents of a run's ``checkpoint.pt``."""

    encoder: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    state: RunState
    total_steps: int  # 0 when unknown (a checkpoint written before the format key existed)
    optimizer: dict[str, Any] | None = None
    time_recorded: bool = True  # False: written before train_time_s existed (its time is 0)


def write_checkpoint(
    path: str | Path,
    model: SimCLRModel,
    optimizer: torch.optim.Optimizer,
    state: RunState,
    total_steps: int,
) -> None:
    """Write the run checkpoint atomically."""
    save_checkpoint(
        {
            "format": CHECKPOINT_FORMAT,
            "encoder": model.encoder.state_dict(),
            "head": model.head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "epoch": state.epoch,
            "step": state.step,
            "total_steps": total_steps,
            "train_time_s": state.train_time_s,
        },
        path,
    )


def is_run_checkpoint(state: dict[str, Any]) -> bool:
    """Whether a loaded checkpoint dict was written by :func:`write_checkpoint` (or by the
    first release, which had no ``format`` key but the same ``encoder``/``head`` dicts)."""
    if state.get("format") == CHECKPOINT_FORMAT:
        return True
    return "format" not in state and isinstance(state.get("encoder"), dict) and "epoch" in state


def read_checkpoint(state: dict[str, Any], where: str | Path) -> RunCheckpoint:
    """Parse a loaded ``checkpoint.pt`` dict; ``where`` names the file in errors."""
    fmt = state.get("format")
    if fmt is not None and fmt != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{where} has checkpoint format {fmt!r}; this version reads "
                              f"{CHECKPOINT_FORMAT!r}")
    if not is_run_checkpoint(state):
        raise CheckpointError(f"{where} is not a simclr-pretrain checkpoint (no 'encoder' weights)")
    legacy = state.get("scheduler") or {}  # the first release kept step and total_steps here
    time = state.get("train_time_s")
    return RunCheckpoint(
        encoder=dict(state["encoder"]),
        head=dict(state.get("head") or {}),
        state=RunState(epoch=int(state["epoch"]), step=int(state.get("step", legacy.get("step", 0))),
                       train_time_s=float(time or 0.0)),
        total_steps=int(state.get("total_steps", legacy.get("total_steps", 0))),
        optimizer=state.get("optimizer"),
        time_recorded=time is not None,
    )


def load_weights(model: SimCLRModel, ckpt: RunCheckpoint, where: str | Path) -> None:
    """Copy the checkpoint's encoder and head weights into ``model`` (strict); a mismatch names
    the missing, unexpected and mis-shaped keys."""
    for part in ("encoder", "head"):
        load_state_strict(getattr(model, part), getattr(ckpt, part),
                          f"checkpoint {where} does not match its config ({part})")


def restore(
    model: SimCLRModel,
    optimizer: torch.optim.Optimizer,
    ckpt: RunCheckpoint,
    total_steps: int,
    where: str | Path,
) -> RunState:
    """Resume: load weights and optimizer state; the schedule must be the one trained with."""
    if ckpt.total_steps and ckpt.total_steps != total_steps:
        raise ConfigError(
            f"{where} was trained on a schedule of {ckpt.total_steps} steps but this config gives "
            f"{total_steps} (train.epochs, train.batch_size or data.limit changed); resume with "
            f"the original values"
        )
    if ckpt.optimizer is None:
        raise CheckpointError(f"{where} holds no optimizer state to resume from")
    load_weights(model, ckpt, where)
    optimizer.load_state_dict(ckpt.optimizer)
    return RunState(ckpt.state.epoch, ckpt.state.step, ckpt.state.train_time_s)
