"""Precise BN: recompute BatchNorm statistics on training batches before evaluation.

A BN layer that is trained (``model.norm=bn|syncbn``) keeps exponential moving averages of its
batch statistics, dominated by the last few hundred iterations of a changing network. Precise BN
(Wu and Johnson 2021, "Rethinking 'Batch' in BatchNorm", Sec. 3 and Appendix; detectron2's
``TEST.PRECISE_BN``, on in MoCo's VOC C4 protocol, ``Base-RCNN-C4-BN.yaml``) replaces them,
with the weights frozen, by population statistics over ``num_iters`` training batches
(detectron2: 200), estimated as fvcore's ``update_bn_stats`` (what detectron2's hook calls) does:
every batch of ``n = numel / C`` values per channel (spatial positions count as samples) with
mean ``m_b`` and unbiased variance ``v_b`` contributes with weight ``n``::

    mean = sum_b n_b m_b / N
    var  = sum_b n_b (m_b^2 + v_b (n_b - 1) / n_b) / N - mean^2      (N = sum_b n_b)

i.e. the biased variance of all batches pooled, which stays accurate when batches are small or
vary in size (detection images do). Momentum 1 makes each forward store its batch statistics; a
forward pre-hook reads ``n``; a BN a forward does not reach is not updated by it. Frozen BN
(``FrozenBatchNorm2d``) and BNs in eval mode are left alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

Batch = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]
BatchNorm = nn.modules.batchnorm._BatchNorm


def trained_batchnorms(model: nn.Module) -> list[BatchNorm]:
    """The BN layers (BatchNorm*d, SyncBatchNorm) of ``model`` that train and track statistics."""
    return [m for m in model.modules() if isinstance(m, BatchNorm)
            and m.training and m.track_running_stats]


class PopulationStatistics:
    """Running population mean and mean of squares of one BN's inputs, per channel ``(C,)``."""

    def __init__(self, like: torch.Tensor) -> None:
        self.mean = torch.zeros_like(like)
        self.square_mean = torch.zeros_like(like)
        self.count = 0

    def add(self, batch_mean: torch.Tensor, batch_var: torch.Tensor, n: int) -> None:
        """One batch of ``n`` values per channel, its mean and unbiased variance ``(C,)``."""
        self.count += n
        weight = n / self.count
        self.mean += (batch_mean - self.mean) * weight
        self.square_mean += (batch_mean.square() + batch_var * ((n - 1) / n)
                             - self.square_mean) * weight

    @property
    def var(self) -> torch.Tensor:
        return self.square_mean - self.mean.square()


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterable[Batch], num_iters: int,
                    bf16: bool = False) -> int:
    """Set every trained BN's running mean and variance to the population statistics of its
    inputs over ``num_iters`` batches of ``(images, targets)`` (fed as in training:
    ``model(images, targets)``, in train mode); returns the number of batches used. Weights are
    not changed."""
    model.train()
    bns = trained_batchnorms(model)
    if not bns or num_iters < 1:
        return 0
    momenta = [bn.momentum for bn in bns]
    stats = [PopulationStatistics(bn.running_mean) for bn in bns]  # type: ignore[arg-type]
    values_per_channel: dict[nn.Module, int] = {}

    def record_batch_size(bn: nn.Module, inputs: tuple[Any, ...]) -> None:
        values_per_channel[bn] = inputs[0].numel() // inputs[0].shape[1]

    hooks = [bn.register_forward_pre_hook(record_batch_size) for bn in bns]
    for bn in bns:
        bn.momentum = 1.0  # running stats = this batch's statistics
    count = 0
    try:
        device = next(model.parameters()).device
        for images, targets in itertools.islice(batches, num_iters):
            values_per_channel.clear()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                model(images, targets)
            count += 1
            for bn, population in zip(bns, stats, strict=True):
                if bn in values_per_channel:
                    population.add(bn.running_mean, bn.running_var,  # type: ignore[arg-type]
                                   values_per_channel[bn])
    finally:
        for hook in hooks:
            hook.remove()
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
    for bn, population in zip(bns, stats, strict=True):
        if population.count:
            bn.running_mean.copy_(population.mean)  # type: ignore[union-attr]
            bn.running_var.copy_(population.var)  # type: ignore[union-attr]
    return count
