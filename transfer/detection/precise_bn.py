"""Precise BN: recompute BatchNorm statistics on training batches before evaluation.

A BN layer that is trained (``model.norm=bn|syncbn``) keeps exponential moving averages of its
batch statistics, dominated by the last few hundred iterations of a changing network. Precise BN
(Wu and Johnson 2021, "Rethinking 'Batch' in BatchNorm", Sec. 3; detectron2's
``TEST.PRECISE_BN``, on in MoCo's VOC C4 protocol, ``Base-RCNN-C4-BN.yaml``) replaces them,
with the weights frozen, by the plain average over ``num_iters`` training batches (detectron2:
200) of each BN's batch mean and (unbiased) batch variance, as fvcore's ``update_bn_stats``:
momentum 1 makes each forward store its batch statistics, which are averaged incrementally.
Frozen BN (``FrozenBatchNorm2d``) and BNs in eval mode are left alone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn

Batch = tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]


def trained_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BN layers (BatchNorm*d, SyncBatchNorm) of ``model`` that train and track statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.training and m.track_running_stats]


@torch.no_grad()
def update_bn_stats(model: nn.Module, batches: Iterable[Batch], num_iters: int,
                    bf16: bool = False) -> int:
    """Set every trained BN's running mean and variance to their averages over ``num_iters``
    batches of ``(images, targets)`` (fed as in training: ``model(images, targets)``, in train
    mode); returns the number of batches used. Weights are not changed."""
    model.train()
    bns = trained_batchnorms(model)
    if not bns or num_iters < 1:
        return 0
    momenta = [bn.momentum for bn in bns]
    means = [torch.zeros_like(bn.running_mean) for bn in bns]  # type: ignore[arg-type]
    variances = [torch.zeros_like(bn.running_var) for bn in bns]  # type: ignore[arg-type]
    for bn in bns:
        bn.momentum = 1.0  # running stats = this batch's statistics
    count = 0
    try:
        for images, targets in itertools.islice(batches, num_iters):
            device = next(model.parameters()).device
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                model(images, targets)
            count += 1
            for bn, mean, var in zip(bns, means, variances, strict=True):
                mean += (bn.running_mean - mean) / count  # type: ignore[operator]
                var += (bn.running_var - var) / count  # type: ignore[operator]
    finally:
        for bn, momentum in zip(bns, momenta, strict=True):
            bn.momentum = momentum
    if count:
        for bn, mean, var in zip(bns, means, variances, strict=True):
            bn.running_mean.copy_(mean)  # type: ignore[union-attr]
            bn.running_var.copy_(var)  # type: ignore[union-attr]
    return count
