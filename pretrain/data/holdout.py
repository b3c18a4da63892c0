"""The seeded stratified hold-out: the validation split carved out of a train split.

One function, used wherever a protocol needs validation images and the dataset has no val split:
hyper-parameter selection in the probes (:mod:`probes.linear`) and the training loop's online
k-NN monitor (:mod:`pretrain.monitor`), so that neither ever selects or monitors on test.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def stratified_holdout(
    labels: Sequence[int] | np.ndarray, fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(labels))`` into (train, val) index arrays.

    Each class gives ``round(fraction * n_c)`` images to val (at least one when it has two or
    more, none when it has one), so every class stays in train. Both arrays are sorted.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    val: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        n_val = min(max(int(round(fraction * len(idx))), 1), len(idx) - 1)
        val.append(rng.permutation(idx)[:n_val])
    val_idx = np.sort(np.concatenate(val)) if val else np.empty(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx
