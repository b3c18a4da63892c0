"""The detection result record: its settings and the shared record shape.

Built by :func:`probes.records.make_record` (the record format every evaluator writes), with the
backbone source's ``setup`` block (:func:`probes.records.setup_block`); used by both engines.
"""

from __future__ import annotations

from typing import Any

from pretrain.config_io import to_dict
from probes.records import ResultRecord, make_record
from transfer.detection.config import DetectionConfig

# Config values that say where or how fast, not what: left out of a record's settings, so that
# records of one setup (seeds apart) share a table cell. The seed is the record's own field.
NOT_SETTINGS = {
    "data": ("cache_dir", "num_workers"),
    "train": ("seed", "device", "progress", "checkpoint_every", "log_every"),
    "eval": ("batch_size",),
}


def record_settings(cfg: DetectionConfig) -> dict[str, Any]:
    """The resolved config as a record's settings (minus :data:`NOT_SETTINGS`)."""
    settings = to_dict(cfg)
    settings.pop("name", None)
    for section, keys in NOT_SETTINGS.items():
        for key in keys:
            settings[section].pop(key, None)
    return settings


def detection_record(metrics: dict[str, float], settings: dict[str, Any], setup: dict[str, Any],
                     dataset: str, splits: dict[str, int], seed: int, wall_s: float,
                     device: str, tags: dict[str, str] | None = None) -> ResultRecord:
    """The result record, built by the shared ``probes.records.make_record``."""
    return make_record("detection", "h", dataset, metrics, settings, setup, splits, seed, wall_s,
                       device, tags)
