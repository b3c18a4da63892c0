"""COCO loading on det_coco_mini: category id mapping, crowd boxes, images without boxes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from detection_helpers import coco_root, single_thread  # noqa: F401

from transfer.detection.config import DataConfig, DatasetSpec
from transfer.detection.datasets import load_detection_data
from transfer.detection.structures import DetectionDataset


@pytest.fixture(scope="module")
def coco(shared_data: Path, data_cache: Path) -> tuple[DetectionDataset, DetectionDataset, Path]:
    root = coco_root(shared_data, data_cache)
    cfg = DataConfig(train=[DatasetSpec(format="coco", root=str(root), split="train2017")],
                     test=DatasetSpec(format="coco", root=str(root), split="val2017"),
                     cache_dir=str(data_cache))
    train, test, _ = load_detection_data(cfg)
    return train, test, root / "coco_mini" / "annotations"


def _json(folder: Path, split: str) -> dict:
    return json.loads((folder / f"instances_{split}.json").read_text())


def test_category_ids_map_to_contiguous_labels_and_back(coco) -> None:
    train, test, ann_dir = coco
    raw = _json(ann_dir, "train2017")
    ids = sorted(c["id"] for c in raw["categories"])
    assert len(train.classes) == 80 and train.category_ids == ids
    assert ids[-1] == 90  # COCO ids are not contiguous
    for label in range(1, 81):
        assert train.category_to_label(train.label_to_category(label)) == label
    assert test.category_ids == train.category_ids
    # every kept annotation's label maps back to its own category id
    by_image: dict[int, list[int]] = {}
    for a in raw["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["category_id"])
    for rec in train.records:
        got = sorted(train.label_to_category(int(k)) for k in rec.labels)
        assert got == sorted(by_image.get(rec.image_id, []))


def test_crowd_boxes_are_kept_for_evaluation_but_not_trained_on(coco) -> None:
    train, _, ann_dir = coco
    raw = _json(ann_dir, "train2017")
    crowd = [a for a in raw["annotations"] if a["iscrowd"]]
    assert len(crowd) == 10
    assert sum(int(r.ignore.sum()) for r in train.records) == 10
    rec = next(r for r in train.records if r.image_id == crowd[0]["image_id"])
    boxes, labels = rec.training_target()
    assert len(boxes) == len(rec.boxes) - int(rec.ignore.sum())
    _, target = train[train.records.index(rec)]
    assert len(target["boxes"]) == len(boxes) and len(target["labels"]) == len(labels)
    x, y, w, h = crowd[0]["bbox"]
    crowd_box = np.array([x, y, x + w, y + h])
    assert any(np.abs(b - crowd_box).max() < 1e-3 for b in rec.boxes)
    assert not any(np.abs(b - crowd_box).max() < 1e-3 for b in boxes)


def test_images_without_boxes_are_kept_with_areas(coco) -> None:
    train, test, ann_dir = coco
    assert len(train) == 128 and len(test) == 79
    empty = [r for r in train.records if len(r.labels) == 0]
    assert len(empty) == 2
    image, target = train[train.records.index(empty[0])]
    assert image.shape[0] == 3 and target["boxes"].shape == (0, 4)
    raw = {a["id"]: a["area"] for a in _json(ann_dir, "val2017")["annotations"]}
    assert sum(float(r.areas.sum()) for r in test.records) == pytest.approx(sum(raw.values()), rel=1e-5)
