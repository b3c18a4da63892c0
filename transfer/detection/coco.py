"""COCO JSON annotations (Lin et al. 2014) through pycocotools.

COCO category ids are not contiguous (1..90 for 80 classes). Categories sorted by id become
labels 1..K; ``category_ids[k - 1]`` maps a label back to its id for evaluation. Crowd
annotations (``iscrowd=1``) are left out of training targets and kept for evaluation, where
COCOeval matches them as "ignore" regions. Images without annotations are kept (they supply
negatives). Boxes ``[x, y, w, h]`` with ``w <= 0`` or ``h <= 0``, or outside the image, are
dropped with a counted warning; a malformed ``bbox`` is an error naming the annotation id.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.errors import DataError
from transfer.detection.structures import (
    BoxReport,
    ImageRecord,
    clip_counted,
    empty_arrays,
    invalid_box_reason,
)


def find_coco_files(base: Path, split: str, images: str = "",
                    annotations: str = "") -> tuple[Path, Path]:
    """(annotation JSON, image folder) for ``split`` under ``base`` (COCO or YOLO-style layouts)."""
    if annotations:
        ann = base / annotations
    else:
        name = f"instances_{split}.json"
        found = sorted(base.glob(f"annotations/{name}")) + sorted(base.glob(f"*/annotations/{name}"))
        found += sorted(base.glob(f"*/*/annotations/{name}"))
        if not found:
            raise DataError(f"no annotations/{name} under {base}; set annotations to the JSON path")
        ann = found[0]
    if not ann.is_file():
        raise DataError(f"annotation file not found: {ann}")
    if images:
        folder = base / images
    else:
        top = ann.parent.parent
        candidates = [top / "images" / split, top / split]
        folder = next((c for c in candidates if c.is_dir()), candidates[0])
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}; set images to the folder of {split}")
    return ann, folder


def read_coco(annotation_file: Path) -> Any:
    """A pycocotools ``COCO`` index of the file (its chatter on stdout is swallowed)."""
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return COCO(str(annotation_file))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"cannot read COCO annotations {annotation_file}: {exc!r}") from None


def coco_categories(coco: Any) -> tuple[list[str], list[int]]:
    """Class names and category ids, sorted by id (label k <-> ids[k - 1])."""
    cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
    if not cats:
        raise DataError("COCO annotations list no categories")
    return [c["name"] for c in cats], [int(c["id"]) for c in cats]


def _xyxy(ann: dict, source: Path) -> tuple[float, float, float, float]:
    bbox = ann.get("bbox")
    try:
        x, y, w, h = (float(v) for v in bbox)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise DataError(f"{source}: bad box in annotation {ann.get('id')}: bbox={bbox!r}, "
                        "expected [x, y, width, height]") from None
    return x, y, x + w, y + h


def coco_records(coco: Any, images_dir: Path, category_ids: list[int], report: BoxReport,
                 source: Path) -> list[ImageRecord]:
    """One record per image (sorted by id); labels via ``category_ids``."""
    label_of = {cid: k + 1 for k, cid in enumerate(category_ids)}
    records = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        file = images_dir / info["file_name"]
        if not file.is_file():
            raise DataError(f"image file not found: {file} (image id {image_id} in {source})")
        width, height = int(info["width"]), int(info["height"])
        boxes, labels, ignore, areas = [], [], [], []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            box = _xyxy(ann, source)
            reason = invalid_box_reason(box, width, height)
            if reason:
                report.add(reason, f"{file.name} (annotation {ann.get('id')})")
                continue
            if ann["category_id"] not in label_of:
                raise DataError(f"{source}: annotation {ann.get('id')} has unknown category "
                                f"{ann['category_id']}")
            where = f"{file.name} (annotation {ann.get('id')})"
            clipped = clip_counted(box, width, height, report, where)
            boxes.append(clipped)
            labels.append(label_of[ann["category_id"]])
            ignore.append(bool(ann.get("iscrowd", 0)))
            areas.append(float(ann.get("area", (clipped[2] - clipped[0]) * (clipped[3] - clipped[1]))))
        arrays = empty_arrays()
        if boxes:
            arrays = {
                "boxes": np.asarray(boxes, np.float32),
                "labels": np.asarray(labels, np.int64),
                "ignore": np.asarray(ignore, bool),
                "areas": np.asarray(areas, np.float32),
            }
        records.append(ImageRecord(int(image_id), file, width, height, train_ignored=True, **arrays))
    return records
