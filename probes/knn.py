"""Weighted k-nearest-neighbour classification on frozen features.

The protocol of Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric Instance
Discrimination") as used by DINO (Caron et al. 2021): features are L2-normalised, the k train
images most cosine-similar to a test image vote for their class with weight exp(sim / T), and
the class with the largest total weight wins (T = 0.07 in both papers; 0.1 is our default).

Test images are processed in chunks of ``batch_size`` rows, so any test-set size works; k larger
than the train set is clamped to the train set size, and the metric is named with the k that was
used (``knn/top1@k1347`` when 5000 was asked of 1,347 train images).

Top-5 counts a test image when its class is among the five best-scored classes **that received
votes**: with k neighbours at most k classes are voted for, so top-5 at k < 5 is top-k, as in
DINO's ``correct[:, :min(5, k)]`` (``eval_knn.py``) and lightly's ``knn_predict``; a class that
no neighbour voted for is never a hit, however few classes there are.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pretrain.knn import knn_scores, nearest
from probes.metrics import mean_per_class_accuracy, multilabel_metrics

DEFAULT_KS = (10, 20, 100, 200)


def knn_classify(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.1,
    num_classes: int | None = None,
    batch_size: int = 1024,
) -> dict[str, float]:
    """k-NN top-1 and top-5 accuracy (percent) for every k: ``{"knn/top1@k20": ..., ...}``.

    Each k is clamped to the train set size and names its metrics (see the module docstring);
    ks that clamp to the same value are computed once. Ties between classes go to the lowest
    class index (``argmax`` order).
    """
    if test_feats.shape[0] == 0:
        raise ValueError("k-NN needs at least one test image")
    num_classes = num_classes or int(max(train_labels.max(), test_labels.max())) + 1
    effective = sorted({min(k, train_feats.shape[0]) for k in ks})
    scores = knn_scores(
        train_feats, train_labels, test_feats, effective, temperature, num_classes, batch_size
    )
    metrics: dict[str, float] = {}
    for k, s in scores.items():
        target = test_labels.to(s.device)
        best, top = s.topk(min(5, num_classes), dim=1)
        voted_hit = (top == target[:, None]) & (best > 0)  # a class nobody voted for is no hit
        correct = s.argmax(1) == target
        metrics[f"knn/top1@k{k}"] = 100.0 * correct.float().mean().item()
        metrics[f"knn/top5@k{k}"] = 100.0 * voted_hit.any(1).float().mean().item()
        metrics[f"knn/mean_per_class@k{k}"] = mean_per_class_accuracy(correct, target)
    return metrics


@torch.no_grad()
def knn_multilabel(
    train_feats: torch.Tensor,
    train_targets: torch.Tensor,
    test_feats: torch.Tensor,
    test_targets: torch.Tensor,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.1,
    batch_size: int = 1024,
) -> dict[str, float]:
    """k-NN of a multi-label dataset (VOC2007): ``{"knn/map11@k20": percent, ...}``.

    The score of class c for a test image is the vote of its k nearest train images (cosine,
    weight exp(cos / T), as above) that hold c, and the classes are ranked per class by it
    (11-point mAP, :func:`probes.metrics.multilabel_metrics`). targets: (N, C) and (M, C) in
    {1, 0, -1}; a train image votes for c only where its target is 1.
    """
    if train_feats.shape[0] == 0 or test_feats.shape[0] == 0:
        raise ValueError("k-NN needs train and test images")
    bank = F.normalize(train_feats.float(), dim=1)
    present = (train_targets.to(bank.device) == 1).float()  # (N, C)
    effective = sorted({min(k, bank.shape[0]) for k in ks})
    scores = {k: torch.empty(test_feats.shape[0], present.shape[1]) for k in effective}
    for start, weight, idx in nearest(bank, test_feats, effective[-1], temperature, batch_size):
        for k in effective:
            votes = (weight[:, :k, None] * present[idx[:, :k]]).sum(1)  # (B, C)
            scores[k][start : start + idx.shape[0]] = votes.cpu()
    return {f"knn/map11@k{k}": multilabel_metrics(s, test_targets)["map11"]
            for k, s in scores.items()}
