"""Classification metrics of the transfer protocol, and its headline score.

Kornblith et al. 2019 (Sec. 3, Table A1), followed by SimCLR's transfer tables (App. B.8,
Table 8) and ssl-transfer (Ericsson et al. 2021), report one number per dataset:

* ``top1``: top-1 accuracy (Food-101, CIFAR, Birdsnap, SUN397, Cars, DTD);
* ``mean_per_class``: the mean over classes of per-class top-1 accuracy (FGVC Aircraft,
  Oxford-IIIT Pets, Caltech-101, Oxford Flowers), i.e. scikit-learn's
  ``balanced_accuracy_score``;
* ``map11``: VOC2007's 11-point interpolated mean average precision over its 20 classes
  (multi-label), the VOC devkit's ``VOCevalcls`` with images whose class is only "difficult"
  left out of that class's AP. (ssl-transfer interpolates scikit-learn's precision-recall
  curve including its artificial (recall 0, precision 1) end point, which scores t = 0 as 1
  even when the top-ranked image is a negative; the devkit, and this module, do not.)

Which one a dataset uses is its :attr:`pretrain.data.DatasetInfo.metric`; every evaluator that
classifies (linear probe, k-NN, fine-tuning) writes it as ``transfer/score`` beside its own
metrics (:func:`with_score`), so one table holds all 12 datasets.
"""

from __future__ import annotations

import numpy as np
import torch

SCORE_METRIC = "transfer/score"


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1, top-5 (top-K when K < 5) and mean per-class accuracy, in percent.

    logits: (N, K); labels: (N,). Mean per-class accuracy averages over the classes present
    in ``labels`` (Ericsson et al. report it for Caltech101, Flowers, Pets, Aircraft).
    """
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    correct1 = topk[:, 0] == labels
    correct5 = (topk == labels[:, None]).any(dim=1)
    return {
        "top1": 100.0 * correct1.float().mean().item(),
        "top5": 100.0 * correct5.float().mean().item(),
        "mean_per_class": mean_per_class_accuracy(correct1, labels),
    }


def mean_per_class_accuracy(correct: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent: the mean over the classes in ``labels`` (N,) of the share of ``correct`` (N,)
    bool predictions (``balanced_accuracy_score`` times 100)."""
    per_class = [correct[labels == c].float().mean() for c in labels.unique()]
    return 100.0 * torch.stack(per_class).mean().item()


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP from cumulative recall/precision arrays (same length, recall non-decreasing).

    ``use_07_metric``: VOC2007's 11-point AP, the mean over t in {0, 0.1, ..., 1} of the
    largest precision at recall >= t; otherwise the area under the monotone precision envelope
    (VOC2010 and later).
    """
    if use_07_metric:
        points = []
        for t in np.linspace(0.0, 1.0, 11):
            above = precision[recall >= t]
            points.append(above.max() if above.size else 0.0)
        return float(np.mean(points))
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # precision envelope
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def class_average_precision_11pt(scores: np.ndarray, target: np.ndarray) -> float:
    """VOC07 11-point AP of one class. scores: (N,); target: (N,) of 1 (present), 0 (absent),
    -1 (ignored: the class is only "difficult" in that image). NaN without positives.

    Images are ranked by score (descending; ties in index order, as a stable sort); recall is
    TP / positives and precision TP / rank at each rank, then :func:`voc_ap`.
    """
    keep = target >= 0
    s, t = scores[keep], target[keep]
    positives = int((t == 1).sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    tp = np.cumsum(t[order] == 1)
    ranks = np.arange(1, len(order) + 1)
    return voc_ap(tp / positives, tp / ranks, use_07_metric=True)


def multilabel_metrics(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """``{"map11": percent}``: the mean over classes with positives of the 11-point AP.

    scores: (N, C) any real scores (logits, k-NN votes); targets: (N, C) in {1, 0, -1}.
    """
    s, t = scores.detach().double().cpu().numpy(), targets.cpu().numpy()
    aps = [class_average_precision_11pt(s[:, c], t[:, c]) for c in range(t.shape[1])]
    valid = [a for a in aps if not np.isnan(a)]
    return {"map11": 100.0 * float(np.mean(valid)) if valid else float("nan")}


def with_score(metrics: dict[str, float], evaluator: str, headline: str,
               suffix: str = "") -> dict[str, float]:
    """``metrics`` plus ``transfer/score``: the value of ``<evaluator>/<headline><suffix>``
    (``headline`` is the dataset's :attr:`~pretrain.data.DatasetInfo.metric`)."""
    key = f"{evaluator}/{headline}{suffix}"
    if key not in metrics:
        raise KeyError(f"{key} is not among the metrics {sorted(metrics)}")
    return {**metrics, SCORE_METRIC: metrics[key]}
