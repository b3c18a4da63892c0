"""Which training images carry labels: class-balanced seeded fractions, or an explicit list.

SimCLR and SimCLRv2 fine-tune on 1% and 10% of ImageNet's labels, "sampled in a class-balanced
way" (Chen et al. 2020a, Sec. 6; the official lists ``1percent.txt`` / ``10percent.txt`` of
Zhai et al. 2019 hold one file name per line, e.g. ``n01440764_10026.JPEG``).

* :func:`label_subset`: ``fraction`` of the training images, the same number from every class
  (``round(fraction * N / K)``, at least one; a class with fewer images gives all it has), drawn
  with a seeded generator: the same seed gives the same subset, another seed another one.
  ``fraction = 1`` is every image.
* :func:`subset_from_file`: the images a list names, by file name (or by index, one integer
  per line, for in-memory datasets such as digits and CIFAR-10).
* :func:`validation_holdout`: model selection never sees test: a seeded stratified hold-out
  of the labelled subset (:func:`pretrain.data.stratified_holdout`, as the linear probe's).

Indices always refer to the training split and are returned sorted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pretrain.data import stratified_holdout
from pretrain.errors import DataError, UserError


@dataclass(frozen=True)
class LabelledSubset:
    """The labelled images of one fine-tuning.

    Attributes:
        indices: training-split indices, sorted.
        fraction: the share of the training split asked for (a file: its actual share).
        source: ``"fraction"`` or ``"file:<name>"``.
        per_class: images per class in the subset.
    """

    indices: np.ndarray
    fraction: float
    source: str
    per_class: dict[int, int]

    def __len__(self) -> int:
        return len(self.indices)


def _per_class(labels: np.ndarray, indices: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(labels[indices], return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def label_subset(labels: Sequence[int] | np.ndarray, fraction: float, seed: int = 0) -> LabelledSubset:
    """A class-balanced, seeded ``fraction`` of the images with ``labels`` (see the module doc)."""
    labels = np.asarray(labels)
    if not 0.0 < fraction <= 1.0:
        raise UserError(f"--label-fraction must be in (0, 1], got {fraction:g}")
    if fraction >= 1.0:
        everything = np.arange(len(labels))
        return LabelledSubset(everything, 1.0, "fraction", _per_class(labels, everything))
    classes = np.unique(labels)
    per_class = max(1, int(round(fraction * len(labels) / len(classes))))
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    indices = np.sort(np.concatenate(chosen))
    return LabelledSubset(indices, fraction, "fraction", _per_class(labels, indices))


def subset_from_file(path: str | Path, files: Sequence[Path] | None, labels: Sequence[int]
                     ) -> LabelledSubset:
    """The images listed in ``path``: file names (matched against the names of ``files``, the
    training split's files) or integer indices, one per line; ``#`` starts a comment.

    A name the split does not have, an index out of range, or an empty list is a one-line
    :class:`DataError` naming the file.
    """
    path = Path(path)
    try:
        lines = [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
    except OSError as exc:
        raise DataError(f"cannot read subset file {path}: {exc.strerror or exc}") from None
    entries = [ln for ln in lines if ln]
    if not entries:
        raise DataError(f"subset file {path} lists no images")
    n = len(labels)
    if all(e.isdigit() for e in entries):
        idx = np.array(sorted({int(e) for e in entries}), dtype=np.int64)
        if idx.max() >= n:
            raise DataError(f"subset file {path}: index {int(idx.max())} is out of range for "
                            f"{n} training images")
    else:
        if files is None:
            raise DataError(f"subset file {path} names files, but this dataset is held in "
                            "memory without file names; list integer indices instead")
        by_name: dict[str, int] = {}
        for i, f in enumerate(files):
            by_name.setdefault(Path(f).name, i)
        missing = [e for e in entries if Path(e).name not in by_name]
        if missing:
            raise DataError(f"subset file {path}: {len(missing)} of {len(entries)} names are not "
                            f"in the training split (e.g. {', '.join(missing[:3])})")
        idx = np.array(sorted({by_name[Path(e).name] for e in entries}), dtype=np.int64)
    arr = np.asarray(labels)
    return LabelledSubset(idx, round(len(idx) / n, 6), f"file:{path.name}", _per_class(arr, idx))


def validation_holdout(labels: Sequence[int] | np.ndarray, subset: LabelledSubset,
                       fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, val indices) of the training split: a seeded stratified ``fraction`` of
    ``subset`` held out for selection (classes with one labelled image stay in fit)."""
    labels = np.asarray(labels)
    fit_pos, val_pos = stratified_holdout(labels[subset.indices], fraction, seed)
    if len(val_pos) == 0:
        raise UserError(f"{len(subset)} labelled images leave none for a validation split; "
                        "raise --label-fraction or fix the hyper-parameters (one value in "
                        "--lr-grid and --wd-grid)")
    return subset.indices[fit_pos], subset.indices[val_pos]
