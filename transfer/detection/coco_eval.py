"""COCO box AP (Lin et al. 2014) with pycocotools' COCOeval, from in-memory records.

AP is the mean over IoU 0.50:0.05:0.95 and 101 recall points of interpolated precision, at
most 100 detections per image; AP50/AP75 at one IoU; APs/APm/APl for ground-truth areas
< 32^2, 32^2-96^2, > 96^2 pixels (COCO's ``area`` field, the segment area for COCO data).
Crowd boxes (``ignore``) are passed as ``iscrowd=1``: COCOeval lets detections match them
without counting them as misses or false positives. For VOC data the same rule covers
``difficult`` boxes. Categories keep their dataset ids (non-contiguous for COCO).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # order of COCOeval.stats[:6]


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def coco_metrics(
    images: Sequence[tuple[int, int, int]],
    gt: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    predictions: Sequence[tuple[int, np.ndarray, np.ndarray, np.ndarray]],
    categories: Sequence[tuple[int, str]],
) -> dict[str, float]:
    """COCO box metrics as fractions in 0-1 (NaN where no ground truth defines them).

    Args:
        images: (image id, width, height) of every evaluated image.
        gt: per image (image id, boxes (G, 4) xyxy, category ids (G,), ignore (G,), areas (G,)).
        predictions: per image (image id, boxes (D, 4) xyxy, scores (D,), category ids (D,)).
        categories: (category id, name).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    image_list = [{"id": int(i), "width": int(w), "height": int(h)} for i, w, h in images]
    cats = [{"id": int(c), "name": n} for c, n in categories]
    anns: list[dict[str, Any]] = []
    for img, boxes, cids, ignore, areas in gt:
        for box, cid, ig, area in zip(boxes, cids, ignore, areas, strict=True):
            anns.append({"id": len(anns) + 1, "image_id": int(img), "category_id": int(cid),
                         "bbox": _xywh(box), "area": float(area), "iscrowd": int(bool(ig))})
    dets: list[dict[str, Any]] = []
    for img, boxes, scores, cids in predictions:
        for box, score, cid in zip(boxes, scores, cids, strict=True):
            xywh = _xywh(box)
            dets.append({"id": len(dets) + 1, "image_id": int(img), "category_id": int(cid),
                         "bbox": xywh, "score": float(score), "area": xywh[2] * xywh[3],
                         "iscrowd": 0})
    if not any(not a["iscrowd"] for a in anns):
        return {k: float("nan") for k in KEYS}
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = {"images": image_list, "annotations": anns, "categories": cats}
        truth.createIndex()
        result = COCO()
        result.dataset = {"images": image_list, "annotations": dets, "categories": cats}
        result.createIndex()
        evaluator = COCOeval(truth, result, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats[: len(KEYS)]
    return {k: (float(v) if v >= 0 else float("nan")) for k, v in zip(KEYS, stats, strict=True)}
