"""Linear probe: agreement with scikit-learn, honest validation, hand-checked metrics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from pretrain.augment import eval_transform, resolve_recipe
from pretrain.config import AugmentConfig
from pretrain.data import load_dataset, stratified_holdout
from probes.checkpoints import load_any
from probes.features import extract_features
from probes.linear import fit_logistic, linear_probe, standardized
from probes.logreg_batched import fit_logistic_batched
from probes.metrics import classification_metrics


@pytest.fixture(scope="module")
def digits_h(digits_run):
    """Standardised h features of the digits train and test splits (random small_cnn)."""
    model = load_any(digits_run).model
    out = []
    for split in ("train", "test"):
        ds = load_dataset("digits", split)
        tf = eval_transform(resolve_recipe(AugmentConfig(), ds.info))
        x = extract_features(model, ds, tf, ["h"], batch_size=512)["h"]
        out.append((x, torch.as_tensor(ds.targets)))
    (xtr, ytr), (xte, yte) = out
    xtr_s, xte_s = standardized(xtr, xtr, xte)
    return xtr_s, ytr, xte_s, yte


def sk_fit(x, y, wd, tol=1e-6):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(C=1.0 / wd, tol=tol, max_iter=5000).fit(
            x.double().numpy(), y.numpy())


def objective(w, b, x, y, wd):
    """mean cross-entropy + wd / (2N) ||W||^2, in float64: scikit-learn's loss with C = 1/wd."""
    w, b, x = torch.as_tensor(w).double(), torch.as_tensor(b).double(), x.double()
    logits = x @ w.t() + b
    ce = logits.logsumexp(1) - logits[torch.arange(len(y)), y]
    return float(ce.mean() + 0.5 * wd / len(y) * w.pow(2).sum())


@pytest.mark.parametrize("wd", [1e-2, 1.0, 100.0])
def test_fit_agrees_with_sklearn_on_digits_features(digits_h, wd):
    xtr, ytr, xte, yte = digits_h
    w, b, _ = fit_logistic(xtr, ytr, 10, wd, max_iter=2000, tol=1e-6)
    ours = classification_metrics(xte @ w.t() + b, yte)["top1"]
    clf = sk_fit(xtr, ytr, wd)
    theirs = 100.0 * clf.score(xte.double().numpy(), yte.numpy())
    assert abs(ours - theirs) <= 0.5
    # the same objective reaches the same minimum (float32 features, float64 scikit-learn)
    mine, ref = objective(w, b, xtr, ytr, wd), objective(clf.coef_, clf.intercept_, xtr, ytr, wd)
    assert mine == pytest.approx(ref, rel=1e-2, abs=1e-5)


def test_protocol_agrees_with_sklearn_grid_search(digits_h):
    xtr, ytr, xte, yte = digits_h
    tr, va = stratified_holdout(ytr.numpy(), 0.2, seed=0)
    grid = [1e-2, 1.0, 100.0, 1e4]
    res = linear_probe((xtr[tr], ytr[tr]), (xtr[va], ytr[va]), (xte, yte), 10, grid,
                       max_iter=1000, tol=1e-5, standardize=False)
    scores = {wd: sk_fit(xtr[tr], ytr[tr], wd, 1e-5).score(xtr[va].double().numpy(),
                                                           ytr[va].numpy())
              for wd in grid}
    best = max(scores.values())
    sk_wd = max(wd for wd, s in scores.items() if s == best)  # ties to the stronger penalty
    assert res.wd == pytest.approx(sk_wd)
    sk_test = 100 * sk_fit(xtr, ytr, sk_wd, 1e-5).score(xte.double().numpy(), yte.numpy())
    assert abs(res.metrics["top1"] - sk_test) <= 0.5


def test_selection_never_reads_test(digits_h):
    """The chosen penalty and validation curve do not depend on the test set at all."""
    xtr, ytr, xte, yte = digits_h
    tr, va = stratified_holdout(ytr.numpy(), 0.2, seed=0)
    grid = [1e-2, 1.0, 100.0]
    a = linear_probe((xtr[tr], ytr[tr]), (xtr[va], ytr[va]), (xte, yte), 10, grid)
    garbage = (torch.randn_like(xte) * 1e3, torch.randint(0, 10, yte.shape))
    b = linear_probe((xtr[tr], ytr[tr]), (xtr[va], ytr[va]), garbage, 10, grid)
    assert a.wd == b.wd and a.val_curve == b.val_curve
    assert a.metrics != b.metrics


