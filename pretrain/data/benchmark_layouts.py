"""Readers of the transfer datasets' official layouts (used by :mod:`pretrain.data.benchmark`).

Each reader takes the dataset's home folder (``food-101/``, ``VOCdevkit/VOC2007/``, ...; see
``BenchmarkDataset.home``) and a split name the dataset has, and returns a :class:`ParsedSplit`:
image files (or a uint8 array) with their targets and the class names. Readers only read
annotation files and list folders; no image is decoded. A missing or malformed annotation file
is a :class:`DataError` naming it.

Five layouts are parsed by torchvision's own classes (``Food101``, ``StanfordCars``,
``FGVCAircraft``, ``DTD``, ``OxfordIIITPet``) so that labels match torchvision's; the others are
read directly (see each reader for why).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pretrain.data.images import IMAGE_EXTENSIONS, file_identity
from pretrain.errors import DataError

logger = logging.getLogger(__name__)

CALTECH_TRAIN_PER_CLASS = 30  # Kornblith et al. 2019, Table A1: 30 per class, 102 classes
CALTECH_SPLIT_SEED = 0  # fixed: the split is part of the dataset, not of a probe's seed

# The 20 PASCAL VOC classes in the devkit's order (Everingham et al. 2010).
VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)


@dataclass
class ParsedSplit:
    """One split as read from disk: exactly one of ``files`` or ``array`` (N, 32, 32, 3) uint8.

    ``targets`` are class indices, or (VOC2007) one (C,) int64 row of 1 / 0 / -1 per image.
    """

    targets: list[Any]
    classes: list[str]
    files: list[Path] | None = None
    array: np.ndarray | None = None
    source: str = ""


Reader = Callable[[Path, str], ParsedSplit]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _read_lines(path: Path, name: str) -> list[str]:
    """Non-empty stripped lines of an annotation file; a missing one is a DataError naming it."""
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except FileNotFoundError:
        raise DataError(f"{name}: annotation file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{name}: cannot read {path}: {_first_line(exc)}") from None


def _loadmat(path: Path, name: str) -> dict[str, Any]:
    import scipy.io  # type: ignore[import-untyped]  # a scikit-learn dependency, untyped

    try:
        return scipy.io.loadmat(str(path))
    except FileNotFoundError:
        raise DataError(f"{name}: annotation file not found: {path}") from None
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(f"{name}: cannot read {path}: {_first_line(exc)}") from None


def _torchvision(name: str, home: Path, folder: str, split_file: Path,
                 build: Callable[[str], Any]) -> Any:
    """``build(root)`` for torchvision's class, whose files are ``root/<folder>/...``; its
    errors (missing files, malformed split files) become a DataError naming ``split_file``."""
    if home.name != folder:  # torchvision appends the official folder name to its root
        raise DataError(f"{name}: torchvision reads {home.parent / folder}; rename {home} to "
                        f"{folder} (or pass the folder holding it)")
    if not split_file.is_file():
        raise DataError(f"{name}: split file not found: {split_file}")
    try:
        return build(str(home.parent))
    except (RuntimeError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        raise DataError(f"{name}: cannot read {split_file}: {_first_line(exc)}") from None


def read_food101(home: Path, split: str) -> ParsedSplit:
    from torchvision.datasets import Food101

    ds = _torchvision("food101", home, "food-101", home / "meta" / f"{split}.json",
                      lambda root: Food101(root, split=split))
    return ParsedSplit(list(ds._labels), list(ds.classes), files=[Path(p) for p in ds._image_files])


def read_cars(home: Path, split: str) -> ParsedSplit:
    from torchvision.datasets import StanfordCars

    annos = ("devkit/cars_train_annos.mat" if split == "train"
             else "cars_test_annos_withlabels.mat")
    ds = _torchvision("cars", home, "stanford_cars", home / annos,
                      lambda root: StanfordCars(root, split=split))
    return ParsedSplit([int(label) for _, label in ds._samples], [str(c) for c in ds.classes],
                       files=[Path(path) for path, _ in ds._samples])


def read_aircraft(home: Path, split: str) -> ParsedSplit:
    from torchvision.datasets import FGVCAircraft

    ds = _torchvision("aircraft", home, "fgvc-aircraft-2013b",
                      home / "data" / f"images_variant_{split}.txt",
                      lambda root: FGVCAircraft(root, split=split, annotation_level="variant"))
    return ParsedSplit(list(ds._labels), list(ds.classes), files=[Path(p) for p in ds._image_files])


def read_dtd(home: Path, split: str) -> ParsedSplit:
    from torchvision.datasets import DTD

    ds = _torchvision("dtd", home, "dtd", home / "dtd" / "labels" / f"{split}1.txt",
                      lambda root: DTD(root, split=split, partition=1))
    return ParsedSplit(list(ds._labels), list(ds.classes), files=[Path(p) for p in ds._image_files])


def read_pets(home: Path, split: str) -> ParsedSplit:
    from torchvision.datasets import OxfordIIITPet

    official = "trainval" if split == "train" else split  # our train is the official trainval
    ds = _torchvision("pets", home, "oxford-iiit-pet", home / "annotations" / f"{official}.txt",
                      lambda root: OxfordIIITPet(root, split=official))
    return ParsedSplit(list(ds._labels), list(ds.classes), files=[Path(p) for p in ds._images])


def read_cifar100(home: Path, split: str) -> ParsedSplit:
    """The binary release (records: coarse byte, fine byte, 3072 bytes CHW), read with numpy;
    or torchvision's python release, whose files torchvision md5-checks before unpickling them,
    so only the genuine release is ever unpickled."""
    if (home / "meta").is_file() and not (home / f"{split}.bin").is_file():
        from torchvision.datasets import CIFAR100

        ds = _torchvision("cifar100", home, "cifar-100-python", home / split,
                          lambda root: CIFAR100(root, train=split == "train"))
        return ParsedSplit(list(ds.targets), list(ds.classes), array=np.asarray(ds.data),
                           source=file_identity(home / split))
    path = home / f"{split}.bin"
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"cifar100: split file not found: {path}") from None
    classes = _read_lines(home / "fine_label_names.txt", "cifar100")
    record = 2 + 3 * 32 * 32
    if raw.size == 0 or raw.size % record:
        raise DataError(f"cifar100: {path} is not a CIFAR-100 binary file "
                        f"({raw.size} bytes, not a multiple of {record})")
    rows = raw.reshape(-1, record)
    fine = rows[:, 1].astype(np.int64)
    if fine.max() >= len(classes):
        raise DataError(f"cifar100: {path} has label {fine.max()} but "
                        f"{home / 'fine_label_names.txt'} names {len(classes)} classes")
    images = np.ascontiguousarray(rows[:, 2:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return ParsedSplit(fine.tolist(), classes, array=images, source=file_identity(path))


def _header_columns(lines: list[str], path: Path, wanted: tuple[str, ...]) -> list[int]:
    header = lines[0].split("\t") if lines else []
    missing = [c for c in wanted if c not in header]
    if missing:
        raise DataError(f"birdsnap: {path} lacks the header column(s) {', '.join(missing)}")
    return [header.index(c) for c in wanted]


def read_birdsnap(home: Path, split: str) -> ParsedSplit:
    """Test = the paths of ``test_images.txt``; train = every other image of ``images.txt``
    (ssl-transfer's rule); images the official script could not download are skipped."""
    species_file, images_file = home / "species.txt", home / "images.txt"
    species = _read_lines(species_file, "birdsnap")
    id_col, common_col = _header_columns(species, species_file, ("id", "common"))
    try:
        by_id = {int(row.split("\t")[id_col]): row.split("\t")[common_col] for row in species[1:]}
        ids = sorted(by_id)
        index = {sid: i for i, sid in enumerate(ids)}
        images = _read_lines(images_file, "birdsnap")
        path_col, sid_col = _header_columns(images, images_file, ("path", "species_id"))
        listed = [(row.split("\t")[path_col], index[int(row.split("\t")[sid_col])])
                  for row in images[1:]]
    except (IndexError, ValueError, KeyError) as exc:
        raise DataError(f"birdsnap: malformed {species_file} or {images_file}: "
                        f"{_first_line(exc)}") from None
    test = set(_read_lines(home / "test_images.txt", "birdsnap")[1:])  # a "path" header first
    chosen = [(p, y) for p, y in listed if (p in test) == (split == "test")]
    folder = home / "download" / "images"
    kept = [(folder / p, y) for p, y in chosen if (folder / p).is_file()]
    if len(kept) < len(chosen):
        logger.warning("birdsnap %s: %d of %d listed images are not in %s (not downloaded); "
                       "skipped", split, len(chosen) - len(kept), len(chosen), folder)
    return ParsedSplit([y for _, y in kept], [by_id[i] for i in ids], files=[p for p, _ in kept])


def read_sun397(home: Path, split: str) -> ParsedSplit:
    """The authors' first partition (``Training_01.txt`` / ``Testing_01.txt``)."""
    classes = [c.strip("/") for c in _read_lines(home / "ClassName.txt", "sun397")]
    index = {c: i for i, c in enumerate(classes)}
    name = "Training_01.txt" if split == "train" else "Testing_01.txt"
    partition = next((d / name for d in (home / "Partitions", home, home.parent / "Partitions")
                      if (d / name).is_file()), None)
    if partition is None:
        raise DataError(f"sun397: no partition file {name} in {home / 'Partitions'}, {home} or "
                        f"{home.parent / 'Partitions'}; get Partitions.zip from "
                        f"https://vision.princeton.edu/projects/2010/SUN/ and unzip it there")
    files, targets = [], []
    for line in _read_lines(partition, "sun397"):
        cls = line.strip("/").rsplit("/", 1)[0]
        if cls not in index:
            raise DataError(f"sun397: {partition}: {line!r} is not in a class of "
                            f"{home / 'ClassName.txt'}")
        files.append(home / line.strip("/"))
        targets.append(index[cls])
    return ParsedSplit(targets, [c.split("/", 1)[-1] for c in classes], files=files)


def read_voc2007(home: Path, split: str) -> ParsedSplit:
    """Multi-label rows per image: 1 if a non-difficult object of the class is present, -1 if the
    class has only difficult objects (ignored, as the VOC devkit does), 0 otherwise."""
    split_file = home / "ImageSets" / "Main" / f"{split}.txt"
    if not split_file.is_file():  # the test set is a tar of its own (VOCtest_06-Nov-2007.tar)
        raise DataError(f"voc2007: split file not found: {split_file} (extract the VOC2007 "
                        f"{'test' if split == 'test' else 'trainval'} tar into {home.parent.parent})")
    ids = _read_lines(split_file, "voc2007")
    index = {c: i for i, c in enumerate(VOC_CLASSES)}
    targets = []
    for image_id in ids:
        xml = home / "Annotations" / f"{image_id}.xml"
        row = np.zeros(len(VOC_CLASSES), dtype=np.int64)
        try:
            for obj in ET.parse(xml).getroot().iter("object"):
                cls = (obj.findtext("name") or "").strip()
                difficult = (obj.findtext("difficult") or "0").strip() == "1"
                if difficult:
                    row[index[cls]] = row[index[cls]] or -1
                else:
                    row[index[cls]] = 1
        except FileNotFoundError:
            raise DataError(f"voc2007: annotation file not found: {xml}") from None
        except KeyError as exc:
            raise DataError(f"voc2007: {xml} names an unknown class {exc}") from None
        except (ET.ParseError, OSError) as exc:
            raise DataError(f"voc2007: cannot parse {xml}: {_first_line(exc)}") from None
        targets.append(row)
    files = [home / "JPEGImages" / f"{image_id}.jpg" for image_id in ids]
    return ParsedSplit(targets, list(VOC_CLASSES), files=files)


def caltech_split(counts: list[int]) -> list[np.ndarray]:
    """Per class (in class order), the indices into its sorted files that go to train:
    ``CALTECH_TRAIN_PER_CLASS`` of a seed-0 permutation per class, drawn in class order."""
    rng = np.random.default_rng(CALTECH_SPLIT_SEED)
    return [np.sort(rng.permutation(n)[:CALTECH_TRAIN_PER_CLASS]) for n in counts]


def read_caltech101(home: Path, split: str) -> ParsedSplit:
    """All 102 folders of ``101_ObjectCategories`` including BACKGROUND_Google (Kornblith Table
    A1; torchvision's Caltech101 drops it, so the folder is read directly)."""
    folder = home / "101_ObjectCategories"
    if not folder.is_dir():
        raise DataError(f"caltech101: folder not found: {folder}")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
                 for d in class_dirs]
    files, targets = [], []
    train_indices = caltech_split([len(images) for images in per_class])
    for label, (images, train) in enumerate(zip(per_class, train_indices, strict=True)):
        in_train = np.zeros(len(images), dtype=bool)
        in_train[train] = True
        chosen = [f for f, t in zip(images, in_train, strict=True) if t == (split == "train")]
        files += chosen
        targets += [label] * len(chosen)
    if not files:
        raise DataError(f"caltech101: no images found in {folder}")
    return ParsedSplit(targets, [d.name for d in class_dirs], files=files)


