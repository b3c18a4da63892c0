"""Kornblith et al. 2019's transfer datasets: each official layout rebuilt as a tiny tree (a few
4x4 JPEGs per class) and read back by name; the protocol table; missing and malformed copies;
pre-split ImageFolder copies, including the real Caltech-101 subset of ../shared/data."""

from __future__ import annotations

import logging
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
from benchmark_trees import (
    BUILDERS,
    CALTECH_COUNTS,
    CIFAR100_CLASSES,
    VOC_OBJECTS,
    build_birdsnap,
    build_caltech101,
    build_cifar100,
    build_dtd,
    build_flowers102,
    build_pets,
    build_sun397,
    build_voc2007,
    jpeg,
    voc_row,
)

import pretrain.data.benchmark as benchmark
from pretrain.data import DATASETS, MissingSplitError, load_dataset
from pretrain.data.benchmark import (
    BENCHMARK,
    CALTECH_TRAIN_PER_CLASS,
    DatasetNotFoundError,
    locate,
)
from pretrain.errors import DataError

# The protocol (Kornblith et al. 2019, Sec. 3 and Table A1): editing this table is deliberate.
PROTOCOL = {  # name: (classes, headline metric)
    "food101": (101, "top1"), "cifar10": (10, "top1"), "cifar100": (100, "top1"),
    "birdsnap": (500, "top1"), "sun397": (397, "top1"), "cars": (196, "top1"),
    "aircraft": (100, "mean_per_class"), "voc2007": (20, "map11"), "dtd": (47, "top1"),
    "pets": (37, "mean_per_class"), "caltech101": (102, "mean_per_class"),
    "flowers102": (102, "mean_per_class"),
}


@pytest.fixture
def no_shared_copies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Search roots that hold nothing (a developer's ../shared/data may hold real copies)."""
    empty = tmp_path / "shared"
    empty.mkdir()
    monkeypatch.setattr(benchmark, "shared_data_dirs", lambda: [empty])
    return empty


def test_protocol_table() -> None:
    assert list(BENCHMARK) == list(PROTOCOL)  # the paper's order
    for name, (classes, metric) in PROTOCOL.items():
        spec = BENCHMARK[name]
        assert (spec.num_classes, spec.metric) == (classes, metric), name
        assert name in DATASETS
        assert set(spec.splits) <= {"train", "val", "test"} and "train" in spec.splits
        assert spec.url.startswith("http") and "Kornblith" in spec.split_rule
    assert [n for n, s in BENCHMARK.items() if "val" in s.splits] == [
        "aircraft", "voc2007", "dtd", "flowers102"]
    assert [n for n, s in BENCHMARK.items() if not s.downloadable] == ["birdsnap", "sun397", "cars"]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_official_layout_reads_every_split(name: str, tmp_path: Path) -> None:
    expected = BUILDERS[name](tmp_path / "root")
    root, cache = str(tmp_path / "root"), str(tmp_path / "cache")
    assert locate(name, root=root, cache_dir=cache) == tmp_path / "root" / expected.home
    loaded = {}
    for split, n in expected.sizes.items():
        ds = load_dataset(name, split, root=root, cache_dir=cache)
        assert len(ds) == n, split
        assert len(ds.classes) == expected.num_classes
        assert ds.info.metric == BENCHMARK[name].metric
        if ds.files is not None:
            assert all(f.is_file() for f in ds.files)
            assert ds.files == sorted(ds.files, key=lambda p: p.as_posix())
        loaded[split] = ds
    if expected.probe is not None:
        split, rel, label = expected.probe
        ds = loaded[split]
        index = (ds.files or []).index(tmp_path / "root" / expected.home / rel)
        np.testing.assert_array_equal(ds.targets[index], label)
    if expected.missing is not None:
        with pytest.raises(MissingSplitError, match=f"not '{expected.missing}'"):
            load_dataset(name, expected.missing, root=root, cache_dir=cache)


def test_cifar100_binary_records(tmp_path: Path) -> None:
    build_cifar100(tmp_path)
    train = load_dataset("cifar100", "train", root=str(tmp_path), cache_dir=str(tmp_path / "c"))
    assert train.classes == CIFAR100_CLASSES and train.targets == [0, 1, 2, 1, 0]
    assert train.array is not None and train.array.shape == (5, 32, 32, 3)
    assert train.array.dtype == np.uint8 and train.info.preset == "cifar"
    np.testing.assert_array_equal(train.array[3, 5, 9], [5, 9, 3])  # CHW -> HWC, row 5
    assert "train.bin" in train.source
    (tmp_path / "cifar-100-binary" / "test.bin").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match="test.bin is not a CIFAR-100 binary file"):
        load_dataset("cifar100", "test", root=str(tmp_path), cache_dir=str(tmp_path / "c"))


