"""Linear probe of a multi-label dataset (VOC2007): one L2-regularised binary logistic
regression per class, the penalty chosen on val by 11-point mAP, refit on train+val, tested once.

The protocol of Kornblith et al. 2019 (Sec. 3: "for VOC2007 ... we trained a separate binary
classifier for each class") as ssl-transfer (Ericsson et al. 2021, ``linear.py``) runs it with
scikit-learn: ``LogisticRegression(C=1/wd)`` fitted on ``y[:, c]`` for every class c, scored
with the VOC07 11-point AP of its decision function. Each class's objective is scikit-learn's::

    L_c(w_c, b_c) = mean_{i: y_ic != -1} BCE(w_c . x_i + b_c, y_ic) + wd / (2 N_c) ||w_c||^2

with x: (N, D), y: (N, C) in {1, 0, -1} (-1: the class is only "difficult" in image i, left
out of that class's fit and AP) and N_c the images kept for class c. The C objectives share no
parameter, so their sum is minimised here in one L-BFGS run (strong Wolfe line search, analytic
gradient) whose minimiser is each class's own; the penalty grid is :data:`probes.linear.
DEFAULT_GRID` (45 values of weight decay from 1e-6 to 1e5), strongest first, warm-started.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from probes.linear import DEFAULT_GRID, LinearProbeResult, lbfgs_problem, standardized
from probes.metrics import multilabel_metrics


def fit_binary_logistic(
    x: torch.Tensor,
    y: torch.Tensor,
    wd: float,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_iter: int = 100,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Minimise the sum over classes of ``L_c`` above for one penalty.

    Args:
        x: (N, D) features; y: (N, C) int targets in {1, 0, -1}.
        init: (W (C, D), b (C,)) to warm-start from.

    Returns:
        W (C, D), b (C,), and the L-BFGS iterations used.
    """
    kept = (y >= 0).to(x.dtype)  # (N, C)
    positive = (y == 1).to(x.dtype)
    per_class_n = kept.sum(0).clamp_min(1.0)  # N_c
    w, b, opt = lbfgs_problem(x, y.shape[1], init, max_iter, tol)
    lam = wd / per_class_n  # (C,)

    def closure() -> torch.Tensor:
        with torch.no_grad():
            logits = torch.addmm(b, x, w.t())  # (N, C)
            # BCE on logits, never sigmoid then log: softplus(z) - y z
            bce = F.softplus(logits) - positive * logits
            loss = ((bce * kept).sum(0) / per_class_n).sum() + 0.5 * (lam * w.pow(2).sum(1)).sum()
            resid = (torch.sigmoid(logits) - positive) * kept / per_class_n  # dL/dlogits
            w.grad = resid.t() @ x + lam[:, None] * w
            b.grad = resid.sum(0)
        return loss

    opt.step(closure)
    n_iter = int(opt.state[w].get("n_iter", 0))
    return w.detach(), b.detach(), n_iter


def linear_probe_multilabel(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    grid: Sequence[float] = DEFAULT_GRID,
    max_iter: int | None = None,
    refit_max_iter: int = 1000,
    tol: float = 1e-4,
    standardize: bool = True,
) -> LinearProbeResult:
    """Select the penalty on ``val`` by 11-point mAP, refit on train+val, test once.

    Each of ``train``/``val``/``test`` is (features (N, D), targets (N, C) in {1, 0, -1}).
    As :func:`probes.linear.linear_probe`: ``test`` is read only after the penalty is fixed,
    ties go to the stronger penalty, and ``standardize`` scales features by the statistics of
    the data being fitted. ``max_iter`` defaults to 100 per penalty (scikit-learn's).
    """
    max_iter = 100 if max_iter is None else max_iter
    (xtr, ytr), (xva, yva), (xte, yte) = train, val, test
    if standardize:
        xtr, xva = standardized(xtr, xtr, xva)
    params: tuple[torch.Tensor, torch.Tensor] | None = None
    fitted: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}
    iterations = 0
    for wd in sorted(grid, reverse=True):  # each fit starts from the previous solution
        w, b, it = fit_binary_logistic(xtr, ytr, wd, params, max_iter, tol)
        params = fitted[wd] = (w, b)
        iterations += it
    curve = [(wd, multilabel_metrics(torch.addmm(b, xva, w.t()), yva)["map11"])
             for wd, (w, b) in fitted.items()]
    best_wd, _ = max(curve, key=lambda item: (item[1], item[0]))
    x_all, y_all = torch.cat([train[0], val[0]]), torch.cat([ytr, yva])
    if standardize:
        x_all, xte = standardized(x_all, x_all, xte)
    w, b, it = fit_binary_logistic(x_all, y_all, best_wd, fitted[best_wd], refit_max_iter, tol)
    iterations += it
    metrics = multilabel_metrics(torch.addmm(b, xte, w.t()), yte)
    return LinearProbeResult(metrics, best_wd, sorted(curve), iterations, "sequential", max_iter)
