"""Frozen features at every tap, extracted in one forward pass and cached on disk.

``extract_features`` runs the model in eval mode (BatchNorm uses its running statistics, which
are never updated) under ``torch.inference_mode`` with a deterministic evaluation transform, and
returns ``{tap: (N, D_tap) float32}`` in dataset order.

The cache stores one file per (checkpoint content, architecture, dataset, split, transform, tap)::

    <cache_dir>/features/<sha256[:16]>-<arch>/<dataset>-<split>-<key>/<tap>.pt

Each file holds ``features`` (N, D), ``labels`` (N,) and a blake2b ``checksum`` of the feature
bytes. Files are written atomically (temp file + rename). A file that fails to load, has the
wrong keys or shape, labels that differ from the dataset's, or a wrong checksum is reported and
rebuilt. Every probe goes through :func:`load_features`, so one extraction serves all of them.
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
import torch.distributed as dist
from torch.utils.data import DataLoader

from pretrain import distributed as dist_utils
from pretrain.checkpoint import save_checkpoint
from pretrain.data import ImageDataset, TransformedDataset
from pretrain.errors import UserError
from pretrain.model import SimCLRModel

log = logging.getLogger("simclr_transfer.probes")


@dataclass
class FeatureSet:
    """Features of one dataset split: ``feats[tap]`` (N, D_tap) float32, ``labels`` (N,) int64."""

    feats: dict[str, torch.Tensor]
    labels: torch.Tensor
    classes: list[str]

    def __len__(self) -> int:
        return int(self.labels.numel())


def subset(dataset: ImageDataset, indices: Sequence[int] | np.ndarray) -> ImageDataset:
    """The images of ``dataset`` at ``indices`` (in that order), same classes and info."""
    return dataset.select(np.asarray(indices))


@torch.inference_mode()
def extract_features(
    model: SimCLRModel,
    dataset: ImageDataset,
    transform: Callable[[Any], torch.Tensor],
    taps: Sequence[str],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> dict[str, torch.Tensor]:
    """Features of every image of ``dataset`` at ``taps``: ``{tap: (N, D_tap)}`` on the CPU.

    Under torchrun each rank extracts the images ``rank, rank + W, ...`` and the shards are
    gathered back into dataset order on every rank, so W processes do 1/W of the work each and
    return exactly the single-process result.
    """
    world = dist_utils.world_size()
    if world == 1:
        return _extract_local(model, dataset, transform, taps, batch_size, device, num_workers)
    n = len(dataset)
    mine = _extract_local(
        model,
        subset(dataset, np.arange(dist_utils.rank(), n, world)),
        transform,
        taps,
        batch_size,
        device,
        num_workers,
    )
    # NCCL moves CUDA tensors only; gloo moves CPU tensors.
    comm = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    per_rank = -(-n // world)  # shards differ in length by at most one: pad, gather, trim
    out = {}
    for tap in taps:
        local = mine[tap]
        width = torch.tensor([local.shape[1] if local.dim() == 2 else 0], device=comm)
        dist.all_reduce(width, op=dist.ReduceOp.MAX)  # a rank with no images has no width
        padded = torch.zeros(per_rank, int(width.item()), device=comm)
        padded[: local.shape[0]] = local.to(comm)
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
        full = torch.empty(n, padded.shape[1])
        for r, part in enumerate(parts):
            full[r::world] = part[: len(range(r, n, world))].cpu()
        out[tap] = full
    return out


def _extract_local(
    model: SimCLRModel,
    dataset: ImageDataset,
    transform: Callable[[Any], torch.Tensor],
    taps: Sequence[str],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> dict[str, torch.Tensor]:
    """Features of every image of ``dataset`` at ``taps``: ``{tap: (N, D_tap)}`` on the CPU.

    The model is put in eval mode for the pass and its previous mode restored afterwards, so a
    training loop may call this; BN running statistics are never touched, and the global RNG is
    not consumed (random transforms, if any, do draw from it).
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loader = DataLoader(
        TransformedDataset(dataset, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),  # leave the caller's RNG stream untouched
    )
    chunks: dict[str, list[torch.Tensor]] = {tap: [] for tap in taps}
    try:
        model.to(device)
        for images, _ in loader:
            out = model.forward_taps(images.to(device, non_blocking=True))
            for tap in taps:
                chunks[tap].append(out[tap].float().flatten(1).cpu())
    finally:
        model.train(was_training)
    if not len(dataset):
        return {tap: torch.empty(0, 0) for tap in taps}
    return {tap: torch.cat(parts) for tap, parts in chunks.items()}


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


def read_cached(path: Path, labels: torch.Tensor) -> torch.Tensor | None:
    """The cached features at ``path``; None when absent, and None (with a warning) when corrupt."""
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        feats = data["features"]
        problem = ""
        if not isinstance(feats, torch.Tensor) or feats.dim() != 2:
            problem = "features are not a 2-D tensor"
        elif feats.shape[0] != labels.numel() or not torch.equal(data["labels"], labels):
            problem = f"{feats.shape[0]} rows or labels do not match the dataset"
        elif data["checksum"] != checksum(feats):
            problem = "checksum mismatch"
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
    labels = torch.as_tensor(dataset.targets, dtype=torch.int64)
    transform_id = repr(transform)
    feats: dict[str, torch.Tensor] = {}
    paths = (
        {tap: cache_path(cache_dir, model_key, dataset_id, split, transform_id, tap) for tap in taps}
        if cache_dir is not None
        else {}
    )
    for tap, path in paths.items():
        cached = read_cached(path, labels)
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
                }
                write_cached(paths[tap], new[tap], labels, meta)
    return FeatureSet({tap: feats[tap] for tap in taps}, labels, list(dataset.classes))
