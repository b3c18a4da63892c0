"""Tiny trees in the official layouts of Kornblith et al. 2019's transfer datasets (a few
4x4 JPEGs per class, the split and annotation files each layout needs), built in a test's
tmp_path; each builder returns what its tree holds (:class:`Expected`)."""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from PIL import Image


@functools.cache
def jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 40, 10)).save(buf, "JPEG")
    return buf.getvalue()


def jpeg(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes())


def text_file(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


@dataclass
class Expected:
    """What a tiny tree holds: images per split, classes, one image's label, a split it lacks."""

    sizes: dict[str, int]
    num_classes: int
    probe: tuple[str, str, Any] | None = None  # (split, path under the home, label)
    missing: str | None = None
    home: str = field(default="")


def build_food101(root: Path) -> Expected:
    home = root / "food-101"
    meta = {"train": {"apple_pie": ["apple_pie/1", "apple_pie/2", "apple_pie/3"],
                      "baby_back_ribs": ["baby_back_ribs/11", "baby_back_ribs/12"]},
            "test": {"apple_pie": ["apple_pie/4"], "baby_back_ribs": ["baby_back_ribs/13"]}}
    for split, classes in meta.items():
        (home / "meta").mkdir(parents=True, exist_ok=True)
        (home / "meta" / f"{split}.json").write_text(json.dumps(classes))
        for ids in classes.values():
            for image_id in ids:
                jpeg(home / "images" / f"{image_id}.jpg")
    return Expected({"train": 5, "test": 2}, 2, ("train", "images/baby_back_ribs/12.jpg", 1),
                    "val", "food-101")


CIFAR100_CLASSES = ["apple", "aquarium_fish", "baby"]


def cifar_records(fine: list[int]) -> bytes:
    """Binary CIFAR-100 records: coarse byte, fine byte, 3072 bytes CHW (R plane = the row,
    G plane = the column, B plane = the record's index)."""
    rows, cols = np.mgrid[0:32, 0:32]
    out = bytearray()
    for i, label in enumerate(fine):
        planes = np.stack([rows, cols, np.full((32, 32), i)])
        out += bytes([label // 2, label]) + planes.astype(np.uint8).tobytes()
    return bytes(out)


def build_cifar100(root: Path) -> Expected:
    home = root / "cifar-100-binary"
    home.mkdir(parents=True)
    (home / "train.bin").write_bytes(cifar_records([0, 1, 2, 1, 0]))
    (home / "test.bin").write_bytes(cifar_records([2, 0]))
    text_file(home / "fine_label_names.txt", CIFAR100_CLASSES)
    text_file(home / "coarse_label_names.txt", ["fruit", "fish"])
    return Expected({"train": 5, "test": 2}, 3, missing="val", home="cifar-100-binary")


def build_birdsnap(root: Path) -> Expected:
    home = root / "birdsnap"
    text_file(home / "species.txt", ["id\tcommon\tscientific\tdir",
                                 "1\tAcadian Flycatcher\tEmpidonax virescens\tAcadian_Flycatcher",
                                 "2\tAmerican Avocet\tRecurvirostra americana\tAmerican_Avocet"])
    rows = ["url\tmd5\tpath\tspecies_id\tbb_x1\tbb_y1\tbb_x2\tbb_y2"]
    for sid, species in ((1, "Acadian_Flycatcher"), (2, "American_Avocet")):
        for i in range(1, 4):
            rows.append(f"http://x/{species}{i}.jpg\t0\t{species}/a{i}.jpg\t{sid}\t0\t0\t4\t4")
            if (sid, i) != (2, 1):  # one image the official script could not download
                jpeg(home / "download" / "images" / species / f"a{i}.jpg")
    text_file(home / "images.txt", rows)
    text_file(home / "test_images.txt", ["path", "Acadian_Flycatcher/a3.jpg", "American_Avocet/a2.jpg"])
    return Expected({"train": 3, "test": 2}, 2,
                    ("test", "download/images/American_Avocet/a2.jpg", 1), "val", "birdsnap")


def build_sun397(root: Path) -> Expected:
    home = root / "SUN397"
    text_file(home / "ClassName.txt", ["/a/abbey", "/b/bakery/shop"])
    train, test = [], []
    for cls, prefix in (("a/abbey", "a"), ("b/bakery/shop", "b")):
        for i in range(1, 4):
            jpeg(home / cls / f"sun_{prefix}{i}.jpg")
            (train if i < 3 else test).append(f"/{cls}/sun_{prefix}{i}.jpg")
    text_file(root / "Partitions" / "Training_01.txt", train)
    text_file(root / "Partitions" / "Testing_01.txt", test)
    return Expected({"train": 4, "test": 2}, 2, ("test", "b/bakery/shop/sun_b3.jpg", 1), "val",
                    "SUN397")


def cars_annotations(path: Path, classes: list[int]) -> None:
    annos = np.zeros((1, len(classes)), dtype=[("bbox_x1", "O"), ("class", "O"), ("fname", "O")])
    for i, cls in enumerate(classes):
        annos[0, i] = (np.uint8(0), np.uint8(cls), f"{i + 1:05d}.jpg")
    scipy.io.savemat(path, {"annotations": annos})


def build_cars(root: Path) -> Expected:
    home = root / "stanford_cars"
    (home / "devkit").mkdir(parents=True)
    names = np.array([["AM General Hummer SUV 2000", "Acura RL Sedan 2012",
                       "Acura TL Sedan 2012"]], dtype=object)
    scipy.io.savemat(home / "devkit" / "cars_meta.mat", {"class_names": names})
    cars_annotations(home / "devkit" / "cars_train_annos.mat", [1, 2, 3, 2])
    cars_annotations(home / "cars_test_annos_withlabels.mat", [3, 1])
    for folder, n in (("cars_train", 4), ("cars_test", 2)):
        for i in range(1, n + 1):
            jpeg(home / folder / f"{i:05d}.jpg")
    return Expected({"train": 4, "test": 2}, 3, ("test", "cars_test/00001.jpg", 2), "val",
                    "stanford_cars")


def build_aircraft(root: Path) -> Expected:
    data = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "F-16A/B", "Falcon 2000"]
    text_file(data / "variants.txt", variants)
    splits = {"train": [0, 1, 2], "val": [2, 2], "test": [0, 1]}
    image_id = 1000001
    for split, labels in splits.items():
        lines = []
        for label in labels:
            lines.append(f"{image_id} {variants[label]}")
            jpeg(data / "images" / f"{image_id}.jpg")
            image_id += 1
        text_file(data / f"images_variant_{split}.txt", lines)
    return Expected({"train": 3, "val": 2, "test": 2}, 3,
                    ("val", "data/images/1000005.jpg", 2), None, "fgvc-aircraft-2013b")


VOC_OBJECTS = {  # image id: [(class, difficult)]
    "000005": [("dog", 0), ("person", 1)],  # person: difficult only -> ignored (-1)
    "000007": [("cat", 0), ("cat", 1)],  # a present class stays present
    "000009": [("car", 0)],
    "000001": [("person", 0)],
    "000002": [("train", 1)],
}


def voc_row(objects: list[tuple[str, int]]) -> np.ndarray:
    """The expected row, written out: 1 present, -1 only difficult, 0 otherwise."""
    from pretrain.data.benchmark_layouts import VOC_CLASSES

    row = np.zeros(20, dtype=np.int64)
    for cls, difficult in objects:
        if not difficult:
            row[VOC_CLASSES.index(cls)] = 1
    for cls, difficult in objects:
        if difficult and row[VOC_CLASSES.index(cls)] == 0:
            row[VOC_CLASSES.index(cls)] = -1
    return row


def build_voc2007(root: Path) -> Expected:
    home = root / "VOCdevkit" / "VOC2007"
    splits = {"train": ["000005", "000007"], "val": ["000009"], "test": ["000001", "000002"]}
    for split, ids in splits.items():
        text_file(home / "ImageSets" / "Main" / f"{split}.txt", ids)
        for image_id in ids:
            objects = "".join(f"<object><name>{c}</name><difficult>{d}</difficult></object>"
                              for c, d in VOC_OBJECTS[image_id])
            text_file(home / "Annotations" / f"{image_id}.xml",
                  [f"<annotation><filename>{image_id}.jpg</filename>{objects}</annotation>"])
            jpeg(home / "JPEGImages" / f"{image_id}.jpg")
    return Expected({"train": 2, "val": 1, "test": 2}, 20,
                    ("train", "JPEGImages/000005.jpg", voc_row(VOC_OBJECTS["000005"])), None,
                    "VOCdevkit/VOC2007")


def build_dtd(root: Path) -> Expected:
    home = root / "dtd" / "dtd"
    counts = {"train": 2, "val": 1, "test": 1}
    number = 1
    lines: dict[str, list[str]] = {s: [] for s in counts}
    for cls in ("banded", "blotchy", "braided"):
        for split, n in counts.items():
            for _ in range(n):
                name = f"{cls}_{number:04d}.jpg"
                jpeg(home / "images" / cls / name)
                lines[split].append(f"{cls}/{name}")
                number += 1
    for split, split_lines in lines.items():
        text_file(home / "labels" / f"{split}1.txt", split_lines)
    return Expected({"train": 6, "val": 3, "test": 3}, 3,
                    ("test", "dtd/images/braided/braided_0012.jpg", 2), None, "dtd")


def build_pets(root: Path) -> Expected:
    home = root / "oxford-iiit-pet"
    splits = {"trainval": ["Abyssinian_1", "Abyssinian_2", "american_bulldog_1",
                           "american_bulldog_2"],
              "test": ["Abyssinian_3", "american_bulldog_3"]}
    for split, ids in splits.items():
        rows = []
        for image_id in ids:
            label, species = (1, 1) if image_id.startswith("Abyssinian") else (2, 2)
            rows.append(f"{image_id} {label} {species} 1")
            jpeg(home / "images" / f"{image_id}.jpg")
        text_file(home / "annotations" / f"{split}.txt", rows)
    return Expected({"train": 4, "test": 2}, 2, ("train", "images/american_bulldog_2.jpg", 1),
                    "val", "oxford-iiit-pet")


CALTECH_COUNTS = {"BACKGROUND_Google": 31, "Faces": 32, "accordion": 33}


def build_caltech101(root: Path) -> Expected:
    for cls, n in CALTECH_COUNTS.items():
        for i in range(1, n + 1):
            jpeg(root / "caltech101" / "101_ObjectCategories" / cls / f"image_{i:04d}.jpg")
    return Expected({"train": 90, "test": 6}, 3, missing="val", home="caltech101")


def build_flowers102(root: Path) -> Expected:
    home = root / "flowers-102"
    (home / "jpg").mkdir(parents=True)
    for i in range(1, 10):
        jpeg(home / "jpg" / f"image_{i:05d}.jpg")
    scipy.io.savemat(home / "imagelabels.mat", {"labels": np.array([[3, 1, 2, 2, 3, 1, 1, 3, 2]])})
    scipy.io.savemat(home / "setid.mat", {"trnid": np.array([[2, 3, 1]]),
                                          "valid": np.array([[5, 4, 6]]),
                                          "tstid": np.array([[7, 8, 9]])})
    return Expected({"train": 3, "val": 3, "test": 3}, 3, ("val", "jpg/image_00005.jpg", 2), None,
                    "flowers-102")


BUILDERS: dict[str, Callable[[Path], Expected]] = {
    "food101": build_food101, "cifar100": build_cifar100, "birdsnap": build_birdsnap,
    "sun397": build_sun397, "cars": build_cars, "aircraft": build_aircraft,
    "voc2007": build_voc2007, "dtd": build_dtd, "pets": build_pets,
    "caltech101": build_caltech101, "flowers102": build_flowers102,
}
