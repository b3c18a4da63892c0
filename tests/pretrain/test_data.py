"""Datasets by name, archives, augmentation presets and the errors for bad data."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pretrain.augment import TwoViews, eval_transform, resolve_recipe, simclr_transform
from pretrain.config import AugmentConfig
from pretrain.data import DIGITS_SIZE, extract_archive, load_dataset
from pretrain.errors import DataError, UserError


def _write_images(folder: Path, n: int, size: int = 8, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            folder / f"{i}.png"
        )


def test_digits_splits_are_disjoint_and_rgb() -> None:
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797 and len(test) == 450
    img, label = train[0]
    assert img.mode == "RGB" and img.size == (DIGITS_SIZE, DIGITS_SIZE) and 0 <= label <= 9
    assert set(train.targets) == set(range(10))
    # The two splits hold different images (no duplicated rows between them).
    tr = {train.array[i].tobytes() for i in range(len(train))}  # type: ignore[index]
    overlap = sum(test.array[i].tobytes() in tr for i in range(len(test)))  # type: ignore[index]
    assert overlap < 5  # the digits data holds a few genuine duplicate images
    assert len(load_dataset("digits", "train", limit=10)) == 10


def test_imagefolder_labelled_and_flat(tmp_path: Path) -> None:
    _write_images(tmp_path / "ds" / "train" / "cat", 3)
    _write_images(tmp_path / "ds" / "train" / "dog", 2)
    ds = load_dataset(f"imagefolder:{tmp_path / 'ds'}", "train")
    assert ds.classes == ["cat", "dog"] and ds.targets == [0, 0, 0, 1, 1]
    _write_images(tmp_path / "flat", 4)
    flat = load_dataset(f"imagefolder:{tmp_path / 'flat'}", "train")
    assert flat.targets == [-1] * 4 and flat.classes == []  # unlabelled pretraining
    with pytest.raises(DataError, match="no 'test' split"):
        load_dataset(f"imagefolder:{tmp_path / 'ds'}", "test")


def test_cifar10_from_a_local_archive(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("airplane", "bird"):
            _write_images(src / split / cls, n, size=32)
    archive = tmp_path / "cifar10.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        for part in ("train", "test"):
            tar.add(src / part, arcname=part)
    cache = tmp_path / "cache"
    train = load_dataset("cifar10", "train", root=str(archive), cache_dir=str(cache))
    assert len(train) == 6 and train.classes == ["airplane", "bird"]
    assert train.array is not None and train.array.shape == (6, 32, 32, 3)
    assert (cache / "cifar10" / ".complete").is_file()
    again = load_dataset("cifar10", "train", root=str(archive), cache_dir=str(cache))  # cached
    np.testing.assert_array_equal(again.array, train.array)
    assert extract_archive(archive, cache) == cache / "cifar10"


@pytest.mark.slow
def test_cifar10_from_shared_archive(shared_data: Path, data_cache: Path) -> None:
    test = load_dataset(
        "cifar10", "test", root=str(shared_data / "cifar10.tar.xz"), cache_dir=str(data_cache)
    )
    assert len(test) == 10_000 and len(test.classes) == 10


def test_missing_empty_and_corrupt_data_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset path not found: /nonexistent/x"):
        load_dataset("imagefolder:/nonexistent/x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=f"no images found in {tmp_path / 'empty'}"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    bad = tmp_path / "bad"
    _write_images(bad, 2)
    (bad / "2.png").write_bytes(b"not an image at all")
    ds = load_dataset(f"imagefolder:{bad}")
    with pytest.raises(DataError, match=r"cannot read image .*2\.png"):
        ds[2]
    with pytest.raises(UserError, match="valid: .*cifar10.*digits.*imagefolder"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="archive not found"):
        load_dataset("cifar10", root=str(tmp_path / "missing.tar.xz"))


def test_simclr_views_and_presets() -> None:
    ds = load_dataset("digits", "train", limit=4)
    recipe = resolve_recipe(AugmentConfig(), ds.info)
    assert recipe.color_strength == 0.5 and not recipe.blur and recipe.image_size == DIGITS_SIZE
    torch.manual_seed(0)
    v1, v2 = TwoViews(simclr_transform(recipe))(ds[0][0])
    assert v1.shape == v2.shape == (3, DIGITS_SIZE, DIGITS_SIZE)
    assert not torch.equal(v1, v2)  # two independent views
    ev = eval_transform(recipe)
    torch.testing.assert_close(ev(ds[0][0]), ev(ds[0][0]))  # deterministic
    imagenet = resolve_recipe(AugmentConfig(preset="imagenet", image_size=224), ds.info)
    assert imagenet.color_strength == 1.0 and imagenet.blur
    cifar = resolve_recipe(AugmentConfig(preset="cifar"), ds.info)
    assert cifar.color_strength == 0.5 and not cifar.blur
    with pytest.raises(UserError, match="unknown augment.preset"):
        resolve_recipe(AugmentConfig(preset="coco"), ds.info)
