"""Optimisers (LARS, SGD, AdamW), learning-rate scaling and the warm-up + cosine schedule.

LARS (You et al. 2017, "Large Batch Training of Convolutional Networks") as the official SimCLR
code implements it (``lars_optimizer.LARSOptimizer`` with ``classic_momentum=True``). For a
parameter w with gradient g, weight decay wd, momentum m, learning rate lr and trust
coefficient eta::

    d     = g + wd * w                      (weight decay added to the gradient)
    trust = eta * |w| / |d|                 (1 when |w| or |d| is 0)
    v     = m * v + lr * trust * d          (the learning rate inside the momentum)
    w     = w - v

Because lr sits inside the momentum, a change of lr (every step of the warm-up and of the
cosine decay) only scales the new gradients, not the accumulated velocity. (lightly and
solo-learn, after PyTorch Lightning Bolts, use v = m * v + trust' * d, w = w - lr * v with
trust' = eta * |w| / (|g| + wd * |w|): a different update whenever lr changes.) Following the
SimCLR code, biases and BatchNorm parameters (every parameter with ndim <= 1) get neither the
trust ratio nor weight decay: v = m * v + lr * g.

Learning-rate scaling (SimCLR App. B.1): ``linear``: lr = base_lr x B / 256;
``sqrt``: lr = base_lr x sqrt(B) (the paper's 0.075 x sqrt(B) for small batches / long runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from pretrain.config import OptimConfig
from pretrain.errors import ConfigError
from pretrain.registry import Registry


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (the update of the module docstring).

    Each param group may set ``lars_exclude=True`` (biases, BN) to skip both the trust ratio and
    the weight decay for its parameters. ``eps`` is added to |d| in the trust ratio (0, as in
    the official code: a zero |d| already gives trust 1).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 0.0,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            lars_exclude=False,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            scale: list[torch.Tensor] | float = group["lr"]
            if not group["lars_exclude"]:
                if group["weight_decay"]:
                    grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
                w_norm = torch.stack(torch._foreach_norm(params))
                g_norm = torch.stack(torch._foreach_norm(grads))
                trust = torch.where(
                    (w_norm > 0) & (g_norm > 0),
                    group["trust_coefficient"] * w_norm / (g_norm + group["eps"]),
                    torch.ones_like(w_norm),
                )
                scale = list((group["lr"] * trust).unbind())  # lr * trust, per parameter
            # one multi-tensor kernel per group instead of ~10 launches per parameter
            scaled = torch._foreach_mul(grads, scale)
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)  # first step: v = lr * d
                bufs.append(state["momentum_buffer"])
            torch._foreach_mul_(bufs, group["momentum"])
            torch._foreach_add_(bufs, scaled)
            torch._foreach_sub_(params, bufs)
        return loss


def split_decay_groups(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(weights, biases-and-norm-parameters): the latter get no weight decay and no LARS."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return decay, no_decay


def scaled_lr(base_lr: float, batch_size: int, scaling: str, reference_batch: int = 256) -> float:
    """The peak learning rate for a (global) batch of ``batch_size`` images."""
    if scaling == "linear":
        return base_lr * batch_size / reference_batch
    if scaling == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if scaling == "none":
        return base_lr
    raise ConfigError(f"optim.lr_scaling must be linear, sqrt or none; got {scaling!r}")


OPTIMIZERS: Registry = Registry("optimizer")


def _on_cuda(params: list[nn.Parameter]) -> bool | None:
    """Fused (single-kernel) optimizer steps where the parameters live on CUDA."""
    return True if params and params[0].is_cuda else None


@OPTIMIZERS.register("lars")
def _lars(decay, no_decay, lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lars_exclude": False},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return LARS(groups, lr=lr, momentum=cfg.momentum, trust_coefficient=cfg.trust_coefficient)


@OPTIMIZERS.register("sgd")
def _sgd(decay, no_decay, lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, fused=_on_cuda(decay))


@OPTIMIZERS.register("adamw")
def _adamw(decay, no_decay, lr: float, cfg: OptimConfig) -> torch.optim.Optimizer:
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    betas = (float(cfg.betas[0]), float(cfg.betas[1]))
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=_on_cuda(decay))


def build_optimizer(model: nn.Module, cfg: OptimConfig, peak_lr: float) -> torch.optim.Optimizer:
    decay, no_decay = split_decay_groups(model)
    return OPTIMIZERS.get(cfg.name)(decay, no_decay, peak_lr, cfg)


def warmup_cosine_schedule(peak_lr: float, total_steps: int, warmup_steps: int) -> list[float]:
    """Per-step learning rates: linear warm-up from peak/warmup to peak, then cosine to 0.

    Returns a list of exactly ``total_steps`` values (one per optimiser step).
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = min(max(warmup_steps, 0), total_steps)
    lrs = [peak_lr * (s + 1) / warmup_steps for s in range(warmup_steps)]
    decay_steps = total_steps - warmup_steps
    lrs += [peak_lr * 0.5 * (1.0 + math.cos(math.pi * s / decay_steps)) for s in range(decay_steps)]
    assert len(lrs) == total_steps
    return lrs
