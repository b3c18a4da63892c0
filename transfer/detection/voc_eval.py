"""Pascal VOC average precision (Everingham et al. 2010), the devkit's algorithm in NumPy.

For one class: detections of all images sorted by score (descending, stable); each is a true
positive if its best-IoU ground-truth box of the same image has IoU > 0.5 and is not yet
taken, a false positive otherwise; a match to an ``ignore`` (difficult) box counts as
neither. Recall = TP / (non-ignored GT), precision = TP / (TP + FP), cumulated.

* VOC07 11-point AP: mean over t in {0, 0.1, ..., 1} of max precision at recall >= t
  (the VOC2007 test protocol).
* Area AP (VOC2010+): area under the monotone precision envelope, summed where recall steps.

Each is computed at the IoU thresholds 0.50, 0.55, ..., 0.95, as detectron2's
``PascalVOCDetectionEvaluator`` does (the evaluator behind MoCo's and detectron2's VOC numbers):
its ``AP`` is the mean over those thresholds of the class-mean AP, ``AP50`` and ``AP75`` the
class means at 0.5 and 0.75. Boxes are continuous 0-based pixel-edge xyxy; with VOC's 1-based
inclusive corners converted as (x1 - 1, y1 - 1, x2, y2) this is exactly the devkit's "+1"
arithmetic on the file's numbers (which detectron2 applies after adding 1 to the predictions'
x1, y1). A class with no non-ignored ground truth has no AP (NaN) and is left out of the mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from probes.metrics import voc_ap


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


IOU_THRESHOLDS = tuple(t / 100 for t in range(50, 100, 5))  # detectron2's VOC evaluator


@dataclass(frozen=True)
class VocResult:
    """APs (fractions in 0-1) of one metric (VOC07 11-point or area) at every IoU threshold.

    Attributes:
        per_class: IoU threshold -> AP of each class (NaN for a class without positives).
    """

    per_class: dict[float, list[float]]

    def mean_at(self, iou: float) -> float:
        """Class-mean AP at ``iou`` (classes without positives left out)."""
        valid = [v for v in self.per_class[iou] if not np.isnan(v)]
        return float(np.mean(valid)) if valid else float("nan")

    @property
    def ap(self) -> float:
        """Mean over the IoU thresholds of the class-mean AP (detectron2's VOC ``AP``)."""
        means = [self.mean_at(t) for t in self.per_class]
        return float(np.mean(means)) if means else float("nan")


def voc_metrics(
    gt: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
    predictions: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
    num_classes: int,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict[str, VocResult]:
    """VOC07 11-point and area APs per class at every IoU threshold.

    Args:
        gt: per image (image id, boxes (G, 4), labels (G,) in 1..K, ignore (G,)).
        predictions: per image (image id, boxes (D, 4), scores (D,), labels (D,)).

    Returns:
        ``{"voc07": VocResult, "area": VocResult}``.
    """
    voc07: dict[float, list[float]] = {t: [] for t in iou_thresholds}
    area: dict[float, list[float]] = {t: [] for t in iou_thresholds}
    for k in range(1, num_classes + 1):
        truth = {img: (b[lab == k], ig[lab == k]) for img, b, lab, ig in gt}
        dets = [(img, float(s), box) for img, boxes, scores, labels in predictions
                for box, s, lab in zip(boxes, scores, labels, strict=True) if lab == k]
        for t in iou_thresholds:
            a07, a10 = voc_class_ap(dets, truth, t)
            voc07[t].append(a07)
            area[t].append(a10)
    return {"voc07": VocResult(voc07), "area": VocResult(area)}
