"""Scalars to TensorBoard and Weights & Biases, beside the JSON lines that stay the record.

``metrics.jsonl`` (and detection's ``train_log.jsonl``) are what tables, plots and resumes read;
the writers here only mirror numbers into the dashboards researchers keep open while a run
trains. Both are optional extras, imported only when asked for::

    pip install -e ".[tensorboard]"     train.tensorboard=true       -> <run>/tensorboard/
    pip install -e ".[wandb]"           train.wandb_project=NAME     -> <run>/wandb/

Every scalar is written at the optimizer step (the x-axis TensorBoard and W&B share), epoch
numbers as the scalar ``train/epoch``. A record's keys become tags as they are
(``monitor/knn_top1/h``, ``quality/rankme/z``), with ``<section>/`` put before keys without a
slash (``loss`` -> ``train/loss``); non-numeric values are left out. A resumed run's
TensorBoard writer purges the events after the checkpoint's step (those of the epochs that
were trained again), and its W&B run continues the same W&B run id (kept in the run folder).
Only the process that writes ``metrics.jsonl`` (rank 0) opens writers.
"""

from __future__ import annotations

import math
import numbers
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pretrain.errors import ConfigError

TENSORBOARD_DIR = "tensorboard"  # under the run (or detection work) folder
WANDB_ID_FILE = "wandb_id.txt"  # the W&B run id, so a resumed run continues the same W&B run
TENSORBOARD_INSTALL = "pip install 'simclr-transfer[tensorboard]' (or: pip install tensorboard)"
WANDB_INSTALL = "pip install 'simclr-transfer[wandb]' (or: pip install wandb)"


def scalar_tags(record: Mapping[str, Any], section: str) -> dict[str, float]:
    """``{tag: value}`` for every numeric, non-boolean value of ``record``; keys without a slash
    get ``<section>/`` before them. Non-finite values are kept (TensorBoard draws them)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        out[key if "/" in key else f"{section}/{key}"] = float(value)
    return out


def check_available(tensorboard: bool, wandb_project: str) -> None:
    """Raise a one-line :class:`ConfigError` when an asked-for writer's package is missing,
    before any file is written (the options are ``train.*`` in pretraining and detection)."""
    if tensorboard:
        try:
            import torch.utils.tensorboard  # noqa: F401  (needs the tensorboard package)
        except ImportError:
            raise ConfigError(f"train.tensorboard=true needs the tensorboard package, which is "
                              f"not installed: {TENSORBOARD_INSTALL}") from None
    if wandb_project:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError(f"train.wandb_project needs the wandb package, which is not "
                              f"installed: {WANDB_INSTALL}") from None


class ScalarWriters:
    """The dashboards one run writes to (none, TensorBoard, W&B or both).

    ``write(record, step, section)`` mirrors one record's numbers; ``close()`` flushes. With
    neither asked for, both do nothing, so callers need no branches.
    """

    def __init__(self, tensorboard: Any = None, wandb_run: Any = None) -> None:
        self.tensorboard = tensorboard
        self.wandb_run = wandb_run

    @property
    def active(self) -> bool:
        return self.tensorboard is not None or self.wandb_run is not None

    def write(self, record: Mapping[str, Any], step: int, section: str = "train") -> None:
        scalars = scalar_tags(record, section)
        if not scalars:
            return
        if self.tensorboard is not None:
            for tag, value in scalars.items():
                self.tensorboard.add_scalar(tag, value, global_step=step)
        if self.wandb_run is not None:
            finite = {tag: v for tag, v in scalars.items() if math.isfinite(v)}
            self.wandb_run.log(finite, step=step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None

    def __enter__(self) -> ScalarWriters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wandb_run(project: str, folder: Path, config: Mapping[str, Any], resume: bool) -> Any:
    import wandb

    id_file = folder / WANDB_ID_FILE
    run_id = id_file.read_text().strip() if resume and id_file.is_file() else ""
    if not run_id:
        run_id = secrets.token_hex(8)  # W&B ids: lowercase letters and digits
        id_file.write_text(run_id + "\n")
    return wandb.init(project=project, name=folder.name, id=run_id, resume="allow",
                      dir=str(folder), config=dict(config))


def open_writers(
    folder: Path,
    *,
    tensorboard: bool,
    wandb_project: str = "",
    config: Mapping[str, Any] | None = None,
    resume_step: int | None = None,
) -> ScalarWriters:
    """Writers for the run (or work) ``folder``, which exists; none (a writer that writes
    nothing) when neither dashboard is asked for.

    Args:
        tensorboard: write event files to ``folder/tensorboard/``.
        wandb_project: log to this W&B project ("" = no W&B); the mode (online, offline,
            disabled) is W&B's own: ``WANDB_MODE``. The run is named after ``folder``.
        config: the resolved config, stored with the W&B run.
        resume_step: the step of the checkpoint a resumed run continues from (None = a fresh
            run): TensorBoard hides earlier sessions' events after it (those of steps trained
            again); W&B continues the stored run id.
    """
    check_available(tensorboard, wandb_project)
    board = None
    if tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resume_step is None else resume_step + 1
        board = SummaryWriter(str(folder / TENSORBOARD_DIR), purge_step=purge)
    run = (_wandb_run(wandb_project, folder, config or {}, resume_step is not None)
           if wandb_project else None)
    return ScalarWriters(board, run)
