"""Run directories: resolved config, checkpoint, per-epoch metrics and appended result records.

Layout of ``runs/<name>/``::

    config.yaml      the resolved PretrainConfig
    checkpoint.pt    encoder, head, optimizer, schedule position, epoch, RNG states
    metrics.jsonl    one JSON object per epoch (loss, lr, pairs/s, epoch time)
    summary.json     written once training finishes
    results.jsonl    one record per evaluation, appended by every evaluator
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from pretrain import __version__
from pretrain.checkpoint import load_checkpoint
from pretrain.config import PretrainConfig
from pretrain.config_io import from_dict, read_yaml
from pretrain.errors import CheckpointError
from pretrain.model import SimCLRModel, build_model

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.jsonl"


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``path`` (the file is only ever appended to)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=False, default=str)
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines file; a torn last line (killed writer) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise CheckpointError(f"{path}: line {i + 1} is not valid JSON") from None
    return records


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


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.processor() or platform.machine()} CPU x{os.cpu_count()}"


def load_run_config(run_dir: str | Path) -> PretrainConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"not a run directory (no {CONFIG_FILE}): {run_dir}")
    return from_dict(PretrainConfig, read_yaml(path))


def load_run_model(run_dir: str | Path, map_location: str = "cpu") -> tuple[SimCLRModel, PretrainConfig]:
    """Rebuild the model of a run directory and load its checkpoint weights (eval mode)."""
    cfg = load_run_config(run_dir)
    state = load_checkpoint(Path(run_dir) / CHECKPOINT_FILE, map_location=map_location)
    model = build_model(cfg.model)
    try:
        model.encoder.load_state_dict(state["encoder"])
        model.head.load_state_dict(state["head"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"checkpoint {Path(run_dir) / CHECKPOINT_FILE} does not match its config: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    model.eval()
    return model, cfg
