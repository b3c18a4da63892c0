"""Encoders f(.) by name, with one contract: ``num_features`` and ``forward(x) -> (B, num_features)``.

* ``resnet18|34|50``: torchvision ResNets with ``fc`` replaced by ``Identity``, so their state
  dict keys are exactly torchvision's (minus ``fc``) and export is a copy. ``cifar_stem`` swaps
  the 7x7 stride-2 conv and max-pool for a 3x3 stride-1 conv and no pool, the standard for
  32x32 inputs (SimCLR App. B.9).
  ``zero_init_residual`` starts the last BN of every residual block at gamma = 0, so each block
  begins as the identity (Goyal et al. 2017; the official SimCLR ResNet's ``init_zero=True``).
* ``timm:<name>``: any timm model, created with ``num_classes=0`` (pooled features); timm's own
  initialisation applies (its ResNets zero-initialise the last BN by default).
* ``small_cnn``: a 4-block CNN (about 0.3 M parameters) for fast CPU tests and the quickstart.

A registered factory takes ``cifar_stem`` and ``zero_init_residual`` and returns an
``nn.Module`` that satisfies :class:`Encoder`; :func:`build_encoder` checks that it does, so a
new encoder that forgets ``num_features`` fails when it is built, not deep inside a probe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from pretrain.errors import ConfigError
from pretrain.registry import Registry


@runtime_checkable
class Encoder(Protocol):
    """The encoder contract: ``num_features`` and ``forward`` (B, 3, H, W) -> (B, num_features)."""

    num_features: int

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...


ENCODERS: Registry[Callable[..., nn.Module]] = Registry("encoder")

RESNET_WIDTHS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


def _torchvision_resnet(arch: str, cifar_stem: bool, zero_init_residual: bool) -> nn.Module:
    import torchvision

    net = getattr(torchvision.models, arch)(weights=None, zero_init_residual=zero_init_residual)
    if cifar_stem:
        net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    net.num_features = RESNET_WIDTHS[arch]
    return net


for _arch in RESNET_WIDTHS:

    def _factory(
        cifar_stem: bool = False, zero_init_residual: bool = False, _arch: str = _arch
    ) -> nn.Module:
        return _torchvision_resnet(_arch, cifar_stem, zero_init_residual)

    ENCODERS.add(_arch, _factory)


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU blocks (32-64-128-256 channels) and global average pooling.

    Input (B, 3, H, W) with H, W >= 8; output (B, 256).
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            stride = 1 if i == 0 else 2
            layers += [
                nn.Conv2d(chans[i], chans[i + 1], 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.num_features = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


@ENCODERS.register("small_cnn")
def _small_cnn(cifar_stem: bool = False, zero_init_residual: bool = False) -> nn.Module:
    return SmallCNN()


def check_encoder(net: nn.Module, name: str) -> int:
    """``net``'s ``num_features`` after checking it satisfies :class:`Encoder`."""
    width = getattr(net, "num_features", None)
    if not isinstance(net, Encoder) or not isinstance(width, int) or isinstance(width, bool):
        raise ConfigError(f"encoder {name!r} does not expose an integer num_features")
    return width


def check_encoder_name(name: str, key: str = "model.encoder") -> None:
    """Raise :class:`ConfigError` (naming ``key`` and the valid names) unless ``name`` is a
    registered encoder or ``timm:<a timm model>``; builds nothing."""
    if name.startswith("timm:"):
        import timm

        model_name = name.split(":", 1)[1]
        if not timm.is_model(model_name):
            raise ConfigError(f"{key}: unknown timm model {model_name!r}; see timm.list_models()")
        return
    ENCODERS.check(name, key, extra=["timm:<name>"])


def build_encoder(name: str, cifar_stem: bool = False, zero_init_residual: bool = False) -> nn.Module:
    """Create encoder ``name`` (randomly initialised); see the module docstring for names."""
    if name.startswith("timm:"):
        import timm

        check_encoder_name(name)
        net: nn.Module = timm.create_model(name.split(":", 1)[1], pretrained=False, num_classes=0)
    else:
        net = ENCODERS.get(name)(cifar_stem=cifar_stem, zero_init_residual=zero_init_residual)
    check_encoder(net, name)
    return net


def encoder_names() -> list[str]:
    return ENCODERS.names() + ["timm:<name>"]
