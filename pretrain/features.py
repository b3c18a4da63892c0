"""Frozen features at every tap of a model, in one eval-mode pass (no cache).

``extract_features`` runs the model in eval mode (BatchNorm uses its running statistics, which
are never updated) under ``torch.inference_mode`` and returns ``{tap: (N, D_tap) float32}`` in
dataset order; under torchrun the ranks split the work and gather the result. The training loop
uses it for its label-free quality log (:mod:`pretrain.quality`); the probes cache its output
(:mod:`probes.features`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from pretrain import distributed as dist_utils
from pretrain.data import ImageDataset, TransformedDataset
from pretrain.model import SimCLRModel


@torch.inference_mode()
def extract_features(
    model: SimCLRModel,
    dataset: ImageDataset,
    transform: Callable[[Any], torch.Tensor],
    taps: Sequence[str],
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    local: bool = False,
) -> dict[str, torch.Tensor]:
    """Features of every image of ``dataset`` at ``taps``: ``{tap: (N, D_tap)}`` on the CPU.

    Under torchrun each rank extracts the images ``rank, rank + W, ...`` and the shards are
    gathered back into dataset order on every rank, so W processes do 1/W of the work each and
    return exactly the single-process result; every rank must call it. ``local=True`` extracts
    everything in this process with no collective (a caller that runs on one rank only).
    """
    world = dist_utils.world_size()
    if world == 1 or local:
        return _extract_local(model, dataset, transform, taps, batch_size, device, num_workers)
    n = len(dataset)
    mine = _extract_local(
        model,
        dataset.select(np.arange(dist_utils.rank(), n, world)),
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
        shard = mine[tap]
        width = torch.tensor([shard.shape[1] if shard.dim() == 2 else 0], device=comm)
        dist.all_reduce(width, op=dist.ReduceOp.MAX)  # a rank with no images has no width
        padded = torch.zeros(per_rank, int(width.item()), device=comm)
        padded[: shard.shape[0]] = shard.to(comm)
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
