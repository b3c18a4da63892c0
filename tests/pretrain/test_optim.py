"""LARS exclusions and arithmetic, learning-rate scaling, warm-up + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pretrain.config import OptimConfig
from pretrain.errors import ConfigError, UserError
from pretrain.optim import (
    LARS,
    build_optimizer,
    scaled_lr,
    split_decay_groups,
    warmup_cosine_schedule,
)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))


def test_lars_groups_exclude_bn_and_bias() -> None:
    net = _net()
    opt = build_optimizer(net, OptimConfig(name="lars", weight_decay=1e-4), peak_lr=0.1)
    assert isinstance(opt, LARS)
    adapted, excluded = opt.param_groups
    assert not adapted["lars_exclude"] and adapted["weight_decay"] == 1e-4
    assert excluded["lars_exclude"] and excluded["weight_decay"] == 0.0
    assert {p.ndim for p in adapted["params"]} == {2}
    # every bias and both BN parameters are excluded
    assert len(excluded["params"]) == 4 and {p.ndim for p in excluded["params"]} == {1}
    decay, no_decay = split_decay_groups(net)
    assert len(decay) + len(no_decay) == len(list(net.parameters()))


def _official_lars(w, g, v, lr, wd, m, eta, exclude):
    """A transcription of the official SimCLR LARSOptimizer (classic_momentum=True) step."""
    if not exclude:
        g = g + wd * w
        w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
        trust = eta * w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
    else:
        trust = 1.0
    v = m * v + lr * trust * g
    return w - v, v


def test_lars_follows_the_official_update_when_the_learning_rate_changes() -> None:
    """lr inside the momentum (official) vs outside (lightly/solo-learn) differ once lr moves:
    over this schedule the old update moved the weights 52% (biases 17%) away from the reference."""
    torch.manual_seed(0)
    w0, b0 = torch.randn(6), torch.randn(3)
    w, b = nn.Parameter(w0.clone()), nn.Parameter(b0.clone())
    opt = LARS([{"params": [w], "weight_decay": 1e-2},
                {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=0.1, momentum=0.9, trust_coefficient=0.02)
    ref_w, ref_b, vw, vb = w0.clone(), b0.clone(), torch.zeros(6), torch.zeros(3)
    for step, lr in enumerate([0.1, 0.2, 0.4, 0.8, 0.4]):
        gw, gb = torch.randn(6), torch.randn(3)
        w.grad, b.grad = gw.clone(), gb.clone()
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        ref_w, vw = _official_lars(ref_w, gw, vw, lr, 1e-2, 0.9, 0.02, exclude=False)
        ref_b, vb = _official_lars(ref_b, gb, vb, lr, 0.0, 0.9, 0.02, exclude=True)
        torch.testing.assert_close(w.detach(), ref_w, msg=f"step {step}")
        torch.testing.assert_close(b.detach(), ref_b, msg=f"step {step}")


def test_lars_step_arithmetic() -> None:
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # |w| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = LARS(
        [
            {"params": [w], "weight_decay": 0.1},
            {"params": [b], "weight_decay": 0.1, "lars_exclude": True},
        ],
        lr=0.5,
        momentum=0.9,
        trust_coefficient=0.01,
    )
    w.grad = torch.tensor([0.6, 0.8])  # |g| = 1
    b.grad = torch.tensor([2.0])
    opt.step()
    g = torch.tensor([0.6, 0.8]) + 0.1 * torch.tensor([3.0, 4.0])  # decayed gradient
    trust = 0.01 * 5.0 / torch.linalg.vector_norm(g)
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 4.0]) - 0.5 * trust * g)
    # excluded parameter: plain SGD, no decay, no trust ratio
    torch.testing.assert_close(b.detach(), torch.tensor([1.0 - 0.5 * 2.0]))


@pytest.mark.parametrize("name", ["lars", "sgd", "adamw"])
def test_every_optimizer_reduces_a_loss(name: str) -> None:
    torch.manual_seed(0)
    net = nn.Linear(4, 1)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    opt = build_optimizer(net, OptimConfig(name=name, trust_coefficient=0.02), peak_lr=0.05)
    first = None
    for _ in range(50):
        loss = ((net(x) - y) ** 2).mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_unknown_optimizer_lists_valid() -> None:
    with pytest.raises(UserError, match="adamw, lars, sgd"):
        build_optimizer(_net(), OptimConfig(name="adam"), 0.1)


def test_lr_scaling_rules() -> None:
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)  # SimCLR ImageNet
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)  # 0.075 x sqrt(4096)
    assert scaled_lr(0.1, 512, "none") == 0.1
    with pytest.raises(ConfigError):
        scaled_lr(0.1, 512, "cubic")


def test_schedule_length_and_endpoints() -> None:
    lrs = warmup_cosine_schedule(peak_lr=1.0, total_steps=100, warmup_steps=10)
    assert len(lrs) == 100
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert max(lrs) == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert lrs[-1] < 1e-3
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    no_warmup = warmup_cosine_schedule(1.0, 5, 0)
    assert no_warmup[0] == 1.0 and len(no_warmup) == 5
    all_warmup = warmup_cosine_schedule(1.0, 4, 10)
    assert all_warmup == pytest.approx([0.25, 0.5, 0.75, 1.0])