def test_stratified_holdout_indices():
    labels = np.repeat(np.arange(5), [10, 20, 5, 2, 1])
    tr, va = stratified_holdout(labels, 0.2, seed=3)
    assert len(np.intersect1d(tr, va)) == 0
    assert np.array_equal(np.union1d(tr, va), np.arange(len(labels)))
    counts = {c: int((labels[va] == c).sum()) for c in range(5)}
    assert counts == {0: 2, 1: 4, 2: 1, 3: 1, 4: 0}  # 20% rounded, >= 1 if possible, never all
    assert set(labels[tr]) == set(range(5))  # every class keeps train images
    tr2, va2 = stratified_holdout(labels, 0.2, seed=3)
    assert np.array_equal(va, va2)
    assert not np.array_equal(va, stratified_holdout(labels, 0.2, seed=4)[1])


def test_classification_metrics_by_hand():
    logits = torch.tensor([
        [5.0, 4, 3, 2, 1, 0],  # label 0: top-1 hit
        [5.0, 4, 3, 2, 1, 0],  # label 4: top-5 hit only
        [5.0, 4, 3, 2, 1, 0],  # label 5: miss
        [0.0, 9, 0, 0, 0, 0],  # label 1: top-1 hit
    ])
    labels = torch.tensor([0, 4, 5, 1])
    m = classification_metrics(logits, labels)
    assert m["top1"] == pytest.approx(50.0)
    assert m["top5"] == pytest.approx(75.0)
    # classes 0, 1 right, 4, 5 wrong -> per-class mean (1 + 1 + 0 + 0) / 4
    assert m["mean_per_class"] == pytest.approx(50.0)


def test_warm_start_reaches_the_same_solution():
    torch.manual_seed(0)
    x, y = torch.randn(200, 5), torch.randint(0, 3, (200,))
    cold = fit_logistic(x, y, 3, 1.0, max_iter=500, tol=1e-7)
    start = fit_logistic(x, y, 3, 100.0, max_iter=500, tol=1e-7)
    warm = fit_logistic(x, y, 3, 1.0, init=start[:2], max_iter=500, tol=1e-7)
    assert torch.allclose(cold[0], warm[0], atol=1e-4)
    assert torch.allclose(cold[1], warm[1], atol=1e-4)


def test_batched_solver_reaches_the_sequential_minima(digits_h):
    xtr, ytr, _, _ = digits_h
    grid = [1e-2, 1.0, 100.0, 1e4]
    w_all, b_all, iters = fit_logistic_batched(xtr, ytr, 10, grid, max_iter=2000, tol=1e-6)
    assert (iters > 0).all() and (iters < 2000).all()
    for i, wd in enumerate(grid):
        w, b, _ = fit_logistic(xtr, ytr, 10, wd, max_iter=2000, tol=1e-6)
        assert objective(w_all[i], b_all[i], xtr, ytr, wd) == pytest.approx(
            objective(w, b, xtr, ytr, wd), rel=1e-3, abs=1e-6)


def test_batched_problems_do_not_interact():
    torch.manual_seed(0)
    x, y = torch.randn(300, 6), torch.randint(0, 4, (300,))
    alone = fit_logistic_batched(x, y, 4, [1.0], tol=1e-6)
    together = fit_logistic_batched(x, y, 4, [1e3, 1.0, 1e-3], tol=1e-6)
    # own line search and history: the neighbours' much stronger/weaker penalties change nothing
    assert torch.allclose(alone[0][0], together[0][1], atol=1e-4)
    assert torch.allclose(alone[1][0], together[1][1], atol=1e-4)
    assert abs(int(alone[2][0]) - int(together[2][1])) <= 1  # float rounding may add one step


def test_batched_and_sequential_protocols_choose_the_same_penalty(digits_h):
    xtr, ytr, xte, yte = digits_h
    tr, va = stratified_holdout(ytr.numpy(), 0.2, seed=0)
    args = ((xtr[tr], ytr[tr]), (xtr[va], ytr[va]), (xte, yte), 10, [1e-2, 1.0, 100.0, 1e4])
    seq = linear_probe(*args, max_iter=2000, tol=1e-6, solver="sequential")
    bat = linear_probe(*args, tol=1e-6, solver="batched")
    assert (seq.solver, bat.solver, bat.max_iter) == ("sequential", "batched", 1000)
    assert seq.wd == bat.wd
    assert [v for _, v in seq.val_curve] == pytest.approx([v for _, v in bat.val_curve], abs=0.5)
    assert abs(seq.metrics["top1"] - bat.metrics["top1"]) <= 0.5
