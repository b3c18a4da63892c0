"""Synchronised ("global") BatchNorm: batch statistics over every rank's samples.

SimCLR (Sec. 2 and App. B.1) aggregates BN mean and variance over all devices, because with
per-device statistics the model can find a shortcut through the positives that share a device.
On CUDA this is ``torch.nn.SyncBatchNorm``; that module refuses CPU tensors, so on the CPU (gloo)
:class:`GlobalBatchNorm` does the same with two differentiable all-reduces (mean, then centred
second moment: the two-pass form, stable in fp32). Its gradient flows back through the
reductions to every rank, exactly as one process with the concatenated batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import nn

from pretrain.distributed import is_distributed


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over (N, C, ...) inputs whose statistics cover all ranks in training mode."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        total = dist_fn.all_reduce(torch.cat([x.sum(dims), count]), op=dist.ReduceOp.SUM)
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.view(shape)
        var = dist_fn.all_reduce((centred * centred).sum(dims), op=dist.ReduceOp.SUM) / n
        # the three buffers are registered together (all None without track_running_stats)
        running_mean, running_var = self.running_mean, self.running_var
        num_batches_tracked = self.num_batches_tracked
        if (
            self.track_running_stats
            and running_mean is not None
            and running_var is not None
            and num_batches_tracked is not None
        ):
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 0.1
                running_mean.lerp_(mean.detach(), momentum)
                running_var.lerp_(var.detach() * n / (n - 1).clamp(min=1), momentum)
                num_batches_tracked.add_(1)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm with its synchronised version (torch's on CUDA, ours elsewhere)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_to_global(module)


def _convert_to_global(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(
            module.num_features,
            module.eps,
            module.momentum,
            module.affine,
            module.track_running_stats,
        )
        if module.affine:
            with torch.no_grad():
                new.weight.copy_(module.weight)
                new.bias.copy_(module.bias)
            new.weight.requires_grad_(module.weight.requires_grad)  # a frozen shift stays frozen
            new.bias.requires_grad_(module.bias.requires_grad)
        if module.track_running_stats:
            new.running_mean = module.running_mean
            new.running_var = module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _convert_to_global(child))
    return module
