"""Projection heads g(.) by name: ``none``, ``linear`` and ``mlp`` (SimCLR v1/v2).

The head maps the encoder output h (B, in_dim) to z (B, out_dim). ``forward_taps`` also returns
every intermediate output so that probes can read any layer without a second forward pass:

* ``none``:   taps {"z"} with z = h (identity; out_dim = in_dim).
* ``linear``: one Linear (+ BN when ``bn``); taps {"z"}.
* ``mlp``:    ``num_layers`` Linear layers; each but the last is followed by BN (when ``bn``)
  and ReLU, the last by BN only (as in the official SimCLR v2 code, where the output BN has no
  scale). Hidden outputs (after their ReLU) are tapped as ``head.0`` ... ``head.{L-2}`` and the
  last layer's output as ``z``. SimCLR v1: L=2, 2048-2048-128; SimCLR v2: L=3.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from pretrain.registry import Registry

HEADS: Registry[Callable[..., ProjectionHead]] = Registry("head")


class ProjectionHead(nn.Module):
    """A stack of layers whose intermediate outputs are named taps.

    Args:
        layers: modules applied in order; layer i's output is tap ``head.i`` except the last,
            whose output is ``z``.
        out_dim: size of z.
    """

    def __init__(self, layers: list[nn.Module], out_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.out_dim = out_dim

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
    mods: list[nn.Module] = [nn.Linear(in_dim, out_dim, bias=not bn)]
    if bn:
        mods.append(nn.BatchNorm1d(out_dim))
    if relu:
        mods.append(nn.ReLU(inplace=True))
    return nn.Sequential(*mods)


@HEADS.register("none")
def none_head(in_dim: int, **_: object) -> ProjectionHead:
    """z = h: contrastive loss applied directly to the encoder output."""
    return ProjectionHead([], out_dim=in_dim)


@HEADS.register("linear")
def linear_head(in_dim: int, out_dim: int = 128, bn: bool = False, **_: object) -> ProjectionHead:
    """z = W h (+ BN): the paper's "linear projection" ablation (Fig. 8)."""
    return ProjectionHead([_block(in_dim, out_dim, bn, relu=False)], out_dim=out_dim)


@HEADS.register("mlp")
def mlp_head(
    in_dim: int,
    out_dim: int = 128,
    hidden_dim: int = 0,
    num_layers: int = 2,
    bn: bool = True,
    **_: object,
) -> ProjectionHead:
    """Non-linear projection: (num_layers - 1) x [Linear, BN, ReLU] then [Linear, BN]."""
    hidden = hidden_dim or in_dim
    dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
    layers = [_block(dims[i], dims[i + 1], bn, relu=i < num_layers - 1) for i in range(num_layers)]
    return ProjectionHead(layers, out_dim=out_dim)


def build_head(
    name: str,
    in_dim: int,
    out_dim: int = 128,
    hidden_dim: int = 0,
    num_layers: int = 2,
    bn: bool = True,
) -> ProjectionHead:
    """Create head ``name`` on top of an encoder of width ``in_dim``."""
    return HEADS.get(name)(
        in_dim=in_dim, out_dim=out_dim, hidden_dim=hidden_dim, num_layers=num_layers, bn=bn
    )
