"""Our VOC metric family against detectron2's own ``PascalVOCDetectionEvaluator``.

The same predictions on 50 images of the BCCD test split (3 classes) go through
:func:`transfer.detection.evaluate.detection_metrics` and through detectron2's evaluator
(the evaluator behind MoCo's and detectron2's VOC numbers), run from the detectron2 sources in
``../shared/vendor/detectron2-src`` with year 2007 (11-point AP) and 2012 (area AP).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from detection_helpers import bccd_root, make_voc

from transfer.detection.evaluate import detection_metrics
from transfer.detection.structures import BoxReport, DetectionDataset
from transfer.detection.voc import find_voc_folder, read_voc, voc_records

CLASSES = ["RBC", "WBC", "Platelets"]


@pytest.fixture(scope="module")
def detectron2(detectron2_importable: None) -> ModuleType:
    """detectron2's VOC evaluation module (the vendored sources, or an installed detectron2)."""
    import detectron2.evaluation.pascal_voc_evaluation as voc_module

    return voc_module


def _predictions(dataset: DetectionDataset, seed: int = 0) -> list[dict]:
    """Jittered ground truth (some relabelled) plus false positives; scores distinct with three
    decimals and boxes on a 0.1 px grid, the precision detectron2 writes them with."""
    rng = np.random.default_rng(seed)
    preds = []
    n = sum(len(r.boxes) + 2 for r in dataset.records)
    assert n < 1000, "scores with three decimals would tie"
    scores = iter(rng.permutation(np.arange(1, n + 1)) / 1000)
    for i, rec in enumerate(dataset.records):
        boxes = rec.boxes + rng.normal(0, 6.0, rec.boxes.shape)
        labels = rec.labels.copy()
        flip = rng.random(len(labels)) < 0.1
        labels[flip] = rng.integers(1, len(CLASSES) + 1, int(flip.sum()))
        fp = rng.uniform(0, 400, (2, 2))
        boxes = np.concatenate([boxes, np.concatenate([fp, fp + rng.uniform(20, 80, (2, 2))], 1)])
        labels = np.concatenate([labels, rng.integers(1, len(CLASSES) + 1, 2)])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        preds.append({"index": i, "image_id": rec.image_id, "boxes": np.round(boxes, 1),
                      "scores": np.array([float(next(scores)) for _ in labels]),
                      "labels": labels})
    return preds


def _detectron2_metrics(voc_module: ModuleType, folder: Path, dataset: DetectionDataset,
                        preds: list[dict], year: int) -> dict[str, float]:
    import torch
    from detectron2.data import MetadataCatalog
    from detectron2.structures import Boxes, Instances

    name = f"simclr_bccd_test_{year}"
    if name not in MetadataCatalog.list():
        MetadataCatalog.get(name).set(dirname=str(folder), split="test", year=year,
                                      thing_classes=CLASSES)
    evaluator = voc_module.PascalVOCDetectionEvaluator(name)
    evaluator.reset()
    for rec, p in zip(dataset.records, preds, strict=True):
        inst = Instances((rec.height, rec.width))
        inst.pred_boxes = Boxes(torch.as_tensor(p["boxes"], dtype=torch.float32))
        inst.scores = torch.as_tensor(p["scores"], dtype=torch.float32)
        inst.pred_classes = torch.as_tensor(p["labels"] - 1)  # detectron2: 0-based classes
        evaluator.process([{"image_id": rec.file.stem}], [{"instances": inst}])
    return {k: float(v) for k, v in evaluator.evaluate()["bbox"].items()}


def test_voc_family_equals_detectron2s_evaluator(detectron2: ModuleType, shared_data: Path,
                                                data_cache: Path, tmp_path: Path) -> None:
    root = bccd_root(shared_data, data_cache)
    ids = (find_voc_folder(root) / "ImageSets" / "Main" / "test.txt").read_text().split()[:50]
    folder = make_voc(tmp_path / "BCCD50", root, {"test": ids})  # < 1000 boxes: untied scores
    records = voc_records(read_voc(folder, "test"), CLASSES, BoxReport())
    dataset = DetectionDataset("bccd-test50", records, CLASSES, [1, 2, 3])
    assert len(dataset) == 50
    preds = _predictions(dataset)
    ours = detection_metrics(dataset, preds)
    for year, family in ((2007, "voc07"), (2012, "voc")):
        theirs = _detectron2_metrics(detectron2, folder, dataset, preds, year)
        for key in ("AP", "AP50", "AP75"):
            assert ours[f"det/{family}_{key}"] == pytest.approx(theirs[key], abs=1e-6), (year, key)
    assert 10.0 < ours["det/voc07_AP"] < 90.0 and 10.0 < ours["det/voc_AP75"] < 90.0  # discriminating
