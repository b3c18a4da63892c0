"""The transfer protocol's metrics against scikit-learn, and the multi-label (VOC2007) probes.

References: mean per-class accuracy is scikit-learn's ``balanced_accuracy_score``; the VOC07
11-point AP is the VOC devkit's (``VOCevalcls``: max precision at recall >= t over the ranked
images, t = 0, 0.1, ..., 1) computed from scikit-learn's ``precision_recall_curve``, whose
last point (recall 0, precision 1) is not a ranked image and is dropped. ssl-transfer
(Ericsson et al. 2021, ``linear.py``'s ``voc_eval_cls``) keeps it, which scores precision 1 at
t = 0 even when the top-ranked image is a negative; the test below shows where the two differ.
The per-class logistic regressions are scikit-learn's ``LogisticRegression(C=1/wd)`` fitted on
``y[:, c]``, as ssl-transfer fits them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, precision_recall_curve

from probes.knn import knn_multilabel
from probes.linear import standardized
from probes.linear_multilabel import fit_binary_logistic, linear_probe_multilabel
from probes.metrics import (
    SCORE_METRIC,
    class_average_precision_11pt,
    classification_metrics,
    multilabel_metrics,
    with_score,
)


def sklearn_ap_11pt(target: np.ndarray, scores: np.ndarray, keep_endpoint: bool = False) -> float:
    """The 11-point interpolation of sklearn's precision-recall curve; ``keep_endpoint``:
    ssl-transfer's variant with sklearn's artificial (recall 0, precision 1) point."""
    precision, recall, _ = precision_recall_curve(target, scores)
    if not keep_endpoint:
        precision, recall = precision[:-1], recall[:-1]
    return float(np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0
                          for t in np.linspace(0, 1, 11)]))


def test_mean_per_class_accuracy_is_balanced_accuracy() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 300)  # unbalanced by chance
    logits = torch.from_numpy(rng.normal(size=(300, 7)))
    logits[np.arange(300)[:150], labels[:150]] += 3.0  # half right by construction
    ours = classification_metrics(logits, torch.from_numpy(labels))["mean_per_class"]
    expected = 100 * balanced_accuracy_score(labels, logits.argmax(1).numpy())
    assert ours == pytest.approx(expected, abs=1e-4)  # float32 means
    assert ours != pytest.approx(classification_metrics(logits, torch.from_numpy(labels))["top1"])


def test_11_point_ap_matches_sklearn_curve_interpolation() -> None:
    rng = np.random.default_rng(1)
    for trial in range(20):
        target = (rng.random(60) < rng.uniform(0.1, 0.6)).astype(np.int64)
        target[0] = 1
        scores = rng.normal(size=60) + 1.5 * target * rng.random()  # distinct, somewhat ranked
        ours = class_average_precision_11pt(scores, target)
        assert ours == pytest.approx(sklearn_ap_11pt(target, scores), abs=1e-12), trial
    # where the top-ranked image is a negative, ssl-transfer's variant scores t = 0 as 1
    scores, target = np.array([0.9, 0.8, 0.7]), np.array([0, 1, 0])
    assert class_average_precision_11pt(scores, target) == pytest.approx(0.5)
    assert sklearn_ap_11pt(target, scores, keep_endpoint=True) == pytest.approx((1 + 10 * .5) / 11)


def test_11_point_ap_by_hand_and_ignored_images() -> None:
    # ranked: pos, neg, pos, neg -> precision 1, .5, .667, .5 at recall .5, .5, 1, 1
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    target = np.array([1, 0, 1, 0])
    # recall >= 0..0.5 (6 points): max precision 1; recall >= 0.6..1 (5 points): 2/3
    assert class_average_precision_11pt(scores, target) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    # the negative ranked second made "difficult only": ignored, so the ranking is perfect
    assert class_average_precision_11pt(scores, np.array([1, -1, 1, 0])) == pytest.approx(1.0)
    assert np.isnan(class_average_precision_11pt(scores, np.array([0, 0, -1, 0])))
    # the mean skips a class without positives
    m = multilabel_metrics(torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]]),
                           torch.tensor([[1, 0], [0, 0], [1, 0], [0, -1]]))
    assert m["map11"] == pytest.approx(100 * (6 + 5 * 2 / 3) / 11)


def test_with_score_names_the_protocol_metric() -> None:
    m = with_score({"linear/top1": 80.0, "linear/mean_per_class": 70.0}, "linear", "mean_per_class")
    assert m[SCORE_METRIC] == 70.0
    assert with_score({"knn/top1@k20": 5.0}, "knn", "top1", "@k20")[SCORE_METRIC] == 5.0
    with pytest.raises(KeyError, match="knn/map11@k20"):
        with_score({"knn/top1@k20": 5.0}, "knn", "map11", "@k20")


def multilabel_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 6) features and (N, 3) targets: class c present where feature c is large; a few
    targets -1 (ignored)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = (x[:, :3] + 0.7 * torch.randn(n, 3, generator=g, dtype=torch.float64) > 0.3).long()
    y[torch.rand(n, 3, generator=g) < 0.05] = -1
    return x, y


def test_binary_logistic_fits_equal_sklearn_per_class() -> None:
    x, y = multilabel_data(240, 0)
    for wd in (0.1, 10.0):
        w, b, _ = fit_binary_logistic(x, y, wd, max_iter=500, tol=1e-9)
        for c in range(3):
            keep = (y[:, c] >= 0).numpy()
            ref = LogisticRegression(C=1 / wd, tol=1e-10, max_iter=5000)
            ref.fit(x.numpy()[keep], y[:, c].numpy()[keep])
            np.testing.assert_allclose(w[c].numpy(), ref.coef_[0], atol=1e-5)
            assert b[c].item() == pytest.approx(ref.intercept_[0], abs=1e-5)


def test_multilabel_probe_selects_on_val_and_matches_the_sklearn_protocol() -> None:
    train, val, test = multilabel_data(200, 1), multilabel_data(100, 2), multilabel_data(150, 3)
    grid = [1e-3, 1e-1, 10.0, 1e3]
    res = linear_probe_multilabel(train, val, test, grid, max_iter=500, refit_max_iter=2000,
                                  tol=1e-9, standardize=True)
    assert res.wd in grid and len(res.val_curve) == 4
    assert res.metrics["map11"] > 70  # the classes are linearly readable
    # the same refit done by scikit-learn, one binary classifier per class (ssl-transfer)
    x_all = torch.cat([train[0], val[0]])
    y_all = torch.cat([train[1], val[1]]).numpy()
    xs, xte = standardized(x_all, x_all, test[0])
    aps = []
    for c in range(3):
        keep = y_all[:, c] >= 0
        ref = LogisticRegression(C=1 / res.wd, tol=1e-10, max_iter=5000)
        ref.fit(xs.numpy()[keep], y_all[keep, c])
        t = test[1][:, c].numpy()
        scores = ref.decision_function(xte.numpy())
        aps.append(sklearn_ap_11pt(t[t >= 0], scores[t >= 0]))
    assert res.metrics["map11"] == pytest.approx(100 * np.mean(aps), abs=1e-6)


def test_multilabel_knn_votes_by_hand() -> None:
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    targets = torch.tensor([[1, 0], [1, 1], [0, 1]])
    queries = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    m = knn_multilabel(bank, targets, queries, torch.tensor([[1, 0], [0, 1]]), ks=(1, 2),
                       temperature=0.1)
    assert set(m) == {"knn/map11@k1", "knn/map11@k2"}
    assert m["knn/map11@k1"] == pytest.approx(100.0)  # each query's nearest holds its class
    # k=100 clamps to the 3 train images and is named so
    assert "knn/map11@k3" in knn_multilabel(bank, targets, queries, targets[:2], ks=(100,))
