"""Linear probe: L2-regularised multinomial logistic regression on frozen features.

Protocol (Kornblith et al. 2019, used by SimCLR's transfer appendix B.8 and by Ericsson et al.
2021, "How Well Do Self-Supervised Models Transfer?"):

1. hold out a validation split from train (the dataset's own val split when it has one, else a
   seeded stratified 20% hold-out, as ssl-transfer's 20% random hold-out);
2. for each penalty on a log-spaced grid (45 values of weight decay from 1e-6 to 1e5) fit on
   train and score on val; warm-start each fit from the previous one, strongest penalty first;
3. refit on train+val with the chosen penalty and evaluate once on test.

The objective is scikit-learn's, so ``wd = 1 / C``::

    L(W, b) = mean_i CE(W x_i + b, y_i) + wd / (2 N) * ||W||^2      (bias not penalised)

with x: (N, D) features, W: (K, D), b: (K,). It is minimised by full-batch L-BFGS with a strong
Wolfe line search and an analytic gradient, stopped when max|grad| <= tol (1e-4, scikit-learn's
default) or after ``max_iter`` iterations; it runs wherever the features are (GPU when present;
there all penalties are solved at once, see :mod:`probes.logreg_batched`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from probes.logreg_batched import fit_logistic_batched
from probes.metrics import classification_metrics

DEFAULT_GRID = tuple(float(v) for v in np.logspace(-6, 5, 45))  # weight decay = 1 / C


def lbfgs_problem(
    x: torch.Tensor, outputs: int, init: tuple[torch.Tensor, torch.Tensor] | None,
    max_iter: int, tol: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.optim.LBFGS]:
    """Weights W (outputs, D) and bias b (outputs,) of a logistic fit on x (N, D), zeros or a
    copy of ``init``, and the full-batch L-BFGS that fits them (strong Wolfe line search; stops
    at max|grad| <= ``tol`` or after ``max_iter`` iterations)."""
    if init is None:
        w = torch.zeros(outputs, x.shape[1], dtype=x.dtype, device=x.device)
        b = torch.zeros(outputs, dtype=x.dtype, device=x.device)
    else:
        w, b = init[0].detach().clone(), init[1].detach().clone()
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, max_eval=max_iter * 5 // 4 + 1, tolerance_grad=tol,
        tolerance_change=1e-10, history_size=10, line_search_fn="strong_wolfe",
    )
    return w, b, opt


def fit_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    wd: float,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise the objective above for one penalty. x: (N, D), y: (N,) int64 in [0, K).

    Returns (W (K, D), b (K,), iterations used). ``init`` warm-starts from a previous (W, b).
    """
    n = x.shape[0]
    w, b, opt = lbfgs_problem(x, num_classes, init, max_iter, tol)
    lam = wd / n
    rows = torch.arange(n, device=x.device)

    def closure() -> torch.Tensor:
        with torch.no_grad():
            logits = torch.addmm(b, x, w.t())
            lse = torch.logsumexp(logits, dim=1)
            loss = (lse - logits[rows, y]).mean() + 0.5 * lam * w.pow(2).sum()
            resid = torch.exp(logits - lse[:, None])  # softmax
            resid[rows, y] -= 1.0
            resid /= n
            w.grad = resid.t() @ x + lam * w
            b.grad = resid.sum(0)
        return loss

    opt.step(closure)
    n_iter = int(opt.state[w].get("n_iter", 0))  # LBFGS keeps its state under the first param
    return w.detach(), b.detach(), n_iter


