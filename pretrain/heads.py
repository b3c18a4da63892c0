"""Projection heads g(.) by name: ``none``, ``linear`` and ``mlp`` (SimCLR v1/v2).

The head maps the encoder output h (B, in_dim) to z (B, out_dim). ``forward_taps`` also returns
every intermediate output so that probes can read any layer without a second forward pass:

* ``none``:   taps {"z"} with z = h (identity; out_dim = in_dim).
* ``linear``: one Linear (+ BN when ``bn``); taps {"z"}.
* ``mlp``:    ``num_layers`` Linear layers; each but the last is followed by BN (when ``bn``)
  and ReLU, the last by BN only. Hidden outputs (after their ReLU) are tapped as ``head.0`` ...
  ``head.{L-2}`` and the last layer's output as ``z``. SimCLR v1: L=2, 2048-2048-128; SimCLR
  v2: L=3.

As in the official code (``tf2/model.py``: ``LinearLayer(use_bias=False, use_bn=True)`` for the
output layer, whose BN is ``center=False``), the BN of the output layer (``linear``'s only one,
``mlp``'s last) has a learned scale but no shift: its bias stays 0 and is not trained (it stays
in the state dict, so heads with a shift, e.g. lightly's, load and compute exactly). Hidden
layers' BNs have both, and Linear layers followed by BN have no bias.

A head type declares, where it is registered, its **label** (the name tables and plots show:
``none``, ``linear``, ``mlp-2``) and its **depth** (layers between h and z: the x axis of the
head-depth plot). Nothing else in the code base knows how a head is named, so adding a head is
one decorated function::

    @register_head("toy", label=lambda shape: "toy", depth=lambda shape: 5)
    def toy_head(in_dim: int, shape: HeadShape) -> list[nn.Module]: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from pretrain.errors import ConfigError
from pretrain.registry import Registry


@dataclass(frozen=True)
class HeadShape:
    """The sizes a config gives a head (each head type reads the ones it needs).

    Attributes:
        out_dim: size of z (SimCLR: 128); ignored by ``none``.
        hidden_dim: width of hidden layers; 0 = the encoder width (SimCLR: 2048 for ResNet-50).
        num_layers: Linear layers of an ``mlp`` head (2 = SimCLR v1, 3 = SimCLR v2).
        bn: BatchNorm after every Linear (the official code's setting).
    """

    out_dim: int = 128
    hidden_dim: int = 0
    num_layers: int = 2
    bn: bool = True


HeadBuilder = Callable[[int, HeadShape], list[nn.Module]]


@dataclass(frozen=True)
class HeadType:
    """A registered head: how to build its layers, and how it is named and placed in plots."""

    name: str
    build: HeadBuilder  # (in_dim, shape) -> layers; layer i's output is tap head.i, the last z
    label: Callable[[HeadShape], str]  # e.g. "mlp-2"
    depth: Callable[[HeadShape], int]  # layers between h and z: none 0, linear 1, mlp-L L


HEADS: Registry[HeadType] = Registry("head")


def register_head(
    name: str, label: Callable[[HeadShape], str], depth: Callable[[HeadShape], int]
) -> Callable[[HeadBuilder], HeadBuilder]:
    """Decorator registering a layer builder as head ``name`` (raises ``KeyError`` on a duplicate)."""

    def decorator(build: HeadBuilder) -> HeadBuilder:
        HEADS.add(name, HeadType(name, build, label, depth))
        return build

    return decorator


@dataclass(frozen=True)
class HeadIdentity:
    """What a head is called and where it sits, without building it."""

    kind: str  # registry name: "mlp"
    label: str  # "mlp-2"
    depth: int  # 2


def describe_head(name: str, shape: HeadShape) -> HeadIdentity:
    """Label and depth of head ``name`` with ``shape`` (an unknown name lists the valid ones)."""
    head_type = HEADS.get(name)
    return HeadIdentity(name, head_type.label(shape), head_type.depth(shape))


class ProjectionHead(nn.Module):
    """A stack of layers whose intermediate outputs are named taps.

    Args:
        layers: modules applied in order; layer i's output is tap ``head.i`` except the last,
            whose output is ``z``.
        out_dim: size of z.
        identity: the head's kind, label and depth (set by :func:`build_head`).
    """

    def __init__(self, layers: list[nn.Module], out_dim: int, identity: HeadIdentity) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.out_dim = out_dim
        self.identity = identity

    def tap_names(self) -> list[str]:
        """Names of the head's taps, shallow to deep, ending in ``z``."""
        return [f"head.{i}" for i in range(len(self.layers) - 1)] + ["z"]

    def forward_taps(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        """h: (B, in_dim) -> {"head.0": (B, hidden), ..., "z": (B, out_dim)}."""
        if not self.layers:
            return {"z": h}
        taps: dict[str, torch.Tensor] = {}
        x = h
        for name, layer in zip(self.tap_names(), self.layers, strict=True):
            x = layer(x)
            taps[name] = x
        return taps

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h)
        return h


def _block(in_dim: int, out_dim: int, bn: bool, relu: bool) -> nn.Module:
    """Linear (bias only without BN), BN (no shift on an output layer: ``relu`` False), ReLU."""
    mods: list[nn.Module] = [nn.Linear(in_dim, out_dim, bias=not bn)]
    if bn:
        norm = nn.BatchNorm1d(out_dim)
        if not relu:  # the output layer: official center=False
            norm.bias.requires_grad_(False)
        mods.append(norm)
    if relu:
        mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


@register_head("none", label=lambda shape: "none", depth=lambda shape: 0)
def none_head(in_dim: int, shape: HeadShape) -> list[nn.Module]:
    """z = h: contrastive loss applied directly to the encoder output."""
    return []


@register_head("linear", label=lambda shape: "linear", depth=lambda shape: 1)
def linear_head(in_dim: int, shape: HeadShape) -> list[nn.Module]:
    """z = W h (+ BN): the paper's "linear projection" ablation (Fig. 8)."""
    return [_block(in_dim, shape.out_dim, shape.bn, relu=False)]


@register_head(
    "mlp", label=lambda shape: f"mlp-{shape.num_layers}", depth=lambda shape: shape.num_layers
)
def mlp_head(in_dim: int, shape: HeadShape) -> list[nn.Module]:
    """Non-linear projection: (num_layers - 1) x [Linear, BN, ReLU] then [Linear, BN]."""
    if shape.num_layers < 1:
        raise ConfigError(f"model.num_layers must be >= 1 for an mlp head, got {shape.num_layers}")
    hidden = shape.hidden_dim or in_dim
    n = shape.num_layers
    dims = [in_dim] + [hidden] * (n - 1) + [shape.out_dim]
    return [_block(dims[i], dims[i + 1], shape.bn, relu=i < n - 1) for i in range(n)]


def build_head(name: str, in_dim: int, shape: HeadShape | None = None) -> ProjectionHead:
    """Create head ``name`` on top of an encoder of width ``in_dim``."""
    shape = shape or HeadShape()
    layers = HEADS.get(name).build(in_dim, shape)
    out_dim = shape.out_dim if layers else in_dim
    return ProjectionHead(layers, out_dim=out_dim, identity=describe_head(name, shape))
