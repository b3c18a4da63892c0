"""Image records with boxes, the invalid-box rule, and the torch Dataset Faster R-CNN reads.

Boxes are ``(N, 4)`` float32 ``x1, y1, x2, y2`` in continuous pixel coordinates of the
original image (0 = left edge), as torchvision's detection models expect. Labels are
contiguous ``1..K``; 0 is background (torchvision convention). A box marked ``ignore``
(VOC ``difficult`` in evaluation, COCO ``iscrowd``) is kept for evaluation, where it neither
counts as a miss nor makes a detection on it a false positive.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pretrain.data import load_rgb
from pretrain.errors import DataError, UserError


@dataclass
class ImageRecord:
    """One image and its annotations.

    Attributes:
        image_id: COCO image id, or a running index for VOC.
        boxes: (N, 4) float32 xyxy in pixels.
        labels: (N,) int64 in 1..K.
        ignore: (N,) bool; crowd (COCO) or difficult (VOC) boxes.
        areas: (N,) float32; COCO's segment area (sets APs/m/l), else the box area.
        train_ignored: whether ``ignore`` boxes are left out of training targets (COCO crowd:
            yes; VOC difficult: no, as detectron2 trains on them).
    """

    image_id: int
    file: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    areas: np.ndarray
    train_ignored: bool = True

    def training_target(self) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (M, 4) and labels (M,) the detector learns from."""
        keep = ~self.ignore if self.train_ignored else np.ones(len(self.labels), dtype=bool)
        return self.boxes[keep], self.labels[keep]


@dataclass
class BoxReport:
    """Boxes dropped while loading, by reason, and boxes clipped to their image, with a few
    example files each."""

    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    clipped: int = 0
    clipped_examples: list[str] = field(default_factory=list)

    def add(self, reason: str, where: str, count: int = 1) -> None:
        self.dropped[reason] += count
        self.examples.setdefault(reason, [])
        if where not in self.examples[reason] and len(self.examples[reason]) < 3:
            self.examples[reason].append(where)

    def add_clipped(self, where: str) -> None:
        self.clipped += 1
        if where not in self.clipped_examples and len(self.clipped_examples) < 3:
            self.clipped_examples.append(where)

    @property
    def total(self) -> int:
        return sum(self.dropped.values())

    def message(self, dataset: str) -> str:
        parts = [
            f"{n} with {reason} (e.g. {', '.join(self.examples[reason])})"
            for reason, n in sorted(self.dropped.items())
        ]
        return f"warning: {dataset}: dropped {self.total} invalid boxes: {'; '.join(parts)}"

    def clip_message(self, dataset: str) -> str:
        return (f"warning: {dataset}: clipped {self.clipped} boxes that reach outside their image "
                f"to its borders (e.g. {', '.join(self.clipped_examples)})")


def invalid_box_reason(box: tuple[float, float, float, float], width: int, height: int) -> str:
    """Why an annotation box (x1, y1, x2, y2) is unusable, or "" when it is fine.

    Zero or negative width/height, and boxes lying entirely outside the image, are invalid.
    A box that only pokes out of the image is valid; :func:`clip_box` trims it.
    """
    x1, y1, x2, y2 = box
    if not all(np.isfinite(v) for v in box):
        return "non-finite coordinates"
    if x2 <= x1 or y2 <= y1:
        return "zero or negative width/height"
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return "no overlap with the image"
    return ""


def clip_box(box: tuple[float, float, float, float], width: int, height: int) -> list[float]:
    """(x1, y1, x2, y2) in 0-based pixel-edge coordinates, cut to the image [0, W] x [0, H]."""
    x1, y1, x2, y2 = box
    return [max(0.0, x1), max(0.0, y1), min(float(width), x2), min(float(height), y2)]


def clip_counted(
    box: tuple[float, float, float, float], width: int, height: int, report: BoxReport, where: str
) -> list[float]:
    """:func:`clip_box`, counting in ``report`` a box that had to be cut."""
    clipped = clip_box(box, width, height)
    if clipped != [float(v) for v in box]:
        report.add_clipped(where)
    return clipped


def empty_arrays() -> dict[str, np.ndarray]:
    return {
        "boxes": np.zeros((0, 4), np.float32),
        "labels": np.zeros((0,), np.int64),
        "ignore": np.zeros((0,), bool),
        "areas": np.zeros((0,), np.float32),
    }


class DetectionDataset(Dataset):
    """Records plus class names; ``ds[i]`` is ``(image (3, H, W) float in 0-1, target)``.

    ``target`` holds ``boxes`` (M, 4), ``labels`` (M,) (training boxes only), ``image_id``
    and ``index``. ``category_ids[k - 1]`` is the dataset's own id of label ``k`` (COCO ids
    are not contiguous); for VOC it is ``k``.
    """

    def __init__(self, name: str, records: list[ImageRecord], classes: list[str],
                 category_ids: list[int]) -> None:
        if len(classes) != len(category_ids):
            raise ValueError("classes and category_ids differ in length")
        self.name = name
        self.records = records
        self.classes = classes
        self.category_ids = category_ids

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rec = self.records[index]
        img = load_rgb(rec.file)
        if img.size != (rec.width, rec.height):
            raise DataError(
                f"{rec.file}: image is {img.size[0]}x{img.size[1]} but its annotation says "
                f"{rec.width}x{rec.height}"
            )
        tensor = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)
        boxes, labels = rec.training_target()
        return tensor.float().div_(255.0), {
            "boxes": torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4),
            "labels": torch.from_numpy(labels.astype(np.int64)),
            "image_id": torch.tensor(rec.image_id),
            "index": torch.tensor(index),
        }

    def subset(self, limit: int) -> DetectionDataset:
        """The first ``limit`` images (all when ``limit`` <= 0)."""
        if limit <= 0 or limit >= len(self):
            return self
        return DetectionDataset(self.name, self.records[:limit], self.classes, self.category_ids)

    def label_to_category(self, label: int) -> int:
        return self.category_ids[label - 1]

    def category_to_label(self, category_id: int) -> int:
        return self.category_ids.index(category_id) + 1


def one_line(exc: UserError) -> UserError:
    """The same error with a one-line message: a DataLoader worker re-raises a user error with
    its traceback appended ("Original Traceback ..."), which the CLI must not print."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1].split(": ", 1)[-1]
    return type(exc)(text.splitlines()[0] if text else type(exc).__name__)


def collate(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detection batches are lists: images differ in size."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


def hflip(image: torch.Tensor, target: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """Mirror image (3, H, W) and its boxes: x1' = W - x2, x2' = W - x1."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes}
