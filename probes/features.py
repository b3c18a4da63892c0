"""The feature cache: frozen features at every tap, extracted once and shared by every probe.

Features come from :func:`pretrain.features.extract_features` (one eval-mode pass, in dataset
order) with a deterministic evaluation transform. The cache stores one file per (checkpoint
content, architecture, dataset, split, transform, tap)::

    <cache_dir>/features/<sha256[:16]>-<arch>/<dataset>-<split>-<key>/<tap>.pt

Each file holds ``features`` (N, D), ``labels`` (N,), a blake2b ``checksum`` of the feature
bytes and, in ``meta``, the ``content`` of the images it was extracted from
(:func:`pretrain.data.dataset_fingerprint`: every file's path, size and modification time for a
folder, the archive's for an archive, the library releases that make the built-in digits; one
``stat`` per image per run). A file whose images were since edited in place, or written before
``content`` existed, is stale: it is extracted again and replaced. Files are written atomically
(temp file + rename). A file that fails to load, has the wrong keys or shape, labels that
differ from the dataset's, or a wrong checksum is reported and rebuilt. Every probe goes
through :func:`load_features`, so one extraction serves all of them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.checkpoint import load_checkpoint, save_checkpoint
from pretrain.data import ImageDataset, dataset_fingerprint
from pretrain.errors import CheckpointError, UserError
from pretrain.features import extract_features
from pretrain.model import SimCLRModel

log = logging.getLogger("simclr_transfer.probes")


@dataclass
class FeatureSet:
    """Features of one dataset split: ``feats[tap]`` (N, D_tap) float32, ``labels`` (N,) int64
    (or (N, C) in {1, 0, -1} for a multi-label dataset)."""

    feats: dict[str, torch.Tensor]
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def fingerprint(*parts: object, size: int = 8) -> str:
    """Short stable hex digest of the ``repr`` of ``parts`` (transforms, dataset ids)."""
    return hashlib.blake2b(repr(parts).encode(), digest_size=size).hexdigest()


def checksum(features: torch.Tensor) -> str:
    return hashlib.blake2b(features.contiguous().numpy().tobytes(), digest_size=16).hexdigest()


def cache_path(
    cache_dir: str | Path, model_key: str, dataset_id: str, split: str, transform_id: str, tap: str
) -> Path:
    name = dataset_id.split("|")[0].replace(":", "_").replace("/", "_")[-40:]
    folder = f"{name}-{split}-{fingerprint(dataset_id, split, transform_id)}"
    return Path(cache_dir) / "features" / model_key / folder / f"{tap}.pt"


def read_cached(path: Path, labels: torch.Tensor, content: str = "") -> torch.Tensor | None:
    """The cached features at ``path``; None when absent or stale (extracted from images whose
    ``content`` fingerprint differs), and None with a warning when corrupt."""
    if not path.is_file():
        return None
    try:
        data = load_checkpoint(path)
        feats = data["features"]
        problem = ""
        meta = data.get("meta")
        cached_content = meta.get("content") if isinstance(meta, dict) else None
        if cached_content != content:  # a file of the first release has none: stale as well
            log.info("feature cache %s is stale (the images changed); extracting again", path)
            return None
        if not isinstance(feats, torch.Tensor) or feats.dim() != 2:
            problem = "features are not a 2-D tensor"
        elif feats.shape[0] != labels.shape[0] or not torch.equal(data["labels"], labels):
            problem = f"{feats.shape[0]} rows or labels do not match the dataset"
        elif data["checksum"] != checksum(feats):
            problem = "checksum mismatch"
    except CheckpointError as exc:  # not a torch file, or one a safe load refuses
        problem = str(exc).removeprefix(f"cannot load checkpoint {path}: ")[:80]
    except Exception as exc:  # any unreadable file is rebuilt, never trusted
        problem = f"{type(exc).__name__}: {str(exc)[:60]}".strip(": ")
    if problem:
        log.warning("warning: corrupt feature cache %s (%s); rebuilding it", path, problem)
        return None
    return feats


def write_cached(path: Path, feats: torch.Tensor, labels: torch.Tensor, meta: dict) -> None:
    """Write one cache file atomically (temp file in the same folder, fsync, rename)."""
    save_checkpoint(
        {"features": feats.contiguous(), "labels": labels, "checksum": checksum(feats), "meta": meta},
        path,
    )


def load_features(
    model: SimCLRModel,
    model_key: str,
    dataset: ImageDataset,
    dataset_id: str,
    split: str,
    transform: Callable[[Any], torch.Tensor],
    taps: Sequence[str],
    cache_dir: str | Path | None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> FeatureSet:
    """Features of ``dataset`` at ``taps``, from the cache where valid, else extracted once.

    Taps missing from the cache are extracted together in a single pass and then cached.
    ``cache_dir=None`` disables the cache.

    Args:
        model_key: identifies the weights (checkpoint content hash plus architecture).
        dataset_id: identifies the images (name, root, limit); ``split`` names the split.
    """
    labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)  # (N,) or (N, C)
    transform_id = repr(transform)
    feats: dict[str, torch.Tensor] = {}
    paths = (
        {tap: cache_path(cache_dir, model_key, dataset_id, split, transform_id, tap) for tap in taps}
        if cache_dir is not None
        else {}
    )
    content = dataset_fingerprint(dataset) if paths else ""
    for tap, path in paths.items():
        cached = read_cached(path, labels, content)
        if cached is not None:
            feats[tap] = cached
    missing = [tap for tap in taps if tap not in feats]
    if missing:
        if len(dataset) == 0:
            raise UserError(f"dataset {dataset_id.split('|')[0]} split {split!r} is empty")
        new = extract_features(model, dataset, transform, missing, batch_size, device, num_workers)
        for tap in missing:
            feats[tap] = new[tap]
            if tap in paths:
                meta = {
                    "model": model_key,
                    "dataset": dataset_id,
                    "split": split,
                    "tap": tap,
                    "transform": transform_id,
                    "content": content,
                }
                write_cached(paths[tap], new[tap], labels, meta)
    return FeatureSet({tap: feats[tap] for tap in taps}, labels, list(dataset.classes))
