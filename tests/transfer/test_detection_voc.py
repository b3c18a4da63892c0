"""VOC XML reading on the real BCCD files: coordinates, zero-area boxes, classes, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from detection_helpers import bccd_root, make_voc, single_thread  # noqa: F401

from pretrain.errors import DataError
from transfer.detection.config import DataConfig, DatasetSpec
from transfer.detection.datasets import load_detection_data
from transfer.detection.structures import BoxReport
from transfer.detection.voc import find_voc_folder, read_voc, voc_class_names, voc_records

CLASSES = ["RBC", "WBC", "Platelets"]
ZERO_AREA = "zero or negative width/height"


@pytest.fixture(scope="module")
def bccd(shared_data: Path, data_cache: Path) -> Path:
    return find_voc_folder(bccd_root(shared_data, data_cache))


def test_finds_the_bccd_folder_whatever_its_name(bccd: Path) -> None:
    assert bccd.name == "BCCD"
    assert (bccd / "Annotations").is_dir()


@pytest.mark.parametrize(
    "split, n_images, dropped",
    [("train", 205, ["BloodImage_00343.xml"]), ("val", 87, ["BloodImage_00338.xml"]),
     ("test", 72, [])],
)
def test_zero_area_boxes_are_dropped_and_counted(bccd: Path, split: str, n_images: int,
                                                 dropped: list[str]) -> None:
    report = BoxReport()
    records = voc_records(read_voc(bccd, split), CLASSES, report)
    assert len(records) == n_images
    assert report.total == len(dropped)
    assert report.dropped[ZERO_AREA] == len(dropped)
    assert report.examples.get(ZERO_AREA, []) == dropped
    for rec in records:
        assert (rec.boxes[:, 2] > rec.boxes[:, 0]).all() and (rec.boxes[:, 3] > rec.boxes[:, 1]).all()


def test_every_other_box_is_kept(bccd: Path) -> None:
    """BCCD has 4,888 boxes; exactly the two zero-area ones go."""
    report = BoxReport()
    kept = sum(len(r.labels) for s in ("train", "val", "test")
               for r in voc_records(read_voc(bccd, s), CLASSES, report))
    assert kept == 4888 - 2 and report.total == 2


def test_coordinates_become_zero_based_continuous(bccd: Path) -> None:
    # BloodImage_00338.xml: first object RBC xmin=453 ymin=81 xmax=555 ymax=182 (1-based).
    ann = next(a for a in read_voc(bccd, "val") if a.xml.stem == "BloodImage_00338")
    rec = voc_records([ann], CLASSES, BoxReport())[0]
    assert (ann.width, ann.height) == (640, 480)
    np.testing.assert_array_equal(rec.boxes[0], [452.0, 80.0, 555.0, 182.0])
    assert rec.labels[0] == 1
    assert not rec.ignore.any() and rec.train_ignored is False


def test_class_names_come_from_the_files(bccd: Path) -> None:
    assert voc_class_names(read_voc(bccd, "trainval")) == ["Platelets", "RBC", "WBC"]


def test_several_sets_concatenate(bccd: Path, data_cache: Path) -> None:
    root = str(bccd)
    cfg = DataConfig(train=[DatasetSpec(root=root, split="train"), DatasetSpec(root=root, split="val")],
                     test=DatasetSpec(root=root, split="test"), classes=CLASSES,
                     cache_dir=str(data_cache))
    train, test, stats = load_detection_data(cfg)
    assert len(train) == 205 + 87 and len(test) == 72
    assert stats["dropped_train"] == 2 and stats["dropped_test"] == 0
    assert stats["clipped_train"] == stats["clipped_test"] == 0  # BCCD boxes lie inside images
    assert len({r.image_id for r in train.records}) == len(train)  # ids stay unique


def _edit_xml(folder: Path, image_id: str, old: str, new: str) -> None:
    xml = folder / "Annotations" / f"{image_id}.xml"
    text = xml.read_text()
    assert old in text
    xml.write_text(text.replace(old, new, 1))


def test_bad_files_are_errors_naming_them(tmp_path: Path, bccd: Path) -> None:
    voc = make_voc(tmp_path / "MyVOC", bccd.parent.parent, {"train": ["BloodImage_00001"]})
    _edit_xml(voc, "BloodImage_00001", "<name>WBC</name>", "<name>Neutrophil</name>")
    with pytest.raises(DataError, match="BloodImage_00001.xml: class 'Neutrophil'"):
        voc_records(read_voc(voc, "train"), CLASSES, BoxReport())
    _edit_xml(voc, "BloodImage_00001", "<xmin>", "<xmin>abc")
    with pytest.raises(DataError, match="BloodImage_00001.xml: bad box"):
        read_voc(voc, "train")
    (voc / "JPEGImages" / "BloodImage_00001.jpg").unlink()
    with pytest.raises(DataError, match="image file not found: .*BloodImage_00001.jpg"):
        read_voc(voc, "train")
    with pytest.raises(DataError, match="no split 'test'"):
        read_voc(voc, "test")


def test_difficult_and_out_of_image_boxes(tmp_path: Path, bccd: Path) -> None:
    voc = make_voc(tmp_path / "V", bccd.parent.parent, {"train": ["BloodImage_00001"]})
    xml = voc / "Annotations" / "BloodImage_00001.xml"
    text = xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>", 1)
    extra = ("<object><name>RBC</name><difficult>0</difficult><bndbox><xmin>700</xmin>"
             "<ymin>10</ymin><xmax>720</xmax><ymax>40</ymax></bndbox></object>"
             "<object><name>RBC</name><difficult>0</difficult><bndbox><xmin>600</xmin>"
             "<ymin>400</ymin><xmax>700</xmax><ymax>500</ymax></bndbox></object></annotation>")
    xml.write_text(text.replace("</annotation>", extra))
    report = BoxReport()
    rec = voc_records(read_voc(voc, "train"), CLASSES, report)[0]
    assert report.dropped == {"no overlap with the image": 1}
    assert rec.ignore[0] and not rec.ignore[1:].any()
    boxes, _ = rec.training_target()
    assert len(boxes) == len(rec.boxes)  # difficult boxes are trained on (detectron2)
    np.testing.assert_array_equal(rec.boxes[-1], [599.0, 399.0, 640.0, 480.0])  # clipped
    assert report.clipped == 1 and report.clipped_examples == ["BloodImage_00001.xml"]  # counted
    assert "clipped 1 boxes that reach outside their image" in report.clip_message("V")