def standardized(ref: torch.Tensor, *xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``xs`` shifted and scaled by the per-feature mean and std of ``ref`` (N, D).

    Constant features (std < 1e-12 of the largest) are only centred.
    """
    mean = ref.mean(0)
    std = ref.std(0)
    std = torch.where(std > 1e-12 * std.max().clamp_min(1e-30), std, torch.ones_like(std))
    return tuple((x - mean) / std for x in xs)


@dataclass
class LinearProbeResult:
    metrics: dict[str, float]  # test top1 / top5 / mean_per_class of the refit model
    wd: float  # chosen penalty (weight decay; C = 1 / wd)
    val_curve: list[tuple[float, float]] = field(default_factory=list)  # (wd, val score)
    iterations: int = 0  # L-BFGS iterations, all fits together
    solver: str = "sequential"
    max_iter: int = 100  # per penalty during selection


def linear_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    grid: Sequence[float] = DEFAULT_GRID,
    select: str = "top1",
    max_iter: int | None = None,
    refit_max_iter: int = 1000,
    tol: float = 1e-4,
    standardize: bool = True,
    solver: str = "auto",
) -> LinearProbeResult:
    """Select the penalty on ``val``, refit on train+val, evaluate once on ``test``.

    Each of ``train``/``val``/``test`` is (features (N, D) float, labels (N,) int64), all on one
    device. ``test`` is read only after the penalty is fixed. Ties in the validation score go
    to the stronger penalty. With ``standardize`` every feature is shifted and scaled by the
    mean and std of the data being fitted (train for selection, train+val for the refit), as
    MAE's BatchNorm-without-affine probe does; this makes the penalty grid and the gradient
    tolerance independent of the feature scale (a tap after an untrained BatchNorm can be
    1e-3 small, where every gradient starts below tol). ``False`` is ssl-transfer's raw protocol.

    Solvers: ``sequential`` fits the grid one penalty at a time, strongest first, each fit
    warm-started from the previous one (``max_iter`` default 100 per penalty, scikit-learn's);
    ``batched`` fits all penalties at once from zero (:mod:`probes.logreg_batched`, default
    ``max_iter`` 1000), which wins on a GPU where small sequential steps are launch-bound;
    ``auto`` picks batched on CUDA, sequential elsewhere. Both stop at max|grad| <= ``tol``.
    The refit starts from the chosen penalty's train solution.
    """
    if select not in ("top1", "mean_per_class"):
        raise ValueError(f"select must be top1 or mean_per_class, not {select!r}")
    solver = resolve_solver(solver, train[0].device)
    if max_iter is None:
        max_iter = 1000 if solver == "batched" else 100
    (xtr, ytr), (xva, yva), (xte, yte) = train, val, test
    if standardize:
        xtr, xva = standardized(xtr, xtr, xva)
    grid = sorted(grid, reverse=True)  # strongest penalty first
    fitted: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    iterations = 0
    if solver == "batched":
        w_all, b_all, iters = fit_logistic_batched(xtr, ytr, num_classes, grid, max_iter, tol)
        fitted = {wd: (w_all[i], b_all[i]) for i, wd in enumerate(grid)}
        iterations = int(iters.sum())
    else:
        params: tuple[torch.Tensor, torch.Tensor] | None = None
        for wd in grid:  # each fit starts from the previous, slightly stronger, solution
            w, b, it = fit_logistic(xtr, ytr, num_classes, wd, params, max_iter, tol)
            params = fitted[wd] = (w, b)
            iterations += it
    curve = [(wd, classification_metrics(torch.addmm(b, xva, w.t()), yva)[select])
             for wd, (w, b) in fitted.items()]
    best_wd, _ = max(curve, key=lambda item: (item[1], item[0]))
    x_all, y_all = torch.cat([train[0], val[0]]), torch.cat([ytr, yva])
    if standardize:
        x_all, xte = standardized(x_all, x_all, xte)
    w, b, it = fit_logistic(x_all, y_all, num_classes, best_wd, fitted[best_wd], refit_max_iter, tol)
    iterations += it
    metrics = classification_metrics(torch.addmm(b, xte, w.t()), yte)
    return LinearProbeResult(metrics, best_wd, sorted(curve), iterations, solver, max_iter)


def resolve_solver(solver: str, device: torch.device) -> str:
    if solver == "auto":
        return "batched" if device.type == "cuda" else "sequential"
    if solver not in ("sequential", "batched"):
        raise ValueError(f"solver must be auto, sequential or batched, not {solver!r}")
    return solver
