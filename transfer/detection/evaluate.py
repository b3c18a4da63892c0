"""Inference over a test set and the metrics reported as ``det/...`` (in percent, 0-100).

Keys: ``det/AP``, ``det/AP50``, ``det/AP75``, ``det/APs``, ``det/APm``, ``det/APl`` (COCO,
pycocotools); ``det/VOC07_AP50`` (11-point) and ``det/VOC_AP50`` (area, VOC2010+), each
also per class as ``det/VOC07_AP50/<class>`` and ``det/VOC_AP50/<class>``. NaN marks a
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
    metrics = {f"det/{k}": _percent(v) for k, v in coco_metrics(images, gt_coco, pred_coco,
                                                                 categories).items()}
    voc = voc_metrics(
        [(r.image_id, r.boxes, r.labels, r.ignore) for r in records],
        [(p["image_id"], p["boxes"], p["scores"], p["labels"]) for p in predictions],
        len(dataset.classes),
    )
    metrics["det/VOC07_AP50"] = _percent(voc["voc07_mean"])  # type: ignore[arg-type]
    metrics["det/VOC_AP50"] = _percent(voc["area_mean"])  # type: ignore[arg-type]
    per_class = zip(dataset.classes, voc["voc07"], voc["area"], strict=True)  # type: ignore[arg-type]
    for name, a07, a10 in per_class:
        metrics[f"det/VOC07_AP50/{name}"] = _percent(a07)
        metrics[f"det/VOC_AP50/{name}"] = _percent(a10)
    return metrics
