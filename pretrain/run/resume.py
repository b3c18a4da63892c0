"""What ``--resume`` may change, and the checks a resume passes before any file of the run is touched.

A resumed run continues the run it names: it must end with the weights the uninterrupted run
would have ended with. So a resume refuses every override that changes what is trained (the
encoder, the head and its shape, the data, the augmentation, the optimizer and its
hyper-parameters, the schedule, batch size, temperature, seed, global BN) with one line naming
the keys. :data:`RESUME_MAY_CHANGE` is the one list of keys that may differ from the run's
``config.yaml``: each says where or how fast the steps run, or what is logged and saved, never
what is learned. (The exact, bit-identical resume of the README also needs the device, the
precision and the data workers unchanged: another device or another number of workers trains the
same recipe with other rounding or other random views.)

``train.epochs`` is refused like the rest: the warm-up and cosine learning-rate schedule is laid
out over the total number of epochs, so a run continued to another length would equal no
uninterrupted run of any length.

A resume of a finished run (every epoch trained, ``summary.json`` written) is a no-op:
:func:`finished_summary` returns the stored summary and nothing is written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from pretrain.checkpoint import load_checkpoint
from pretrain.config import PretrainConfig
from pretrain.config_io import to_dict
from pretrain.errors import ConfigError
from pretrain.jsonl import read_jsonl
from pretrain.run.layout import CHECKPOINT_FILE, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE
from pretrain.run.load import load_run_config
from pretrain.run.state import RunCheckpoint, read_checkpoint

RESUME_MAY_CHANGE: frozenset[str] = frozenset({
    # where the run lives (they locate it; a relative and an absolute path name the same run)
    "train.run_dir", "train.name",
    # where the same dataset is read from, and how
    "data.root", "data.cache_dir", "data.num_workers",
    # where and how fast a step runs
    "train.device", "train.precision", "train.channels_last", "train.compile", "augment.device",
    # what is logged and how often the state is saved
    "train.log_every", "train.progress", "train.quality_every", "train.quality_samples",
    "train.checkpoint_every", "train.monitor_every", "train.monitor_k",
    "train.monitor_temperature", "train.monitor_split", "train.monitor_taps",
    "train.tensorboard", "train.wandb_project",
})

MAX_LISTED = 6  # changed keys shown with their values; the rest are counted


def flat_config(cfg: PretrainConfig) -> dict[str, Any]:
    """``{"section.key": value}`` for every key of ``cfg``."""
    return {f"{section}.{key}": value
            for section, values in to_dict(cfg).items() for key, value in values.items()}


def trained_changes(saved: PretrainConfig, cfg: PretrainConfig) -> list[tuple[str, Any, Any]]:
    """``(key, saved value, new value)`` for every key outside :data:`RESUME_MAY_CHANGE` that
    ``cfg`` changes, in config order."""
    old, new = flat_config(saved), flat_config(cfg)
    return [(k, old[k], new[k]) for k in new if k not in RESUME_MAY_CHANGE and old[k] != new[k]]


def check_resume_config(saved: PretrainConfig, cfg: PretrainConfig, run_dir: Path) -> None:
    """Raise :class:`ConfigError` (one line naming the keys) if resuming the run of ``saved``
    with ``cfg`` would change what it trains."""
    changes = trained_changes(saved, cfg)
    if not changes:
        return
    listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, a, b in changes[:MAX_LISTED])
    if len(changes) > MAX_LISTED:
        listed += f" and {len(changes) - MAX_LISTED} more"
    why = ""
    if any(k == "train.epochs" for k, _, _ in changes):
        why = ("; train.epochs cannot change on a resume: the learning-rate schedule is laid out "
               "over the total epochs, so the continued run would equal no real run")
    raise ConfigError(
        f"--resume would change what {run_dir} was trained with: {listed}; resume with the values "
        f"in its {CONFIG_FILE}, or set train.name to start a new run{why}"
    )


def time_from_metrics(path: Path, epochs: int) -> float:
    """Seconds of training in ``metrics.jsonl`` for epochs 1..``epochs`` (the last line of each
    epoch: a re-run epoch replaces the killed one). For checkpoints written before they kept
    ``train_time_s``."""
    per_epoch: dict[int, float] = {}
    for record in read_jsonl(path):
        epoch = record.get("epoch")
        if isinstance(epoch, int) and epoch <= epochs and "epoch_time_s" in record:
            per_epoch[epoch] = float(record["epoch_time_s"])
    return sum(per_epoch.values())


def epoch_loss(path: Path, epoch: int) -> float:
    """The loss ``metrics.jsonl`` records for ``epoch`` (NaN when it has no line for it)."""
    losses = [r["loss"] for r in read_jsonl(path) if r.get("epoch") == epoch and "loss" in r]
    return float(losses[-1]) if losses else math.nan


def open_resume(run_dir: Path, cfg: PretrainConfig, map_location: torch.device | str) -> RunCheckpoint:
    """Check that ``cfg`` may resume the run in ``run_dir`` and return its checkpoint.

    Reads ``config.yaml`` and ``checkpoint.pt`` and writes nothing: a refused resume (a trained
    key changed, see :data:`RESUME_MAY_CHANGE`) leaves every file as it was.
    """
    check_resume_config(load_run_config(run_dir), cfg, run_dir)
    path = run_dir / CHECKPOINT_FILE
    ckpt = read_checkpoint(load_checkpoint(path, map_location=map_location), path)
    if not ckpt.time_recorded:
        ckpt.state.train_time_s = time_from_metrics(run_dir / METRICS_FILE, ckpt.state.epoch)
    return ckpt


def finished_summary(run_dir: Path, ckpt: RunCheckpoint, cfg: PretrainConfig) -> dict[str, Any] | None:
    """The stored summary of a run whose every epoch is trained, else None (resume trains on, or
    writes the summary that a kill after the last checkpoint left out)."""
    path = run_dir / SUMMARY_FILE
    if ckpt.state.epoch < cfg.train.epochs or not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a torn summary is written again
    return summary if isinstance(summary, dict) else None
