"""Every penalty of the linear-probe grid solved at once: a batched L-BFGS for the GPU.

Solving P penalties one after the other costs P x (iterations) small steps, and on a GPU each
step is bound by kernel launches and host synchronisations, not by arithmetic. Here the P
problems of :mod:`probes.linear` (same features, penalties ``wd_p``) share every matrix product:

    logits = [X 1] @ Theta^T      X: (N, D), Theta: (P*K, D+1) -> logits (N, P, K)

and each problem keeps its own L-BFGS state (Nocedal and Wright 2006, Alg. 7.4, two-loop
recursion with ``history`` pairs) and its own step size. The line search is Armijo backtracking
(sufficient decrease, c1 = 1e-4) done for all running problems together (stopped problems are
no longer evaluated); the objective is strictly convex, so every step gives s^T y > 0 and no
curvature condition is needed for a valid update.
A problem stops when max|grad| <= tol (scikit-learn's rule), when neither its loss nor its
parameters change by more than ``tolerance_change``, or after ``max_iter`` iterations; stopped
problems no longer move. There is one host synchronisation per line-search trial.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def fit_logistic_batched(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    wds: Sequence[float],
    max_iter: int = 1000,
    tol: float = 1e-4,
    history: int = 10,
    tolerance_change: float = 1e-10,
    max_backtracks: int = 30,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise mean CE + wd_p / (2N) ||W_p||^2 for every ``wd_p`` from zero weights.

    Args:
        x: (N, D) features; y: (N,) int64 labels in [0, K).

    Returns:
        W (P, K, D), b (P, K) and the iterations each problem used (P,) int64.
    """
    n, d = x.shape
    p, k = len(wds), num_classes
    m = k * (d + 1)
    xa = torch.cat([x, torch.ones(n, 1, dtype=x.dtype, device=x.device)], dim=1)  # (N, D+1)
    onehot = F.one_hot(y, k).to(x.dtype)[:, None, :]  # (N, 1, K)
    lam = torch.tensor(list(wds), dtype=x.dtype, device=x.device) / n  # (P,)
    mask = torch.ones(k, d + 1, dtype=x.dtype, device=x.device)
    mask[:, -1] = 0.0  # the bias is not penalised
    mask = mask.flatten()

    def evaluate(theta: torch.Tensor, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss (Q,) and gradient (Q, M) of Q problems with parameters ``theta`` (Q, M)."""
        q = theta.shape[0]
        logits = (xa @ theta.view(q * k, d + 1).t()).view(n, q, k)
        lse = torch.logsumexp(logits, dim=2)  # (N, Q)
        ce = (lse - (logits * onehot).sum(2)).mean(0)
        f = ce + 0.5 * lam * (theta * mask).pow(2).sum(1)
        resid = torch.exp(logits - lse[..., None]) - onehot  # softmax - onehot, (N, Q, K)
        g = (resid.view(n, q * k).t() @ xa).view(q, m) / n + lam[:, None] * mask * theta
        return f, g

    theta = torch.zeros(p, m, dtype=x.dtype, device=x.device)
    f, g = evaluate(theta, lam)
    iters = torch.zeros(p, dtype=torch.int64, device=x.device)
    done = g.abs().amax(1) <= tol
    pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (s, y, rho), oldest first
    gamma = torch.ones(p, dtype=x.dtype, device=x.device)
    for it in range(max_iter):
        if bool(done.all()):
            break
        direction = -_two_loop(g, pairs, gamma)
        gtd = (g * direction).sum(1)
        uphill = gtd >= 0  # lost positive definiteness numerically: restart from -g
        direction = torch.where(uphill[:, None], -g, direction)
        gtd = torch.where(uphill, -(g * g).sum(1), gtd)
        direction = direction * (~done)[:, None]
        step = torch.ones(p, dtype=x.dtype, device=x.device)
        if it == 0:  # as torch.optim.LBFGS: a first step of at most unit l1 length
            step = torch.clamp(1.0 / g.abs().sum(1).clamp_min(1e-30), max=1.0)
        active = (~done).nonzero().squeeze(1)  # evaluate only the problems still running
        theta_a, dir_a, lam_a = theta[active], direction[active], lam[active]
        f_a, gtd_a, step_a = f[active], gtd[active], step[active]
        for _ in range(max_backtracks):
            trial_a = theta_a + step_a[:, None] * dir_a
            f_new_a, g_new_a = evaluate(trial_a, lam_a)
            ok_a = f_new_a <= f_a + 1e-4 * step_a * gtd_a
            if bool(ok_a.all()):
                break
            step_a = torch.where(ok_a, step_a, 0.5 * step_a)
        trial, f_new, g_new = theta.clone(), f.clone(), g.clone()
        trial[active], f_new[active], g_new[active] = trial_a, f_new_a, g_new_a
        ok = done.clone()
        ok[active] = ok_a
        step[active] = step_a
        move = ok & ~done
        s, yv = trial - theta, g_new - g
        sy = (s * yv).sum(1)
        valid = move & (sy > 1e-10)
        rho = torch.where(valid, 1.0 / sy.clamp_min(1e-30), torch.zeros_like(sy))
        pairs.append((s * valid[:, None], yv * valid[:, None], rho))
        if len(pairs) > history:
            pairs.pop(0)
        gamma = torch.where(valid, sy / (yv * yv).sum(1).clamp_min(1e-30), gamma)
        f_change = (f_new - f).abs()
        theta = torch.where(move[:, None], trial, theta)
        f = torch.where(move, f_new, f)
        g = torch.where(move[:, None], g_new, g)
        iters += move.long()
        small_step = (step * direction.abs().amax(1)) <= tolerance_change
        done = done | ~ok | (g.abs().amax(1) <= tol) | (move & ((f_change < tolerance_change)
                                                              | small_step))
    theta = theta.view(p, k, d + 1)
    return theta[..., :d].contiguous(), theta[..., d].contiguous(), iters


def _two_loop(
    g: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    gamma: torch.Tensor,
) -> torch.Tensor:
    """H g for every problem: the L-BFGS two-loop recursion on (P, M) tensors.

    A problem whose pair was skipped has s = y = 0 and rho = 0 there, which leaves it unchanged.
    """
    q = g.clone()
    alphas = []
    for s, y, rho in reversed(pairs):  # two kernels per pair and loop: launch-bound on a GPU
        a = rho * torch.linalg.vecdot(s, q)
        q.addcmul_(a[:, None], y, value=-1.0)
        alphas.append(a)
    r = gamma[:, None] * q
    for (s, y, rho), a in zip(pairs, reversed(alphas), strict=True):
        beta = rho * torch.linalg.vecdot(y, r)
        r.addcmul_((a - beta)[:, None], s)
    return r
