"""The SimCLR model: an encoder f and a projection head g, composed (no inheritance).

``forward(x)`` returns z = g(f(x)); ``forward_taps(x)`` returns every representation a probe may
read, in one pass: ``{"h": (B, num_features), "head.0": ..., "z": (B, out_dim)}``.
"""

from __future__ import annotations

import torch
from torch import nn

from pretrain.config import ModelConfig
from pretrain.encoders import build_encoder, check_encoder
from pretrain.heads import HeadShape, ProjectionHead, build_head


class SimCLRModel(nn.Module):
    """f and g of SimCLR.

    Args:
        encoder: an :class:`pretrain.encoders.Encoder` (``num_features``, (B, 3, H, W) ->
            (B, num_features)).
        head: the projection head on top of it.
    """

    def __init__(self, encoder: nn.Module, head: ProjectionHead) -> None:
        super().__init__()
        self.num_features = check_encoder(encoder, type(encoder).__name__)
        self.encoder = encoder
        self.head = head

    def tap_names(self) -> list[str]:
        """``["h", "head.0", ..., "z"]``: every representation this model exposes."""
        return ["h"] + self.head.tap_names()

    def forward_taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: (B, 3, H, W) -> {tap name: (B, D_tap)}."""
        h = self.encoder(x)
        return {"h": h, **self.head.forward_taps(h)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) -> z: (B, out_dim), not normalised."""
        return self.head(self.encoder(x))


def head_shape(cfg: ModelConfig) -> HeadShape:
    """The head sizes of a model config."""
    return HeadShape(out_dim=cfg.out_dim, hidden_dim=cfg.hidden_dim, num_layers=cfg.num_layers,
                     bn=cfg.bn)


def build_model(cfg: ModelConfig) -> SimCLRModel:
    """Build encoder and head from the model section of a config."""
    encoder = build_encoder(cfg.encoder, cifar_stem=cfg.cifar_stem,
                            zero_init_residual=cfg.zero_init_residual)
    head = build_head(cfg.head, in_dim=check_encoder(encoder, cfg.encoder), shape=head_shape(cfg))
    return SimCLRModel(encoder, head)
