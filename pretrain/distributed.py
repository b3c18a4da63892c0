"""torch.distributed helpers that are no-ops in a single process.

:func:`gather_with_grad` is the all_gather used by NT-Xent across ranks. ``dist.all_gather``
returns tensors detached from the graph, so a naive use silently drops the gradient of every
negative that came from another rank (the bug class of lightly issues 1177 and 1528: training
runs, but learns less). Here the backward pass sums the incoming gradients over ranks
(``all_reduce``) and returns this rank's slice, which is the exact gradient of
``sum_r loss_r`` with respect to the local embeddings; DDP then divides parameter gradients by
the world size, giving the gradient of the mean loss, as one process with the global batch.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from pretrain.errors import ConfigError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a CUDA request without a GPU falls back to the
    CPU with a warning; a malformed name is a :class:`ConfigError`."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        print(f"warning: device {name} requested but CUDA is not available; using the CPU")
        name = "cpu"
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.batch = x.shape[0]
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return torch.cat(out, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """(B, D) on each rank -> (world_size * B, D), rank-major, gradients flowing back."""
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


def init_from_environment(device: str = "auto") -> None:
    """Join the process group torchrun describes (NCCL with CUDA, gloo on CPU); else nothing."""
    if not launched_by_torchrun() or is_distributed():
        return
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()
