"""Result records: one JSON object per (checkpoint, tap, evaluator, settings), appended to a file.

Tables and plots are built from these records only, so every evaluator (probes here, detection in
``transfer``) writes the same flat-ish shape::

    {"evaluator": "knn", "tap": "h", "dataset": "cifar10",
     "splits": {"train": 50000, "test": 10000},           # images used per role
     "metrics": {"knn/top1@k200": 71.3, ...},             # namespaced, percent where a rate
     "settings": {"k": [10, 20, 100, 200], "temperature": 0.1, ...},
     "setup": {"checkpoint": ..., "checkpoint_hash": ..., "source": "run", "encoder": ...,
               "cifar_stem": ..., "head": "mlp", "num_layers": 2, "hidden_dim": ...,
               "out_dim": ..., "epochs": ..., "checkpoint_epoch": ..., "batch_size": ...,
               "pretrain_seed": ..., "pretrain_dataset": ..., "run_dir": ...},
     "seed": 0, "time": "2025-01-01T12:00:00+00:00", "wall_s": 3.2,
     "device": "cuda", "hardware": "NVIDIA H100 ...", "code_version": "0.1.0+abc123",
     "tags": {"suite": "cifar10_heads", "cell": "mlp-2/s0/knn --tap all"}}   # only when given

For a run directory the records go to ``<run>/results.jsonl``; for an external checkpoint to
``--output-dir`` (default: ``<checkpoint stem>_results/`` beside it).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from pretrain.errors import UserError
from pretrain.runs import RESULTS_FILE, append_jsonl, code_version, hardware
from probes.checkpoints import LoadedModel


def checkpoint_epoch(path: Path) -> int | None:
    """The ``epoch`` stored in a checkpoint, read lazily (mmap) so large files cost nothing."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an external file that is not a zip checkpoint: no epoch to report
        return None
    epoch = state.get("epoch") if isinstance(state, dict) else None
    return int(epoch) if isinstance(epoch, (int, float)) else None


def pretrain_setup(loaded: LoadedModel) -> dict[str, Any]:
    """What was pretrained and how: the ``setup`` block of every record for ``loaded``."""
    setup: dict[str, Any] = {
        "checkpoint": str(loaded.checkpoint.resolve()),
        "checkpoint_hash": loaded.checkpoint_hash,
        "source": loaded.source,
        "encoder": loaded.encoder,
        "cifar_stem": loaded.cifar_stem,
        "checkpoint_epoch": checkpoint_epoch(loaded.checkpoint),
    }
    cfg = loaded.config
    if cfg is not None:
        setup.update(
            head=cfg.model.head,
            num_layers=cfg.model.num_layers if cfg.model.head == "mlp" else 0,
            hidden_dim=cfg.model.hidden_dim,
            out_dim=cfg.model.out_dim,
            bn=cfg.model.bn,
            epochs=cfg.train.epochs,
            batch_size=cfg.train.batch_size,
            temperature=cfg.train.temperature,
            optimizer=cfg.optim.name,
            pretrain_seed=cfg.train.seed,
            pretrain_dataset=cfg.data.name,
            run_dir=str(loaded.run_dir.resolve()) if loaded.run_dir else None,
        )
    else:
        head_taps = [t for t in loaded.taps if t != "h"]
        setup.update(
            head="mlp" if len(head_taps) > 1 else ("linear" if head_taps else "none"),
            num_layers=len(head_taps),
            unused_keys=len(loaded.unused_keys),
        )
    return setup


def make_record(
    evaluator: str,
    tap: str,
    dataset: str,
    metrics: dict[str, float],
    settings: dict[str, Any],
    setup: dict[str, Any],
    splits: dict[str, int],
    seed: int,
    wall_s: float,
    device: str,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One result record in the shape documented above (see the module docstring).

    Every field but ``time``, ``wall_s``, ``device``, ``hardware``, ``code_version`` and ``tags``
    must be reproducible: table building treats two records of one seed that differ elsewhere
    as different setups. ``tags`` (from ``--tag KEY=VALUE``; suites mark their cells with them)
    are stored under ``"tags"`` when given.
    """
    record: dict[str, Any] = {
        "evaluator": evaluator,
        "tap": tap,
        "dataset": dataset,
        "splits": dict(splits),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "settings": dict(settings),
        "setup": dict(setup),
        "seed": seed,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(float(wall_s), 3),
        "device": device,
        "hardware": hardware() if device.startswith("cuda") else hardware_cpu(),
        "code_version": code_version(),
    }
    if tags:
        record["tags"] = dict(tags)
    return record


def parse_tags(items: Iterable[str]) -> dict[str, str]:
    """``["suite=quick", "cell=mlp/s0/knn"]`` -> ``{"suite": "quick", "cell": "mlp/s0/knn"}``."""
    tags: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--tag {item!r} is not of the form KEY=VALUE")
        tags[key.strip()] = value
    return tags


def hardware_cpu() -> str:
    """CPU description even when a GPU is present (the record says where the work ran)."""
    return f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()}"


def results_path(loaded: LoadedModel, output_dir: str | Path = "") -> Path:
    """Where records for ``loaded`` are appended (see the module docstring)."""
    if output_dir:
        return Path(output_dir) / RESULTS_FILE
    if loaded.run_dir is not None:
        return loaded.run_dir / RESULTS_FILE
    ckpt = loaded.checkpoint
    return ckpt.parent / f"{ckpt.stem}_results" / RESULTS_FILE


def write_records(records: Iterable[dict[str, Any]], path: str | Path) -> None:
    for record in records:
        append_jsonl(path, record)
