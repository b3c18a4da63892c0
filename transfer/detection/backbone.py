"""ResNet bodies for Faster R-CNN: FPN or C4, with frozen stages and a choice of normalisation.

Stages follow detectron2's naming: ``stem`` (conv1 + bn1), ``res2..res5`` (torchvision
``layer1..layer4``). ``trainable_stages`` counts from res5 down, as torchvision's
``trainable_layers`` (detectron2's ``FREEZE_AT = 5 - trainable_stages``). Frozen stages get
``requires_grad=False`` and FrozenBatchNorm, like detectron2's ``ResNet.freeze``.

Normalisation of the trainable stages:

* ``frozen_bn``: BatchNorm with fixed statistics and affine (detectron2 ``FrozenBN``; the
  default when batches per GPU are small);
* ``bn``: plain BatchNorm, per-process statistics;
* ``syncbn``: BatchNorm synchronised over processes (MoCo's choice); it needs CUDA and
  torch.distributed; in a single process it is plain BatchNorm;
* ``gn``: GroupNorm with 32 groups (Wu & He 2018), freshly initialised: BN statistics do not
  carry over to GN.

Channel widths (res2..res5): BasicBlock (ResNet-18/34) 64, 128, 256, 512; Bottleneck
(ResNet-50) 256, 512, 1024, 2048. The C4 body ends at res4 (stride 16) and res5 becomes the
ROI head (Ren et al. 2015; He et al. 2016, Sec. "Object Detection").

A ``cifar_stem`` run (3x3 stride-1 conv1, no max-pool) keeps its pretrained 3x3 kernel, but
the stem is given stride 2 and the max-pool back, so that res2..res5 keep strides 4..32, which
anchors, FPN levels and ROI pooling assume. The kernel then sees features at a different
scale than in pretraining; the detection command prints a warning saying so.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import cast

import torch
from torch import nn
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
FPN_CHANNELS = 256  # Lin et al. 2017


def stage_channels(resnet: nn.Module) -> list[int]:
    """Output channels of res2..res5 (64..512 for BasicBlock, 256..2048 for Bottleneck)."""
    out = []
    for name in STAGES[1:]:
        block = getattr(resnet, name)[-1]
        last = block.conv3 if hasattr(block, "conv3") else block.conv2
        out.append(int(last.out_channels))
    return out


def restore_stem_stride(resnet: nn.Module) -> bool:
    """Give a CIFAR stem (stride 1, no pool) stride 2 and a max-pool; True if it changed."""
    conv1 = cast(nn.Conv2d, resnet.conv1)  # a ResNet's stem conv; Module.__getattr__ is untyped
    if conv1.stride == (2, 2) and isinstance(resnet.maxpool, nn.MaxPool2d):
        return False
    conv1.stride = (2, 2)
    resnet.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    return True


def frozen_copy(bn: nn.BatchNorm2d) -> FrozenBatchNorm2d:
    frozen = FrozenBatchNorm2d(bn.num_features, eps=bn.eps)
    with torch.no_grad():
        frozen.weight.copy_(bn.weight)
        frozen.bias.copy_(bn.bias)
        frozen.running_mean.copy_(bn.running_mean)
        frozen.running_var.copy_(bn.running_var)
    return frozen


def convert_norms(module: nn.Module, norm: str, sync: bool = False) -> nn.Module:
    """Replace every BatchNorm2d under ``module`` according to ``norm`` (see module doc)."""
    if norm == "bn":
        return module
    if norm == "syncbn":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module) if sync else module
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            new: nn.Module = (
                frozen_copy(child) if norm == "frozen_bn" else nn.GroupNorm(32, child.num_features)
            )
            setattr(module, name, new)
        else:
            convert_norms(child, norm, sync)
    return module


def freeze_stages(resnet: nn.Module, trainable_stages: int) -> list[str]:
    """Freeze all but the last ``trainable_stages`` stages; returns the frozen stage names."""
    frozen = list(STAGES[: len(STAGES) - trainable_stages])
    for name in frozen:
        stage = ["conv1", "bn1"] if name == "stem" else [name]
        parts = [resnet.get_submodule(part) for part in stage]
        for part in parts:
            for p in part.parameters():
                p.requires_grad_(False)
        if name == "stem":
            if isinstance(resnet.bn1, nn.BatchNorm2d):
                resnet.bn1 = frozen_copy(resnet.bn1)
        else:
            convert_norms(getattr(resnet, name), "frozen_bn")
    return frozen


def prepare_resnet(resnet: nn.Module, norm: str, trainable_stages: int, sync: bool = False) -> list[str]:
    """Freeze early stages, then convert the norms of the rest; returns frozen stage names."""
    frozen = freeze_stages(resnet, trainable_stages)
    convert_norms(resnet, norm, sync)
    return frozen


def fpn_norm_layer(norm: str, sync: bool = False) -> Callable[[int], nn.Module] | None:
    """The norm after each FPN conv: ``none`` (detectron2's default), ``bn``, ``syncbn``
    (synchronised when ``sync``: CUDA + torch.distributed; else plain BN) or ``gn`` (32 groups)."""
    if norm == "none":
        return None
    if norm == "gn":
        return lambda channels: nn.GroupNorm(32, channels)
    if norm == "syncbn" and sync:
        return nn.SyncBatchNorm
    return nn.BatchNorm2d


def fpn_body(resnet: nn.Module, norm: str = "none", sync: bool = False) -> BackboneWithFPN:
    """res2..res5 -> FPN levels '0'..'3' (strides 4..32) plus 'pool' (stride 64), 256 ch.

    ``norm`` normalises every lateral (1x1) and output (3x3) conv of the FPN, whose convs then
    have no bias, as detectron2's ``MODEL.FPN.NORM`` (MoCo's COCO R50-FPN setting normalises
    the FPN as well as the backbone)."""
    return BackboneWithFPN(
        resnet,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=stage_channels(resnet),
        out_channels=FPN_CHANNELS,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=fpn_norm_layer(norm, sync),
    )


class C4Body(nn.Sequential):
    """stem + res2..res4: (B, 3, H, W) -> (B, C4, H/16, W/16); C4 = 256 or 1024."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__(OrderedDict(
            (name, getattr(resnet, name))
            for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
        ))
        self.out_channels = stage_channels(resnet)[2]


class Res5Head(nn.Module):
    """res5 as the box head: ROI features (R, C4, 14, 14) -> (R, C5) after mean pooling.

    ``extra_norm`` appends a norm after res5 (MoCo's ``Res5ROIHeadsExtraNorm``).
    """

    def __init__(self, res5: nn.Module, out_channels: int, extra_norm: nn.Module | None = None) -> None:
        super().__init__()
        self.res5 = res5
        self.norm = extra_norm if extra_norm is not None else nn.Identity()
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.res5(x)).mean(dim=(2, 3))
