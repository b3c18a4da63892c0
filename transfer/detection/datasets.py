"""Detection datasets from config: archives or folders, VOC or COCO, one class list for all.

``root`` is a folder, a ``.tar``/``.tar.xz`` archive (extracted once into ``cache_dir``), or
``shared:<archive>`` (looked up in ``$SIMCLR_DATA_DIR`` and ``../shared/data``). Several
training sets are concatenated (VOC07+12 trainval); the test set uses the training class
list, so labels mean the same thing in both.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pretrain.data import extract_archive, find_shared_archive, shared_data_dirs
from pretrain.errors import DataError
from transfer.detection.coco import coco_categories, coco_records, find_coco_files, read_coco
from transfer.detection.config import DataConfig, DatasetSpec
from transfer.detection.structures import BoxReport, DetectionDataset, ImageRecord
from transfer.detection.voc import find_voc_folder, read_voc, voc_class_names, voc_records

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")


def resolve_root(root: str, cache_dir: str) -> Path:
    """A folder for ``root``: itself, its extraction, or the shared archive's extraction."""
    if not root:
        raise DataError("a detection dataset has no root: set data.train[i].root / data.test.root")
    if root.startswith("shared:"):
        name = root.split(":", 1)[1]
        found = find_shared_archive(name)
        if found is None:
            places = ", ".join(str(d) for d in shared_data_dirs()[:3])
            raise DataError(f"shared archive {name!r} not found (looked in {places}, ...)")
        path = found
    else:
        path = Path(root).expanduser()
    if not path.exists():
        raise DataError(f"dataset path not found: {path}")
    if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
        return extract_archive(path, cache_dir)
    if not path.is_dir():
        raise DataError(f"dataset root is neither a folder nor a .tar archive: {path}")
    return path


def describe_spec(spec: DatasetSpec) -> str:
    """``voc:det_bccd_voc:test``: format, root's base name (no archive suffix), split."""
    name = spec.root.split(":", 1)[1] if spec.root.startswith("shared:") else spec.root
    name = Path(name.rstrip("/")).name
    for suffix in ARCHIVE_SUFFIXES:
        name = name.removesuffix(suffix)
    sub = f"/{spec.subdir}" if spec.subdir else ""
    return f"{spec.format}:{name}{sub}:{spec.split}"


def _warn(report: BoxReport, name: str) -> None:
    if report.total:
        print(report.message(name), file=sys.stderr)
    if report.clipped:
        print(report.clip_message(name), file=sys.stderr)


def load_detection_data(cfg: DataConfig) -> tuple[DetectionDataset, DetectionDataset, dict]:
    """Training set (all of ``cfg.train`` concatenated) and test set, plus load statistics.

    Returns:
        (train, test, stats) where ``stats`` has ``dropped_train``/``dropped_test`` and
        ``clipped_train``/``clipped_test`` counts.
    """
    fmt = cfg.test.format
    train_report, test_report = BoxReport(), BoxReport()
    train_records: list[ImageRecord] = []
    if fmt == "voc":
        train_anns = [
            read_voc(find_voc_folder(resolve_root(s.root, cfg.cache_dir), s.subdir), s.split)
            for s in cfg.train
        ]
        classes = list(cfg.classes) or voc_class_names([a for anns in train_anns for a in anns])
        if not classes:
            raise DataError("the training annotations hold no objects; set data.classes")
        for anns in train_anns:
            train_records += voc_records(anns, classes, train_report, len(train_records))
        t = cfg.test
        test_anns = read_voc(find_voc_folder(resolve_root(t.root, cfg.cache_dir), t.subdir), t.split)
        test_records = voc_records(test_anns, classes, test_report)
        category_ids = list(range(1, len(classes) + 1))
    else:
        classes, category_ids = [], []
        for spec in [*cfg.train, cfg.test]:
            base = resolve_root(spec.root, cfg.cache_dir)
            ann_file, images = find_coco_files(base, spec.split, spec.images, spec.annotations)
            coco = read_coco(ann_file)
            names, ids = coco_categories(coco)
            if cfg.classes and names != list(cfg.classes):
                raise DataError(f"{ann_file}: categories {names[:5]}... differ from data.classes")
            if category_ids and ids != category_ids:
                raise DataError(f"{ann_file}: categories differ from the other COCO sets")
            classes, category_ids = names, ids
            report = test_report if spec is cfg.test else train_report
            records = coco_records(coco, images, category_ids, report, ann_file)
            if spec is cfg.test:
                test_records = records
            else:
                train_records += records
    name = "+".join(describe_spec(s) for s in cfg.train)
    _warn(train_report, name)
    _warn(test_report, describe_spec(cfg.test))
    if not train_records:
        raise DataError(f"no training images in {name}")
    train = DetectionDataset(name, train_records, classes, category_ids).subset(cfg.limit_train)
    test = DetectionDataset(describe_spec(cfg.test), test_records, classes, category_ids)
    stats = {
        "dropped_train": train_report.total,
        "dropped_test": test_report.total,
        "dropped_reasons": dict(train_report.dropped + test_report.dropped),
        "clipped_train": train_report.clipped,
        "clipped_test": test_report.clipped,
    }
    return train, test.subset(cfg.limit_test), stats
