"""NT-Xent, the normalised temperature-scaled cross-entropy loss of SimCLR (Chen et al. 2020, Eq. 1).

For a batch of N images with two views each, z_1..z_2N (views 2k-1 and 2k of the paper are
here ``z1[k]`` and ``z2[k]``), with s_ij = z_i.z_j / (|z_i| |z_j|):

    l(i, j) = -log( exp(s_ij / tau) / sum_{k != i} exp(s_ik / tau) )
    L = 1/(2N) sum_k [ l(2k-1, 2k) + l(2k, 2k-1) ]

It is computed as cross-entropy over the (2N, 2N) logits with the diagonal masked to -inf,
which is the stable log-sum-exp form (no exp-then-log). Under torch.distributed, the keys are
gathered from every rank (:func:`pretrain.distributed.gather_with_grad`) so each rank's 2B
queries see all 2 x global-batch views as candidates; at world size 1 nothing changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.distributed import gather_with_grad, rank


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent loss of two views.

    Args:
        z1: (B, D) projections of the first views on this rank (not normalised).
        z2: (B, D) projections of the second views; row k pairs with ``z1[k]``.
        temperature: tau > 0.

    Returns:
        Scalar: the mean over this rank's 2B anchors. Averaged over ranks (as DDP does with
        the gradients) this equals the single-process loss on the global batch.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"expected two (B, D) tensors of equal shape, got {z1.shape}, {z2.shape}")
    b = z1.shape[0]
    queries = F.normalize(torch.cat([z1, z2], dim=0).float(), dim=1)  # (2B, D)
    z1_all = F.normalize(gather_with_grad(z1).float(), dim=1)  # (W*B, D)
    z2_all = F.normalize(gather_with_grad(z2).float(), dim=1)
    keys = torch.cat([z1_all, z2_all], dim=0)  # (2WB, D): all first views, then all second views
    total = z1_all.shape[0]  # W*B
    logits = queries @ keys.T / temperature  # (2B, 2WB)

    offset = rank() * b
    local = torch.arange(b, device=z1.device) + offset  # global index of each local image
    self_index = torch.cat([local, local + total])  # where each query sits among the keys
    positive = torch.cat([local + total, local])  # its other view
    # scatter, not index_put with a host scalar: no device synchronisation in the step
    logits = logits.scatter(1, self_index.unsqueeze(1), float("-inf"))
    return F.cross_entropy(logits, positive)


class NTXentLoss(nn.Module):
    """Module wrapper of :func:`nt_xent` with a fixed temperature."""

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        return nt_xent(z1, z2, self.temperature)
