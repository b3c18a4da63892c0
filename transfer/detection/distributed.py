"""torch.distributed helpers for detection; every one is a no-op in a single process.

The basic queries (``is_distributed``, ``rank``, ``world_size``) are :mod:`pretrain.distributed`'s.

``torchrun --nproc_per_node N simclr-transfer detection ...`` sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`init_from_environment` then joins the process group (NCCL with CUDA,
gloo on CPU). Nothing here is needed, or touched, when the command runs as one process.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

from pretrain.distributed import is_distributed, rank, world_size


def is_main() -> bool:
    return rank() == 0


def init_from_environment(device: torch.device) -> bool:
    """Join torchrun's process group if launched by torchrun; True when distributed."""
    if is_distributed():
        return True
    if not all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return False
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def local_device(device: torch.device) -> torch.device:
    """This process's CUDA device under torchrun, else ``device`` unchanged."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def gather_objects(items: list[Any]) -> list[Any]:
    """Concatenate every rank's ``items`` (on every rank); identity in a single process."""
    if not is_distributed():
        return items
    parts: list[list[Any]] = [[] for _ in range(world_size())]
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def barrier() -> None:
    if is_distributed():
        dist.barrier()