def test_cifar100_python_copy_is_never_unpickled_unverified(tmp_path: Path) -> None:
    flag = tmp_path / "unpickled"
    home = tmp_path / "root" / "cifar-100-python"
    home.mkdir(parents=True)
    for part in ("meta", "train", "test"):  # would create `flag` if unpickled
        (home / part).write_bytes(pickle.dumps(_Touch(flag)))
    with pytest.raises(DataError, match="cifar100: cannot read .*cifar-100-python/train"):
        load_dataset("cifar100", "train", root=str(tmp_path / "root"),
                     cache_dir=str(tmp_path / "c"))
    assert not flag.exists()


class _Touch:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_voc2007_rows_and_root_forms(tmp_path: Path) -> None:
    build_voc2007(tmp_path)
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2007"):
        train = load_dataset("voc2007", "train", root=str(root), cache_dir=str(tmp_path / "c"))
        assert train.multilabel and train.classes[0] == "aeroplane" and len(train.classes) == 20
        rows = {f.stem: np.asarray(t) for f, t in zip(train.files or [], train.targets,
                                                      strict=True)}
        dog, person, cat = (train.classes.index(c) for c in ("dog", "person", "cat"))
        assert rows["000005"][dog] == 1 and rows["000005"][person] == -1
        assert rows["000007"][cat] == 1  # a difficult duplicate does not hide a present object
        assert (rows["000005"] == 0).sum() == 18 and rows["000005"].dtype == np.int64
    test = load_dataset("voc2007", "test", root=str(tmp_path), cache_dir=str(tmp_path / "c"))
    np.testing.assert_array_equal(test.targets[1], voc_row(VOC_OBJECTS["000002"]))
    assert min(test.targets[1]) == -1
    (tmp_path / "VOCdevkit/VOC2007/Annotations/000009.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match="cannot parse .*000009.xml"):
        load_dataset("voc2007", "val", root=str(tmp_path), cache_dir=str(tmp_path / "c"))


def _caltech_expected_train(folder: Path) -> set[Path]:
    """The rule written out: per class in sorted order, 30 of a seed-0 permutation of its
    sorted files, one generator for all classes."""
    rng = np.random.default_rng(0)
    chosen = set()
    for class_dir in sorted(folder.iterdir()):
        files = sorted(class_dir.iterdir())
        chosen |= {files[i] for i in rng.permutation(len(files))[:30]}
    return chosen


def test_caltech101_thirty_per_class(tmp_path: Path) -> None:
    build_caltech101(tmp_path)
    cache = str(tmp_path / "c")
    train = load_dataset("caltech101", "train", root=str(tmp_path), cache_dir=cache)
    test = load_dataset("caltech101", "test", root=str(tmp_path), cache_dir=cache)
    assert train.classes == sorted(CALTECH_COUNTS) and "BACKGROUND_Google" in train.classes
    assert np.bincount(train.targets).tolist() == [CALTECH_TRAIN_PER_CLASS] * 3
    assert np.bincount(test.targets).tolist() == [n - 30 for n in CALTECH_COUNTS.values()]
    assert not set(train.files or []) & set(test.files or [])
    folder = tmp_path / "caltech101" / "101_ObjectCategories"
    assert set(train.files or []) == _caltech_expected_train(folder)
    assert all(f.parent.name == train.classes[y] for f, y in zip(train.files or [],
                                                                 train.targets, strict=True))
    # Same split on a second load, and from the folder that holds 101_ObjectCategories.
    again = load_dataset("caltech101", "train", root=str(tmp_path / "caltech101"), cache_dir=cache)
    assert again.files == train.files and again.targets == train.targets


def test_birdsnap_counts_missing_downloads(tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    build_birdsnap(tmp_path)
    with caplog.at_level(logging.WARNING):
        train = load_dataset("birdsnap", "train", root=str(tmp_path), cache_dir=str(tmp_path))
    assert train.classes == ["Acadian Flycatcher", "American Avocet"]
    assert train.targets == [0, 0, 1]
    assert "1 of 4 listed images" in caplog.text and "not downloaded" in caplog.text


def test_sun397_without_partitions_says_where_to_get_them(tmp_path: Path) -> None:
    build_sun397(tmp_path)
    train = load_dataset("sun397", "train", root=str(tmp_path), cache_dir=str(tmp_path / "c"))
    assert train.classes == ["abbey", "bakery/shop"]
    for part in (tmp_path / "Partitions").iterdir():
        part.unlink()
    with pytest.raises(DataError, match="no partition file Training_01.txt .*Partitions.zip"):
        load_dataset("sun397", "train", root=str(tmp_path), cache_dir=str(tmp_path / "c"))


def test_malformed_split_file_names_the_file(tmp_path: Path) -> None:
    build_dtd(tmp_path)
    labels = tmp_path / "dtd" / "dtd" / "labels" / "val1.txt"
    labels.write_text("a line without a class folder\n")
    with pytest.raises(DataError, match=f"dtd: cannot read {labels}"):
        load_dataset("dtd", "val", root=str(tmp_path), cache_dir=str(tmp_path / "c"))
    build_flowers102(tmp_path)
    scipy.io.savemat(tmp_path / "flowers-102" / "setid.mat", {"trnid": np.array([[1, 99]])})
    with pytest.raises(DataError, match="setid.mat lacks 'valid'"):
        load_dataset("flowers102", "val", root=str(tmp_path), cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match="setid.mat trnid has image numbers outside 1..9"):
        load_dataset("flowers102", "train", root=str(tmp_path), cache_dir=str(tmp_path / "c"))


def test_missing_dataset_says_where_it_looked(tmp_path: Path, no_shared_copies: Path) -> None:
    nothing = tmp_path / "nothing"
    for call in (lambda: load_dataset("food101", root=str(nothing)),
                 lambda: locate("food101", root=str(nothing))):
        with pytest.raises(DatasetNotFoundError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and str(nothing) in message
        assert "food-101/meta/train.json" in message and "--download" in message
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "c" / "torchvision")):
        locate("food101", cache_dir=str(tmp_path / "c"))
    # No working downloader: --download says where to get it instead of trying.
    with pytest.raises(DatasetNotFoundError, match="cars not found.*car_dataset.html"):
        load_dataset("cars", cache_dir=str(tmp_path / "c"), download=True)


def test_search_roots_find_an_official_copy(tmp_path: Path, no_shared_copies: Path) -> None:
    build_pets(no_shared_copies)
    assert locate("pets", cache_dir=str(tmp_path / "c")) == no_shared_copies / "oxford-iiit-pet"
    build_flowers102(tmp_path / "c" / "torchvision")  # where --download puts it
    assert len(load_dataset("flowers102", "test", cache_dir=str(tmp_path / "c"))) == 3


def test_presplit_imagefolder_copy_keeps_the_metric(tmp_path: Path) -> None:
    for split, n in (("train", 2), ("test", 1)):
        for cls in ("daisy", "rose"):
            for i in range(n):
                jpeg(tmp_path / "copy" / "top" / split / cls / f"{i}.jpg")
    ds = load_dataset(f"flowers102:{tmp_path / 'copy' / 'top'}", "train",
                      cache_dir=str(tmp_path / "c"))
    assert ds.classes == ["daisy", "rose"] and ds.targets == [0, 0, 1, 1]
    assert ds.info.metric == "mean_per_class"
    archive = tmp_path / "copy.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "copy" / "top", arcname="top")  # one top folder
    test = load_dataset("pets", "test", root=str(archive), cache_dir=str(tmp_path / "c"))
    assert len(test) == 2 and test.info.metric == "mean_per_class" and "copy.tar.gz" in test.source
    with pytest.raises(MissingSplitError):
        load_dataset("pets", "val", root=str(archive), cache_dir=str(tmp_path / "c"))


def test_real_caltech101_subset(shared_data: Path, tmp_path: Path) -> None:
    name = "caltech101:" + str(shared_data / "cls_caltech101_subset.tar.xz")
    train = load_dataset(name, "train", cache_dir=str(tmp_path))
    test = load_dataset(name, "test", cache_dir=str(tmp_path))
    assert len(train.classes) == 101 and train.classes == test.classes
    assert (len(train), len(test)) == (1515, 1010)
    assert train.info.metric == test.info.metric == "mean_per_class"
    with pytest.raises(MissingSplitError):
        load_dataset(name, "val", cache_dir=str(tmp_path))
