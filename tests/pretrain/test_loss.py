"""NT-Xent against a naive loop transcription of SimCLR's Eq. (1) and Algorithm 1."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.loss import NTXentLoss, nt_xent


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """Algorithm 1 of the paper, written with explicit loops over i and j (differentiable)."""
    n = z1.shape[0]
    z = torch.empty(2 * n, z1.shape[1], dtype=torch.float64)
    z = torch.stack([v for pair in zip(z1, z2, strict=True) for v in pair]).double()  # 2k, 2k+1
    sim = [
        [(z[i] @ z[j]) / (z[i].norm() * z[j].norm()) for j in range(2 * n)] for i in range(2 * n)
    ]

    def ell(i: int, j: int) -> torch.Tensor:
        denom = sum(torch.exp(sim[i][k] / tau) for k in range(2 * n) if k != i)
        return -torch.log(torch.exp(sim[i][j] / tau) / denom)

    total = sum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n))
    return total / (2 * n)


@pytest.mark.parametrize(
    "n,d,tau", [(1, 3, 0.5), (2, 4, 0.1), (5, 8, 0.5), (8, 16, 1.0), (3, 2, 0.07)]
)
def test_matches_naive_formula_value_and_gradient(n: int, d: int, tau: float) -> None:
    torch.manual_seed(n * 100 + d)
    z1 = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    ours = nt_xent(z1, z2, tau)
    ref = naive_nt_xent(z1, z2, tau)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    g_ours = torch.autograd.grad(ours, [z1, z2])
    g_ref = torch.autograd.grad(ref, [z1, z2])
    for a, b in zip(g_ours, g_ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-4, atol=1e-6)


def test_symmetric_in_its_arguments() -> None:
    torch.manual_seed(0)
    z1, z2 = torch.randn(6, 5), torch.randn(6, 5)
    assert nt_xent(z1, z2, 0.3).item() == pytest.approx(nt_xent(z2, z1, 0.3).item(), rel=1e-6)


def test_known_values_at_extremes() -> None:
    # Identical views, orthogonal images: positive similarity 1, negatives 0.
    z = torch.eye(4)
    tau = 0.5
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 6 * math.exp(0.0)))
    assert nt_xent(z, z.clone(), tau).item() == pytest.approx(expected, rel=1e-6)
    # Scale invariance: the loss uses cosine similarity.
    assert nt_xent(3 * z, 0.5 * z, tau).item() == pytest.approx(expected, rel=1e-6)


def test_stable_at_small_temperature() -> None:
    torch.manual_seed(1)
    z1, z2 = torch.randn(16, 8), torch.randn(16, 8)
    loss = nt_xent(z1, z2, 1e-3)
    assert torch.isfinite(loss)


def test_decreases_under_gradient_steps() -> None:
    torch.manual_seed(0)
    z1 = torch.randn(8, 4, requires_grad=True)
    z2 = torch.randn(8, 4, requires_grad=True)
    opt = torch.optim.SGD([z1, z2], lr=0.5)
    loss_fn = NTXentLoss(temperature=0.5)
    losses = []
    for _ in range(20):
        loss = loss_fn(z1, z2)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 0.5


def test_rejects_bad_shapes_and_temperature() -> None:
    with pytest.raises(ValueError):
        nt_xent(torch.randn(3, 4), torch.randn(2, 4))
    with pytest.raises(ValueError):
        NTXentLoss(temperature=0.0)
