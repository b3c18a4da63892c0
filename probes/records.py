"""Result records: one JSON object per (checkpoint, tap, evaluator, settings), appended to a file.

Tables and plots are built from these records only, so every evaluator (probes here, detection in
``transfer``) writes the same shape, :class:`ResultRecord`::

    {"evaluator": "knn", "tap": "h", "dataset": "cifar10",
     "splits": {"train": 50000, "test": 10000},           # images used per role
     "metrics": {"knn/top1@k200": 71.3, ...},             # namespaced, percent where a rate
     "settings": {"k": [10, 20, 100, 200], "temperature": 0.1, ...},
     "setup": {"checkpoint": ..., "checkpoint_hash": ..., "source": "run",
               "checkpoint_epoch": 100, "run_dir": ...,
               **RunSetup.record_fields()},  # encoder, head ("mlp-2"), head_kind, head_depth,
                                             # taps, mean, std, image_size, epochs, ...
     "seed": 0, "time": "2025-01-01T12:00:00+00:00", "wall_s": 3.2,
     "device": "cuda", "hardware": "NVIDIA H100 ...", "code_version": "0.2.0+abc123",
     "tags": {"suite": "cifar10_heads", "cell": "mlp-2/s0/knn --tap all"}}   # only when given

The ``setup`` block is built by :func:`setup_block` only (probes and detection alike). For a run
its pretraining fields are the run's :class:`~pretrain.run.RunSetup`; an external checkpoint
says what its file holds (``head`` is the rebuilt head's label, else the file's stem, so that a
supervised torchvision backbone never shares a table row with SimCLR's ``none`` head); the
random-init baseline of detection is ``head: "random"``.

For a run directory the records go to ``<run>/results.jsonl``; for an external checkpoint to
``--output-dir`` (default: ``<checkpoint stem>_results/`` beside it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypedDict

from pretrain.errors import UserError
from pretrain.jsonl import append_jsonl
from pretrain.provenance import code_version, hardware
from pretrain.run import RESULTS_FILE
from probes.checkpoints import LoadedModel


class _RequiredRecord(TypedDict):
    evaluator: str
    tap: str
    dataset: str
    splits: dict[str, int]
    metrics: dict[str, float]
    settings: dict[str, Any]
    setup: dict[str, Any]
    seed: int
    time: str
    wall_s: float
    device: str
    hardware: str
    code_version: str


class ResultRecord(_RequiredRecord, total=False):
    """One line of ``results.jsonl`` (see the module docstring).

    Optional keys: ``tags``; and, for fine-tuning (``simclr-transfer finetune``), ``from_tap``
    (the tap the classifier starts from; equal to ``tap``) and ``label_fraction`` (the share of
    the training split whose labels were used), top-level so that tables pivot on them
    (``--cols from_tap``, ``--cols label_fraction``).
    """

    tags: dict[str, str]
    from_tap: str
    label_fraction: float


def setup_block(loaded: LoadedModel) -> dict[str, Any]:
    """What was pretrained and how: the ``setup`` block of every record for ``loaded``."""
    setup: dict[str, Any] = {
        "checkpoint": str(loaded.checkpoint.resolve()),
        "checkpoint_hash": loaded.checkpoint_hash,
        "source": loaded.source,
        "checkpoint_epoch": loaded.epoch,
    }
    if loaded.run is not None:
        setup["run_dir"] = str(loaded.run.dir.resolve())
        setup.update(loaded.run.setup.record_fields())
        return setup
    identity = loaded.model.head.identity
    setup.update(
        encoder=loaded.encoder,
        cifar_stem=loaded.cifar_stem,
        init=loaded.checkpoint.stem,
        head=identity.label if loaded.head_loaded else loaded.checkpoint.stem,
        head_kind=identity.kind if loaded.head_loaded else None,
        head_depth=identity.depth if loaded.head_loaded else None,
        taps=list(loaded.taps),
        unused_keys=len(loaded.unused_keys),
    )
    return setup


def random_init_setup(encoder: str, cifar_stem: bool = False) -> dict[str, Any]:
    """The ``setup`` block of a randomly initialised backbone (the baseline of detection and
    fine-tuning: ``head`` is ``random``)."""
    return {"source": "random", "init": "random", "head": "random", "encoder": encoder,
            "cifar_stem": cifar_stem}


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
    optional: dict[str, Any] | None = None,
) -> ResultRecord:
    """One result record in the shape documented above (see the module docstring).

    Every field but ``time``, ``wall_s``, ``device``, ``hardware``, ``code_version`` and ``tags``
    must be reproducible: table building treats two records of one seed that differ elsewhere
    as different setups. ``tags`` (from ``--tag KEY=VALUE``; suites mark their cells with them)
    are stored under ``"tags"`` when given; ``optional`` holds other optional keys of
    :class:`ResultRecord` (``from_tap``, ``label_fraction``).
    """
    record: ResultRecord = {
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
        "hardware": hardware(device),
        "code_version": code_version(),
    }
    if tags:
        record["tags"] = dict(tags)
    for key, value in (optional or {}).items():
        if key not in ResultRecord.__optional_keys__ or key == "tags":
            raise KeyError(f"{key!r} is not an optional key of ResultRecord")
        record[key] = value  # type: ignore[literal-required]
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


def results_path(loaded: LoadedModel, output_dir: str | Path = "") -> Path:
    """Where records for ``loaded`` are appended (see the module docstring)."""
    if output_dir:
        return Path(output_dir) / RESULTS_FILE
    if loaded.run is not None:
        return loaded.run.dir / RESULTS_FILE
    ckpt = loaded.checkpoint
    return ckpt.parent / f"{ckpt.stem}_results" / RESULTS_FILE


def write_records(records: Iterable[ResultRecord], path: str | Path) -> None:
    for record in records:
        append_jsonl(path, record)
