"""The online k-NN monitor: weighted k-NN top-1 of the encoder while it trains.

What solo-learn and lightly print every epoch (lightly's CIFAR-10 benchmark table is built from
it): the clean (evaluation-transform) features of a labelled bank vote for the class of each
validation image, with the weighted rule of Wu et al. 2018 (k = 200, T = 0.1 by default;
:func:`pretrain.knn.knn_scores`), and the monitor logs top-1 accuracy in percent per tap as
``monitor/knn_top1/<tap>``.

Honest by construction: by default the validation images are a seeded stratified hold-out of
the training split (:func:`pretrain.data.stratified_holdout`, 10 %) and the bank is the rest of
it, so a run is never watched, or stopped early, on test. ``train.monitor_split=test`` uses the
whole training split as the bank and the test split as validation, only when asked; every
logged record says which split it used (``monitor/split``).

Under torchrun every rank calls :meth:`KNNMonitor.__call__`: the extraction is sharded and
gathered (:func:`pretrain.features.extract_features`), each rank scores the same gathered
features, and only rank 0 writes. The model's mode and the global RNG are left as they were, so a
monitored run ends with the same weights as an unmonitored one and resumes exactly.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pretrain.augment import ViewRecipe, eval_transform
from pretrain.data import ImageDataset, stratified_holdout
from pretrain.errors import ConfigError
from pretrain.features import extract_features
from pretrain.knn import knn_scores
from pretrain.model import SimCLRModel

MONITOR_SPLITS = ("holdout", "test")
HOLDOUT_FRACTION = 0.1  # of the training split, stratified and seeded (train.seed)
METRIC_PREFIX = "monitor/knn_top1/"  # + tap: the metrics.jsonl key of the monitor's accuracy
SPLIT_KEY = "monitor/split"  # which validation images the monitor used
SECONDS_KEY = "monitor/time_s"  # the monitor's own cost, per call


def monitor_key(tap: str) -> str:
    """The metrics.jsonl key of the monitor's top-1 at ``tap``: ``monitor/knn_top1/h``."""
    return METRIC_PREFIX + tap


def unusable_reason(dataset: ImageDataset) -> str | None:
    """Why the monitor cannot run on ``dataset`` (no labels, multi-label), or None."""
    if dataset.multilabel:
        return f"{dataset.name} is multi-label; the k-NN monitor scores single-label top-1"
    if not dataset.targets or min(dataset.targets) < 0:
        return f"{dataset.name} has no labels"
    return None


@dataclass
class KNNMonitor:
    """Weighted k-NN top-1 of ``taps`` with a fixed bank and validation set.

    Attributes:
        bank: labelled images whose features vote (N images).
        val: labelled validation images (M images), disjoint from ``bank``.
        recipe: the views of the run; the clean evaluation transform is taken from it.
        taps: model taps to score, e.g. ("h",) or ("h", "z").
        split: "holdout" or "test", recorded with every result.
    """

    bank: ImageDataset
    val: ImageDataset
    recipe: ViewRecipe
    taps: tuple[str, ...]
    split: str
    k: int = 200
    temperature: float = 0.1
    batch_size: int = 256

    @torch.no_grad()
    def __call__(self, model: SimCLRModel, device: torch.device) -> dict[str, Any]:
        """``{"monitor/knn_top1/h": 93.1, ..., "monitor/split": "holdout",
        "monitor/time_s": 0.8}`` for the model as it is now (every rank calls it)."""
        start = time.perf_counter()
        transform = eval_transform(self.recipe)
        bank = extract_features(model, self.bank, transform, self.taps, self.batch_size, device)
        val = extract_features(model, self.val, transform, self.taps, self.batch_size, device)
        bank_labels = torch.as_tensor(self.bank.targets, device=device)
        val_labels = torch.as_tensor(self.val.targets, device=device)
        num_classes = max(len(self.bank.classes), int(bank_labels.max()) + 1,
                          int(val_labels.max()) + 1)
        out: dict[str, Any] = {}
        for tap in self.taps:
            scores = knn_scores(bank[tap].to(device), bank_labels, val[tap].to(device), (self.k,),
                                self.temperature, num_classes)
            correct = scores[self.k].argmax(1) == val_labels
            out[monitor_key(tap)] = 100.0 * float(correct.float().mean())
        out[SPLIT_KEY] = self.split
        out[SECONDS_KEY] = time.perf_counter() - start
        return out


def parse_taps(spec: str, valid: Sequence[str]) -> tuple[str, ...]:
    """``"h,z"`` -> ("h", "z"), each checked against the model's taps (one-line error)."""
    taps = tuple(t.strip() for t in spec.split(",") if t.strip())
    unknown = [t for t in taps if t not in valid]
    if not taps or unknown:
        raise ConfigError(
            f"train.monitor_taps {spec!r}: unknown tap(s) {', '.join(unknown) or '(none given)'}; "
            f"this model has {', '.join(valid)}"
        )
    return taps


def build_monitor(
    train_set: ImageDataset,
    recipe: ViewRecipe,
    split: str,
    taps: tuple[str, ...],
    k: int,
    temperature: float,
    seed: int,
    load_test: Callable[[], ImageDataset],
) -> KNNMonitor:
    """The monitor for a run on ``train_set``: a seeded 10 % stratified hold-out of it
    (``split="holdout"``) or the dataset's test split (``split="test"``, via ``load_test``)."""
    if split not in MONITOR_SPLITS:
        raise ConfigError(
            f"train.monitor_split must be one of {', '.join(MONITOR_SPLITS)}; got {split!r}"
        )
    if k < 1 or temperature <= 0:
        raise ConfigError(f"train.monitor_k must be >= 1 and train.monitor_temperature > 0; "
                          f"got {k} and {temperature}")
    if split == "test":
        return KNNMonitor(train_set, load_test(), recipe, taps, split, k, temperature)
    bank_idx, val_idx = stratified_holdout(train_set.targets, HOLDOUT_FRACTION, seed)
    if not len(val_idx):
        raise ConfigError(f"{train_set.name}: {len(train_set)} images leave no hold-out for the "
                          f"k-NN monitor; use more images or train.monitor_every=0")
    return KNNMonitor(train_set.select(bank_idx), train_set.select(val_idx), recipe, taps, split,
                      k, temperature)

