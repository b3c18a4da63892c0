"""COCO and VOC AP on hand-made cases whose values are worked out by hand below."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from probes.metrics import voc_ap
from transfer.detection.coco_eval import coco_metrics
from transfer.detection.evaluate import HEADLINE, detection_metrics
from transfer.detection.structures import DetectionDataset, ImageRecord
from transfer.detection.voc_eval import box_iou, voc_metrics

A = np.array([10.0, 10.0, 60.0, 60.0])  # 50x50 = 2500 px: a COCO "medium" object
B = np.array([100.0, 100.0, 150.0, 150.0])
FP = np.array([200.0, 10.0, 250.0, 60.0])  # overlaps nothing


def _gt(ignore: tuple[bool, bool] = (False, False)):
    boxes = np.stack([A, B])
    return [(1, boxes, np.array([1, 1]), np.array(ignore), np.array([2500.0, 2500.0]))]


def _dets(boxes: list[np.ndarray], scores: list[float]):
    return [(1, np.stack(boxes), np.array(scores), np.ones(len(boxes), np.int64))]


def _voc(gt, dets):
    """Per-class APs at IoU 0.5: {"voc07": [...], "area": [...]}."""
    voc = voc_metrics([g[:4] for g in gt], dets, num_classes=1)
    return {name: result.per_class[0.5] for name, result in voc.items()}


def _coco(gt, dets):
    return coco_metrics([(1, 300, 200)], gt, dets, [(1, "cell")])


def test_perfect_detections_score_one() -> None:
    gt, dets = _gt(), _dets([A, B], [0.9, 0.8])
    voc = _voc(gt, dets)
    assert voc["voc07"] == [1.0] and voc["area"] == [1.0]
    coco = _coco(gt, dets)
    assert coco["AP"] == pytest.approx(1.0) and coco["AP50"] == pytest.approx(1.0)
    assert coco["APm"] == pytest.approx(1.0)
    assert math.isnan(coco["APs"]) and math.isnan(coco["APl"])  # no small or large objects


def test_one_false_positive_between_two_hits() -> None:
    """Ranked A (TP), FP, B (TP): recall .5, .5, 1; precision 1, 1/2, 2/3.

    VOC07 11-point: t = 0..0.5 (6 points) -> 1; t = 0.6..1 (5 points) -> 2/3; (6 + 10/3) / 11.
    Area: recall 0 -> .5 at precision 1, .5 -> 1 at 2/3: 0.5 + 1/3 = 5/6.
    COCO: 101 recall points; r <= 0.50 (51 points) -> 1, r > 0.5 (50 points) -> 2/3, at every
    IoU threshold (the hits are exact): (51 + 100/3) / 101 = 253/303.
    """
    gt, dets = _gt(), _dets([A, FP, B], [0.9, 0.8, 0.7])
    voc = _voc(gt, dets)
    assert voc["voc07"][0] == pytest.approx(28 / 33)
    assert voc["area"][0] == pytest.approx(5 / 6)
    coco = _coco(gt, dets)
    for key in ("AP", "AP50", "AP75", "APm"):
        assert coco[key] == pytest.approx(253 / 303)


def test_a_duplicate_is_a_false_positive_and_a_miss_lowers_recall() -> None:
    # A twice (second is a duplicate -> FP), B missed: recall .5, .5; precision 1, .5.
    voc = _voc(_gt(), _dets([A, A + 1.0], [0.9, 0.8]))
    assert voc["voc07"][0] == pytest.approx(6 / 11)  # t <= .5 -> 1, t > .5 -> 0
    assert voc["area"][0] == pytest.approx(0.5)


def test_ignored_boxes_neither_miss_nor_punish() -> None:
    """B is difficult/crowd: a detection on it is not a FP, missing it is not a miss."""
    gt = _gt(ignore=(False, True))
    for dets in (_dets([A, B], [0.9, 0.95]), _dets([A], [0.9])):
        voc = _voc(gt, dets)
        assert voc["voc07"] == [1.0] and voc["area"] == [1.0]
        assert _coco(gt, dets)["AP"] == pytest.approx(1.0)


def test_no_detections_and_no_positives() -> None:
    voc = voc_metrics([(1, np.stack([A]), np.array([1]), np.array([False]))], [], num_classes=2)
    at50 = voc["voc07"].per_class[0.5]
    assert at50[0] == 0.0 and math.isnan(at50[1])  # class 2 has no positives
    assert voc["voc07"].mean_at(0.5) == 0.0  # NaN classes are left out of the mean
    coco = _coco(_gt(), [])
    assert coco["AP"] == 0.0


def test_voc_ap_and_iou_building_blocks() -> None:
    assert voc_ap(np.array([1.0]), np.array([1.0]), True) == 1.0
    assert box_iou(A[None], (A + np.array([25.0, 0, 25.0, 0]))[None])[0, 0] == pytest.approx(1 / 3)


def test_detection_metrics_maps_labels_to_category_ids_and_percent() -> None:
    """Labels 1..K -> dataset ids (here 7 and 42) for COCOeval; metrics in percent."""
    rec = ImageRecord(5, Path("x.jpg"), 300, 200, boxes=np.stack([A, B]).astype(np.float32),
                      labels=np.array([1, 2]), ignore=np.array([False, False]),
                      areas=np.array([2500.0, 2500.0], np.float32))
    ds = DetectionDataset("hand", [rec], ["cat", "dog"], [7, 42])
    preds = [{"index": 0, "image_id": 5, "boxes": np.stack([A, B, B]), "scores": np.array([.9, .8, .7]),
              "labels": np.array([1, 2, 1])}]  # the third is B labelled "cat": a FP for cat
    m = detection_metrics(ds, preds)
    assert m["det/voc07_AP50/dog"] == pytest.approx(100.0)
    assert m["det/voc07_AP50/cat"] == pytest.approx(100.0)  # the FP ranks after the hit
    assert m["det/coco_AP50"] == pytest.approx(100.0)
    assert m["det/voc_AP50"] == pytest.approx(100.0)
    swapped = [{**preds[0], "boxes": np.stack([A, B]), "scores": np.array([.9, .8]),
                "labels": np.array([2, 1])}]
    assert detection_metrics(ds, swapped)["det/coco_AP50"] == pytest.approx(0.0)


def test_the_two_families_differ_on_one_input_and_say_which_is_which() -> None:
    """A box shifted so that its IoU is 0.6 (a hit up to IoU 0.55, a miss above) and one exact:
    VOC07 11-point AP at IoU .5:.05:.95 differs from COCO's 101-point AP on the same boxes."""
    shifted = A + np.array([10.0, 0.0, 10.0, 0.0])  # IoU with A: 40*50 / (2*2500 - 2000) = 2/3
    rec = ImageRecord(1, Path("x.jpg"), 300, 200, boxes=np.stack([A, B]).astype(np.float32),
                      labels=np.array([1, 1]), ignore=np.array([False, False]),
                      areas=np.array([2500.0, 2500.0], np.float32))
    ds = DetectionDataset("two", [rec], ["cell"], [1])
    preds = [{"index": 0, "image_id": 1, "boxes": np.stack([shifted, B]),
              "scores": np.array([0.9, 0.8]), "labels": np.array([1, 1])}]
    m = detection_metrics(ds, preds)
    # IoU 2/3 is a hit at thresholds .50-.65 (4 of 10): there both boxes count (AP 1), above
    # only B: recall .5 at precision .5 (the shifted box ranks first) -> 11-point 6/11 * .5.
    low, high = 1.0, 6 / 11 * 0.5
    assert m["det/voc07_AP50"] == pytest.approx(100.0)
    assert m["det/voc07_AP75"] == pytest.approx(100.0 * high)
    assert m["det/voc07_AP"] == pytest.approx(100.0 * (4 * low + 6 * high) / 10)
    coco_high = 51 / 101 * 0.5  # COCO: recall <= .5 at precision .5, 51 of 101 points
    assert m["det/coco_AP"] == pytest.approx(100.0 * (4 * 1.0 + 6 * coco_high) / 10, abs=0.2)
    assert abs(m["det/coco_AP"] - m["det/voc07_AP"]) > 1.0  # not the same number
    assert set(HEADLINE) == {"voc", "coco"} and all(k in m for keys in HEADLINE.values() for k in keys)
