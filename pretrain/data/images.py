"""Images with labels, the dataset registry, and the built-in datasets.

Datasets by name, yielding ``(PIL RGB image, int label)``; labels are -1 where there are none
(the transfer benchmark's datasets are in :mod:`pretrain.data.benchmark`).

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, no file needed),
  scaled to [0, 255], upsampled to 16x16 and replicated to RGB. Split: a fixed seeded
  stratified 75/25 train/test split.
* ``cifar10``: a local archive (``cifar10.tar.xz``) or folder with ``train/<class>/*.jpg`` and
  ``test/<class>/*.jpg``; decoded once into a uint8 array cached beside the extraction.
  Without a local copy, torchvision's downloader is tried (only where a network exists).
* ``imagefolder:<path>``: ``<path>/<split>/<class>/*``, or ``<path>/<class>/*``, or a flat folder
  of images (unlabelled); ``<path>`` may also be a ``.tar``/``.tar.gz``/``.tar.xz`` archive.

Missing paths, empty folders and unreadable images raise :class:`DataError` naming the path; a
split the dataset does not have raises :class:`MissingSplitError`.

What the images are is :func:`dataset_fingerprint` (cheap: one ``stat`` per file), which the
feature cache keys on; an archive is extracted again when it changes (its size or mtime).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from pretrain.config import DEFAULT_CACHE_DIR
from pretrain.errors import DataError
from pretrain.registry import Registry


class MissingSplitError(DataError):
    """The dataset exists but has no such split (probes then fall back to another one)."""


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}
DIGITS_SIZE = 16  # pixels; the originals are 8x8
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".tar.bz2")


# What a transfer protocol reports per dataset (Kornblith et al. 2019, Sec. 3 and Table A1):
# top-1 accuracy, mean per-class accuracy, or VOC2007's 11-point mAP over its 20 classes.
HEADLINE_METRICS = ("top1", "mean_per_class", "map11")


@dataclass(frozen=True)
class DatasetInfo:
    """What an augmentation or evaluation transform needs to know about a dataset."""

    preset: str  # "digits" | "cifar" | "imagenet": augmentation and eval transform family
    image_size: int  # default crop size in pixels
    metric: str = "top1"  # the protocol's headline metric, one of HEADLINE_METRICS

    @property
    def multilabel(self) -> bool:
        """Targets are (C,) rows of 1 (present), 0 (absent), -1 (ignored: difficult only)."""
        return self.metric == "map11"


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB; a missing or unreadable file is a :class:`DataError` naming it."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


class ImageDataset(Dataset):
    """Images with integer labels (-1 when unlabelled), held in memory or read from files.

    Exactly one of ``array`` (N, H, W, 3) uint8 or ``files`` is given. ``targets`` are class
    indices, or for a multi-label dataset (``info.multilabel``: VOC2007) one (C,) int64 row per
    image of 1 (present), 0 (absent) and -1 (ignored). ``source`` says where
    an array came from (what produced its bytes: an archive's identity, library releases), for
    :func:`dataset_fingerprint`.
    """

    def __init__(
        self,
        name: str,
        targets: list[int],
        classes: list[str],
        info: DatasetInfo,
        array: np.ndarray | None = None,
        files: list[Path] | None = None,
        source: str = "",
    ) -> None:
        if (array is None) == (files is None):
            raise ValueError("give exactly one of array or files")
        self.name = name
        self.targets = list(targets)
        self.classes = classes
        self.info = info
        self.array = array
        self.files = files
        self.source = source
        n = len(array) if array is not None else len(files or [])
        if n != len(self.targets):
            raise ValueError(f"{n} images but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.targets)

    @property
    def multilabel(self) -> bool:
        return self.info.multilabel

    def load_image(self, index: int) -> Image.Image:
        if self.array is not None:
            return Image.fromarray(self.array[index])
        return load_rgb(self.files[index])  # type: ignore[index]

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        return self.load_image(index), self.targets[index]

    def select(self, indices: np.ndarray | list[int]) -> ImageDataset:
        """The images at ``indices``, in that order, with the same classes and info."""
        keep = np.asarray(indices, dtype=np.int64)
        return ImageDataset(
            self.name,
            [self.targets[i] for i in keep],
            self.classes,
            self.info,
            array=None if self.array is None else self.array[keep],
            files=None if self.files is None else [self.files[i] for i in keep],
            source=self.source,
        )

    def subset(self, limit: int, seed: int = 0) -> ImageDataset:
        """A fixed seeded random ``limit`` images, in dataset order (all when ``limit`` <= 0).

        Random rather than the first N: class-sorted datasets (CIFAR-10's folders) would
        otherwise give one class.
        """
        if limit <= 0 or limit >= len(self):
            return self
        return self.select(np.sort(np.random.default_rng(seed).permutation(len(self))[:limit]))


class TransformedDataset(Dataset):
    """Apply ``transform`` to the images of ``base``; yields ``(transform(img), label)``."""

    def __init__(self, base: ImageDataset, transform: Callable[[Image.Image], Any]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img, label = self.base[index]
        return self.transform(img), label


def file_stats(files: list[Path]) -> str:
    """Digest of every file's path, size and modification time (ns): changes when any image is
    edited, added, removed or renamed, at the cost of one ``stat`` per file."""
    h = hashlib.blake2b(digest_size=16)
    for path in files:
        try:
            st = path.stat()
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{path}\0missing\n".encode())
    return h.hexdigest()


def file_identity(path: Path) -> str:
    """An archive's resolved path, size and modification time (ns), on one line."""
    st = path.stat()
    return f"{path.resolve()} size={st.st_size} mtime_ns={st.st_mtime_ns}"


def dataset_fingerprint(dataset: ImageDataset) -> str:
    """A cheap digest of what the images of ``dataset`` are (the feature cache's content key).

    Files: every file's path, size and mtime (:func:`file_stats`) plus the dataset's
    ``source`` (an archive's identity). Arrays: their ``source`` (the archive or the library
    releases that produced them), or a hash of their bytes where no source is known.
    """
    parts = [dataset.name, dataset.source]
    if dataset.files is not None:
        parts.append(file_stats(dataset.files))
    elif not dataset.source and dataset.array is not None:
        parts.append(hashlib.blake2b(np.ascontiguousarray(dataset.array).tobytes(),
                                     digest_size=16).hexdigest())
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()


Loader = Callable[[str, str, str, str, bool], ImageDataset]  # (arg, split, root, cache_dir,
#                                                                download)
DATASETS: Registry[Loader] = Registry("dataset")


def shared_data_dirs() -> list[Path]:
    """Where bundled archives are looked for: $SIMCLR_DATA_DIR, then ../shared/data upwards."""
    dirs = []
    if os.environ.get("SIMCLR_DATA_DIR"):
        dirs.append(Path(os.environ["SIMCLR_DATA_DIR"]))
    for base in [Path.cwd(), Path(__file__).resolve().parents[2]]:  # the checkout
        for parent in [base, *base.parents][:4]:
            dirs.append(parent / "shared" / "data")
    return dirs


def find_shared_archive(filename: str) -> Path | None:
    for d in shared_data_dirs():
        if (d / filename).is_file():
            return d / filename
    return None


def extract_archive(archive: Path, cache_dir: str | Path) -> Path:
    """Extract ``archive`` once into ``cache_dir/<archive stem>/`` and return that folder.

    A ``.complete`` marker holding the archive's identity (path, size, mtime) is written last,
    so an interrupted extraction is redone, and so is one of an archive since replaced or
    edited (the old extraction is removed first: no stale image survives).
    """
    archive = Path(archive)
    if not archive.is_file():
        raise DataError(f"archive not found: {archive}")
    stem = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    target = Path(cache_dir) / stem
    marker = target / ".complete"
    identity = file_identity(archive)
    if marker.is_file():
        if marker.read_text() == identity:
            return target
        shutil.rmtree(target)  # ours (it has our marker), from another version of the archive
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot extract archive {archive}: {exc}") from None
    marker.write_text(identity)
    return target


def _is_archive(path: Path) -> bool:
    return path.name.endswith(ARCHIVE_SUFFIXES)


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def scan_image_folder(root: Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    """Files, labels and class names of ``root/<split>/<class>/*`` (or its fallbacks)."""
    if not root.exists():
        raise DataError(f"dataset path not found: {root}")
    folder = root / split if (root / split).is_dir() else root
    if folder is root and any((root / s).is_dir() for s in ("train", "test", "val")):
        raise MissingSplitError(f"no {split!r} split in {root} (expected {root / split})")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    if class_dirs:
        for label, class_dir in enumerate(class_dirs):
            images = _list_images(class_dir)
            files += images
            labels += [label] * len(images)
        classes = [p.name for p in class_dirs]
    else:  # a flat folder of unlabelled images
        files = _list_images(folder)
        labels = [-1] * len(files)
        classes = []
    if not files:
        raise DataError(f"no images found in {folder}")
    return files, labels, classes


def _decode_to_array(files: list[Path], size: int) -> np.ndarray:
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                if img.size != (size, size):
                    img = img.resize((size, size), Image.Resampling.BILINEAR)
                out[i] = np.asarray(img)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DataError(f"cannot read image {path}: {exc}") from None
    return out


@functools.lru_cache(maxsize=2)
def _digits_split(split: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """(N, S, S, 3) uint8 images and labels of one digits split (computed once per process)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8), values 0..16
    train_idx, test_idx = train_test_split(
        np.arange(len(images)), test_size=0.25, random_state=0, stratify=digits.target
    )
    chosen = np.sort(train_idx if split == "train" else test_idx)
    # Bilinear upsampling to 16x16 keeps strokes smooth enough for crops to make sense while a
    # CPU step stays 4x cheaper than at 32x32.
    size = DIGITS_SIZE
    bilinear = Image.Resampling.BILINEAR
    big = np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), bilinear)) for im in images[chosen]]
    )
    rgb = np.repeat(big[..., None], 3, axis=-1)
    rgb.setflags(write=False)
    return rgb, tuple(digits.target[chosen].tolist())


@DATASETS.register("digits")
def load_digits_dataset(arg: str, split: str, root: str, cache_dir: str,
                        download: bool = False) -> ImageDataset:
    if split not in ("train", "test"):
        raise MissingSplitError(f"digits has splits train and test, not {split!r}")
    import PIL
    import sklearn

    images, labels = _digits_split(split)
    return ImageDataset(
        "digits",
        list(labels),
        [str(c) for c in range(10)],
        DatasetInfo(preset="digits", image_size=DIGITS_SIZE),
        array=images,
        # the bytes are sklearn's bundled digits, resized by Pillow
        source=f"sklearn={sklearn.__version__} pillow={PIL.__version__}",
    )


@DATASETS.register("cifar10")
def load_cifar10(arg: str, split: str, root: str, cache_dir: str,
                 download: bool = False) -> ImageDataset:
    info = DatasetInfo(preset="cifar", image_size=32)
    if split not in ("train", "test"):
        raise MissingSplitError(f"cifar10 has splits train and test, not {split!r}")
    source = Path(root) if root else find_shared_archive("cifar10.tar.xz")
    if source is None:
        return _download_cifar10(split, cache_dir, info)
    scanned = None
    if _is_archive(source):  # the extraction is redone whenever the archive changes
        folder = extract_archive(source, cache_dir)
        identity = file_identity(source)
    else:  # a folder: its decoded copy is valid while no image changed
        folder = source
        scanned = scan_image_folder(folder, split)
        identity = f"{folder.resolve()} files={file_stats(scanned[0])}"
    cached = folder / f".{split}_uint8.npz"
    if cached.is_file():
        with np.load(cached) as npz:
            if "source" in npz and str(npz["source"]) == identity:
                return ImageDataset("cifar10", npz["labels"].tolist(), list(npz["classes"]), info,
                                    array=npz["images"], source=identity)
    files, labels, classes = scanned or scan_image_folder(folder, split)
    array = _decode_to_array(files, 32)
    tmp = cached.with_name(cached.name + ".tmp.npz")
    try:
        np.savez(tmp, images=array, labels=np.asarray(labels), classes=np.asarray(classes),
                 source=np.asarray(identity))
        os.replace(tmp, cached)
    except OSError:  # a read-only ImageFolder: decode again next time rather than fail
        pass
    return ImageDataset("cifar10", labels, classes, info, array=array, source=identity)


def _download_cifar10(split: str, cache_dir: str, info: DatasetInfo) -> ImageDataset:
    import torchvision

    try:
        ds = torchvision.datasets.CIFAR10(
            str(Path(cache_dir) / "torchvision"), train=split == "train", download=True
        )
    except Exception as exc:  # no network, or a broken download
        raise DataError(
            f"cifar10: no local copy (set data.root to cifar10.tar.xz or an ImageFolder) "
            f"and the download failed: {exc}"
        ) from None
    return ImageDataset("cifar10", list(ds.targets), list(ds.classes), info, array=ds.data,
                        source=f"torchvision download {Path(ds.root).resolve()}")


@DATASETS.register("imagefolder")
def load_image_folder(arg: str, split: str, root: str, cache_dir: str,
                      download: bool = False) -> ImageDataset:
    if not arg:
        raise DataError("imagefolder needs a path: data.name=imagefolder:/path/to/images")
    path = Path(arg).expanduser()
    source = ""
    if _is_archive(path):
        folder = extract_archive(path, cache_dir)  # a missing archive is a DataError
        source, path = file_identity(path), folder
        subdirs = [p for p in path.iterdir() if p.is_dir()]
        if len(subdirs) == 1 and not (path / split).is_dir():  # archive with one top folder
            path = subdirs[0]
    files, labels, classes = scan_image_folder(path, split)
    size = _guess_image_size(files[0])
    preset = "cifar" if size <= 64 else "imagenet"
    info = DatasetInfo(preset=preset, image_size=32 if size <= 32 else (64 if size <= 64 else 224))
    return ImageDataset(f"imagefolder:{arg}", labels, classes, info, files=files, source=source)


def _guess_image_size(path: Path) -> int:
    try:
        with Image.open(path) as img:
            return min(img.size)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def load_dataset(
    name: str,
    split: str = "train",
    root: str = "",
    cache_dir: str = DEFAULT_CACHE_DIR,
    limit: int = 0,
    download: bool = False,
) -> ImageDataset:
    """Load dataset ``name`` (``digits``, ``cifar10``, ``imagefolder:<path>``, a transfer
    benchmark name such as ``food101`` or ``caltech101:<path>``) at ``split``.

    ``download``: fetch it with torchvision's downloader where the dataset allows it and no
    local copy is found (needs a network).
    """
    key, _, arg = name.partition(":")
    loader = DATASETS.get(key)
    return loader(arg, split, root, cache_dir, download).subset(limit)
