"""Pascal VOC XML annotations (Everingham et al. 2010) in any folder name.

A VOC folder holds ``Annotations/<id>.xml``, ``JPEGImages/<id>.jpg`` and
``ImageSets/Main/<split>.txt``; its name need not be ``VOC2007``/``VOC2012`` (BCCD's is
``BCCD``). VOC pixel indices are 1-based and inclusive; like detectron2 we subtract 1 from
``xmin``/``ymin`` to get continuous 0-based coordinates (``x1 = xmin - 1, x2 = xmax``).
Validity is judged on the file's own numbers: ``xmax <= xmin`` or ``ymax <= ymin`` is a
zero-area box, dropped with a counted warning (BCCD has two). ``difficult`` objects are
trained on (as in detectron2) and ignored in evaluation (as in the VOC devkit).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pretrain.errors import DataError
from transfer.detection.structures import (
    BoxReport,
    ImageRecord,
    clip_counted,
    empty_arrays,
    invalid_box_reason,
)


@dataclass(frozen=True)
class VocObject:
    name: str
    box: tuple[float, float, float, float]  # raw xmin, ymin, xmax, ymax from the file
    difficult: bool


@dataclass(frozen=True)
class VocAnnotation:
    xml: Path
    image: Path
    width: int
    height: int
    objects: tuple[VocObject, ...]


def _number(node: ET.Element | None, tag: str, xml: Path) -> float:
    child = node.find(tag) if node is not None else None
    if child is None or child.text is None:
        raise DataError(f"{xml}: missing <{tag}> in an object's <bndbox>; fix or remove the object")
    try:
        return float(child.text.strip())
    except ValueError:
        raise DataError(f"{xml}: bad box: <{tag}> is {child.text.strip()!r}, not a number") from None


def parse_voc_xml(xml: Path, image_dir: Path) -> VocAnnotation:
    """Read one annotation file; malformed content is a :class:`DataError` naming the file."""
    try:
        root = ET.parse(xml).getroot()
    except FileNotFoundError:
        raise DataError(f"annotation file not found: {xml}") from None
    except ET.ParseError as exc:
        raise DataError(f"cannot parse {xml}: {exc}") from None
    image = image_dir / f"{xml.stem}.jpg"
    filename = root.findtext("filename")
    if not image.is_file() and filename and (image_dir / filename.strip()).is_file():
        image = image_dir / filename.strip()
    if not image.is_file():
        raise DataError(f"image file not found: {image} (listed by {xml})")
    size = root.find("size")
    try:
        width = int(float(size.findtext("width", "")))  # type: ignore[union-attr]
        height = int(float(size.findtext("height", "")))  # type: ignore[union-attr]
    except (AttributeError, ValueError):
        width = height = 0
    if width <= 0 or height <= 0:  # some VOC-style sets omit <size>: read the image header
        with Image.open(image) as img:
            width, height = img.size
    objects = []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{xml}: an <object> has no <name>")
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"{xml}: object {name!r} has no <bndbox>")
        box = tuple(_number(bnd, tag, xml) for tag in ("xmin", "ymin", "xmax", "ymax"))
        difficult = (obj.findtext("difficult") or "0").strip() not in ("0", "")
        objects.append(VocObject(name, box, difficult))  # type: ignore[arg-type]
    return VocAnnotation(xml, image, width, height, tuple(objects))


def find_voc_folder(base: Path, subdir: str = "") -> Path:
    """The folder holding ``Annotations/`` and ``JPEGImages/``: ``base/subdir``, ``base``, or
    the single such folder up to three levels below ``base``."""
    if subdir:
        base = base / subdir
    if (base / "Annotations").is_dir() and (base / "JPEGImages").is_dir():
        return base
    found = sorted(
        p.parent for pattern in ("*/Annotations", "*/*/Annotations", "*/*/*/Annotations")
        for p in base.glob(pattern) if (p.parent / "JPEGImages").is_dir()
    )
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"no VOC folder (Annotations/ and JPEGImages/) in {base}")
    names = ", ".join(str(p.relative_to(base)) for p in found)
    raise DataError(f"several VOC folders in {base} ({names}); choose one with subdir")


def read_split(folder: Path, split: str) -> list[str]:
    path = folder / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in (folder / "ImageSets" / "Main").glob("*.txt"))[:10]
        raise DataError(f"no split {split!r} in {folder}: {path} not found (found: {have})")
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"split file {path} is empty")
    return ids


def read_voc(folder: Path, split: str) -> list[VocAnnotation]:
    """Every annotation of ``split``; a missing XML or image names the file."""
    return [
        parse_voc_xml(folder / "Annotations" / f"{i}.xml", folder / "JPEGImages")
        for i in read_split(folder, split)
    ]


def voc_class_names(annotations: list[VocAnnotation]) -> list[str]:
    """Sorted object names found in the files (used when the config gives none)."""
    return sorted({obj.name for ann in annotations for obj in ann.objects})


def voc_records(annotations: list[VocAnnotation], classes: list[str], report: BoxReport,
                first_id: int = 0) -> list[ImageRecord]:
    """Map names to labels 1..K, drop invalid boxes into ``report``, clip the rest."""
    index = {name: k + 1 for k, name in enumerate(classes)}
    records = []
    for i, ann in enumerate(annotations):
        arrays = empty_arrays()
        boxes, labels, ignore = [], [], []
        for obj in ann.objects:
            if obj.name not in index:
                raise DataError(
                    f"{ann.xml}: class {obj.name!r} is not in the class list "
                    f"({', '.join(classes)}); set data.classes to include it"
                )
            x1, y1, x2, y2 = obj.box
            reason = invalid_box_reason(obj.box, ann.width + 1, ann.height + 1)
            if reason:  # judged on the 1-based inclusive numbers of the file
                report.add(reason, ann.xml.name)
                continue
            boxes.append(clip_counted((x1 - 1.0, y1 - 1.0, x2, y2), ann.width, ann.height, report,
                                      ann.xml.name))
            labels.append(index[obj.name])
            ignore.append(obj.difficult)
        if boxes:
            b = np.asarray(boxes, np.float32)
            arrays = {
                "boxes": b,
                "labels": np.asarray(labels, np.int64),
                "ignore": np.asarray(ignore, bool),
                "areas": (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]),
            }
        records.append(ImageRecord(first_id + i, ann.image, ann.width, ann.height,
                                   train_ignored=False, **arrays))
    return records