def read_flowers102(home: Path, split: str) -> ParsedSplit:
    """``imagelabels.mat`` and ``setid.mat`` read directly: torchvision's Flowers102 md5-checks
    them, so a copy rebuilt locally (or a test's tiny tree) could not pass it."""
    labels_file, setid_file = home / "imagelabels.mat", home / "setid.mat"
    key = {"train": "trnid", "val": "valid", "test": "tstid"}[split]
    try:
        labels = np.asarray(_loadmat(labels_file, "flowers102")["labels"]).ravel().astype(np.int64)
        ids = np.asarray(_loadmat(setid_file, "flowers102")[key]).ravel().astype(np.int64)
    except KeyError as exc:
        raise DataError(f"flowers102: {labels_file} or {setid_file} lacks {exc}") from None
    if ids.size and (ids.min() < 1 or ids.max() > labels.size):
        raise DataError(f"flowers102: {setid_file} {key} has image numbers outside "
                        f"1..{labels.size} (the labels of {labels_file})")
    num_classes = int(labels.max()) if labels.size else 0
    files = [home / "jpg" / f"image_{i:05d}.jpg" for i in ids]
    return ParsedSplit((labels[ids - 1] - 1).tolist(),
                       [str(c) for c in range(1, num_classes + 1)], files=files)


READERS: dict[str, Reader] = {
    "food101": read_food101, "cifar100": read_cifar100, "birdsnap": read_birdsnap,
    "sun397": read_sun397, "cars": read_cars, "aircraft": read_aircraft,
    "voc2007": read_voc2007, "dtd": read_dtd, "pets": read_pets,
    "caltech101": read_caltech101, "flowers102": read_flowers102,
}
