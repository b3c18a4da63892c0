"""Pascal VOC average precision (Everingham et al. 2010), the devkit's algorithm in NumPy.

For one class: detections of all images sorted by score (descending, stable); each is a true
positive if its best-IoU ground-truth box of the same image has IoU > 0.5 and is not yet
taken, a false positive otherwise; a match to an ``ignore`` (difficult) box counts as
neither. Recall = TP / (non-ignored GT), precision = TP / (TP + FP), cumulated.

* VOC07 11-point AP: mean over t in {0, 0.1, ..., 1} of max precision at recall >= t
  (the VOC2007 test protocol, used by MoCo's VOC numbers).
* Area AP (VOC2010+): area under the monotone precision envelope, summed where recall steps.

Boxes are continuous xyxy without the devkit's "+1" pixel convention (as COCO and
torchvision); a class with no non-ignored ground truth has no AP (NaN) and is left out of
the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes a (N, 4) and b (M, 4), xyxy -> (N, M)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP from cumulative recall/precision arrays (same length, recall non-decreasing)."""
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


def precision_recall(
    detections: Sequence[tuple[int, float, np.ndarray]],
    ground_truth: dict[int, tuple[np.ndarray, np.ndarray]],
    iou_thresh: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Cumulative (recall, precision) for one class and the number of positives.

    Args:
        detections: (image id, score, box (4,)) for this class over all images.
        ground_truth: image id -> (boxes (G, 4), ignore (G,) bool) of this class.
    """
    npos = int(sum((~ig).sum() for _, ig in ground_truth.values()))
    order = sorted(range(len(detections)), key=lambda i: -detections[i][1])
    taken = {img: np.zeros(len(b), bool) for img, (b, _) in ground_truth.items()}
    tp: list[float] = []
    fp: list[float] = []
    for i in order:
        img, _, box = detections[i]
        gt_boxes, ignore = ground_truth.get(img, (np.zeros((0, 4)), np.zeros(0, bool)))
        ious = box_iou(np.asarray(box, float)[None], gt_boxes)[0]
        best = int(ious.argmax()) if ious.size else -1
        if best >= 0 and ious[best] > iou_thresh:
            if ignore[best]:
                continue  # neither TP nor FP
            if not taken[img][best]:
                taken[img][best] = True
                tp.append(1.0)
                fp.append(0.0)
                continue
        tp.append(0.0)
        fp.append(1.0)
    tp_c, fp_c = np.cumsum(tp), np.cumsum(fp)
    recall = tp_c / max(npos, 1)
    precision = tp_c / np.maximum(tp_c + fp_c, np.finfo(np.float64).eps)
    return recall, precision, npos


def voc_class_ap(detections: Sequence[tuple[int, float, np.ndarray]],
                 ground_truth: dict[int, tuple[np.ndarray, np.ndarray]],
                 iou_thresh: float = 0.5) -> tuple[float, float]:
    """(VOC07 11-point AP, area AP) of one class; NaN when it has no positives."""
    recall, precision, npos = precision_recall(detections, ground_truth, iou_thresh)
    if npos == 0:
        return float("nan"), float("nan")
    return voc_ap(recall, precision, True), voc_ap(recall, precision, False)


def voc_metrics(
    gt: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
    predictions: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
    num_classes: int,
    iou_thresh: float = 0.5,
) -> dict[str, list[float] | float]:
    """Per-class and mean VOC APs (fractions in 0-1).

    Args:
        gt: per image (image id, boxes (G, 4), labels (G,) in 1..K, ignore (G,)).
        predictions: per image (image id, boxes (D, 4), scores (D,), labels (D,)).

    Returns:
        ``{"voc07": [AP per class], "area": [...], "voc07_mean": m, "area_mean": m}``.
    """
    voc07, area = [], []
    for k in range(1, num_classes + 1):
        truth = {img: (b[lab == k], ig[lab == k]) for img, b, lab, ig in gt}
        dets = [(img, float(s), box) for img, boxes, scores, labels in predictions
                for box, s, lab in zip(boxes, scores, labels, strict=True) if lab == k]
        a07, a10 = voc_class_ap(dets, truth, iou_thresh)
        voc07.append(a07)
        area.append(a10)

    def mean(values: list[float]) -> float:
        valid = [v for v in values if not np.isnan(v)]
        return float(np.mean(valid)) if valid else float("nan")

    return {"voc07": voc07, "area": area, "voc07_mean": mean(voc07), "area_mean": mean(area)}
