"""Inference over a test set and the metrics reported as ``det/...`` (in percent, 0-100).

Two families, named for what they are (the same letters mean different numbers in each):

* COCO (pycocotools, 101-point interpolation, IoU 0.50:0.05:0.95, max 100 detections):
  ``det/coco_AP``, ``det/coco_AP50``, ``det/coco_AP75``, ``det/coco_APs|m|l``;
* VOC (detectron2's ``PascalVOCDetectionEvaluator``, :mod:`.voc_eval`): ``det/voc07_AP`` (mean
  over IoU 0.50:0.05:0.95 of the 11-point VOC2007 AP), ``det/voc07_AP50``, ``det/voc07_AP75``,
  and the same with the area AP of VOC2010+: ``det/voc_AP``, ``det/voc_AP50``, ``det/voc_AP75``;
  per class at IoU 0.5: ``det/voc07_AP50/<class>``, ``det/voc_AP50/<class>``.

:data:`HEADLINE` names the family a benchmark reports: VOC07 for VOC data (MoCo Sec. 4.2 and
detectron2 report VOC2007 test with the 11-point metric), COCO for COCO data. NaN marks a
metric that no ground truth defines (e.g. APs without small objects).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pretrain.errors import UserError
from transfer.detection import distributed as dist
from transfer.detection.coco_eval import coco_metrics
from transfer.detection.structures import DetectionDataset, collate, one_line
from transfer.detection.voc_eval import voc_metrics


@torch.no_grad()
def predict(model: nn.Module, dataset: DetectionDataset, device: torch.device, batch_size: int = 4,
            num_workers: int = 0, bf16: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    """Detections for every image (gathered over ranks), sorted by dataset index.

    Returns:
        per image ``{"index", "image_id", "boxes" (D, 4), "scores" (D,), "labels" (D,)}``
        as NumPy arrays, boxes in original-image pixels.
    """
    model.eval()
    indices = list(range(dist.rank(), len(dataset), dist.world_size()))
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size,
                        collate_fn=collate, num_workers=num_workers)
    out = []
    try:
        for images, targets in tqdm(loader, desc="evaluate", unit="batch",
                                    disable=not (progress and dist.is_main()), dynamic_ncols=True):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                results = model([im.to(device) for im in images])
            for res, t in zip(results, targets, strict=True):
                out.append({
                    "index": int(t["index"]),
                    "image_id": int(t["image_id"]),
                    "boxes": res["boxes"].float().cpu().numpy(),
                    "scores": res["scores"].float().cpu().numpy(),
                    "labels": res["labels"].cpu().numpy(),
                })
    except UserError as exc:
        raise one_line(exc) from None
    return sorted(dist.gather_objects(out), key=lambda p: p["index"])


HEADLINE = {
    "voc": ("det/voc07_AP", "det/voc07_AP50", "det/voc07_AP75"),
    "coco": ("det/coco_AP", "det/coco_AP50", "det/coco_AP75"),
}


def _percent(x: float) -> float:
    return 100.0 * x if np.isfinite(x) else float("nan")


def detection_metrics(dataset: DetectionDataset, predictions: list[dict[str, Any]]) -> dict[str, float]:
    """COCO and VOC metrics of ``predictions`` against ``dataset``'s ground truth (percent)."""
    records = dataset.records
    to_cat = np.asarray(dataset.category_ids, np.int64)
    images = [(r.image_id, r.width, r.height) for r in records]
    gt_coco = [(r.image_id, r.boxes, to_cat[r.labels - 1], r.ignore, r.areas) for r in records]
    pred_coco = [(p["image_id"], p["boxes"], p["scores"], to_cat[p["labels"] - 1])
                 for p in predictions]
    categories = list(zip(dataset.category_ids, dataset.classes, strict=True))
    metrics = {f"det/coco_{k}": _percent(v) for k, v in coco_metrics(images, gt_coco, pred_coco,
                                                                      categories).items()}
    voc = voc_metrics(
        [(r.image_id, r.boxes, r.labels, r.ignore) for r in records],
        [(p["image_id"], p["boxes"], p["scores"], p["labels"]) for p in predictions],
        len(dataset.classes),
    )
    for family, name in (("voc07", "voc07"), ("area", "voc")):
        result = voc[family]
        metrics[f"det/{name}_AP"] = _percent(result.ap)
        metrics[f"det/{name}_AP50"] = _percent(result.mean_at(0.5))
        metrics[f"det/{name}_AP75"] = _percent(result.mean_at(0.75))
    for k, cls in enumerate(dataset.classes):
        metrics[f"det/voc07_AP50/{cls}"] = _percent(voc["voc07"].per_class[0.5][k])
        metrics[f"det/voc_AP50/{cls}"] = _percent(voc["area"].per_class[0.5][k])
    return metrics
