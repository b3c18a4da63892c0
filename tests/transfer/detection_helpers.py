"""Shared helpers for the detection tests: extracted archives, tiny VOC folders, fast settings."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pretrain.data import extract_archive

# Settings that make a detection run take seconds on a CPU (tiny images, few ROIs).
FAST = [
    "model.min_size_train=[96]",
    "model.min_size_test=96",
    "model.max_size=128",
    "model.roi_batch_size=16",
    "model.proposals_test=50",
    "train.batch_size=2",
    "train.max_iter=2",
    "train.warmup_iters=1",
    "train.progress=false",
    "data.num_workers=0",
    "data.limit_train=8",
    "data.limit_test=4",
    "eval.batch_size=2",
]


def bccd_root(shared_data: Path, cache: Path) -> Path:
    """The extraction of det_bccd_voc.tar.xz (holds VOCdevkit/BCCD)."""
    return extract_archive(shared_data / "det_bccd_voc.tar.xz", cache)


def coco_root(shared_data: Path, cache: Path) -> Path:
    """The extraction of det_coco_mini.tar.xz (holds coco_mini/)."""
    return extract_archive(shared_data / "det_coco_mini.tar.xz", cache)


def make_voc(dest: Path, bccd: Path, splits: dict[str, list[str]]) -> Path:
    """A small VOC folder named ``dest`` with BCCD files for the given ``{split: [ids]}``."""
    src = bccd / "VOCdevkit" / "BCCD"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for split, ids in splits.items():
        (dest / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i in ids:
            shutil.copy(src / "Annotations" / f"{i}.xml", dest / "Annotations")
            shutil.copy(src / "JPEGImages" / f"{i}.jpg", dest / "JPEGImages")
    return dest


def voc_overrides(folder: Path, cache: Path, train: str = "train", test: str = "test") -> list[str]:
    return [
        f"data.train=[{{format: voc, root: '{folder}', split: {train}}}]",
        f"data.test={{format: voc, root: '{folder}', split: {test}}}",
        f"data.cache_dir={cache}",
    ]


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    """One intra-op thread: on tiny detection inputs OpenMP threads cost more than they give,
    and far more on a shared CPU (4x slower measured with 2 threads under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

