"""The built-in frozen-feature probes, as Python functions and as registered commands.

``linear``, ``knn``, ``retrieval``, ``quality`` and ``fewshot``: each takes its options dataclass
(:class:`KnnOptions` ...: the common :class:`~probes.session.ProbeOptions` plus its own), opens a
:class:`~probes.session.ProbeSession` (checkpoint, dataset, taps, cached features), calls the
pure core of its module once per tap and setting, appends one record per call and returns the
flat dict ``{"<tap>:<metric>": value}``. From Python::

    from probes.commands import KnnOptions, knn
    result = knn(KnnOptions(run="runs/quickstart/digits_small_cnn_mlp-2_s0", tap="h,z", json=True))
    result["h:knn/top1@k20"]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from pretrain.data import stratified_holdout
from pretrain.errors import UserError
from pretrain.quality import quality_from_features, view_features
from probes.features import FeatureSet
from probes.fewshot import fewshot_accuracy
from probes.knn import DEFAULT_KS, knn_classify, knn_multilabel
from probes.linear import DEFAULT_GRID, linear_probe
from probes.linear_multilabel import linear_probe_multilabel
from probes.linear_sgd import evaluate_linear, train_linear_sgd
from probes.metrics import with_score
from probes.options import add_options, from_args, option
from probes.registry import Evaluator, register_evaluator
from probes.retrieval import DEFAULT_RECALL_KS, class_disjoint_retrieval, retrieval_metrics
from probes.session import (
    ProbeOptions,
    ProbeSession,
    SelectionOptions,
    float_list,
    int_list,
    log_grid,
)

OptionsT = TypeVar("OptionsT", bound=ProbeOptions)


def _timed(fn: Callable[[], dict[str, float]]) -> tuple[dict[str, float], float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _num_classes(*sets: FeatureSet) -> int:
    return max(max(len(fs.classes), int(fs.labels.max()) + 1) for fs in sets)


def _split_features(fs: FeatureSet, fraction: float, seed: int) -> tuple[FeatureSet, FeatureSet]:
    """(train, val) of a seeded hold-out of ``fs``: stratified by class
    (:func:`~pretrain.data.stratified_holdout`), or a plain seeded random share of a multi-label
    set (no single class to stratify by)."""
    if fs.labels.dim() == 2:
        order = np.random.default_rng(seed).permutation(len(fs))
        n_val = max(1, int(round(fraction * len(fs))))
        va_idx, tr_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    else:
        tr_idx, va_idx = stratified_holdout(fs.labels.numpy(), fraction, seed)
    pick = lambda idx: FeatureSet({t: f[idx] for t, f in fs.feats.items()},  # noqa: E731
                                  fs.labels[idx], fs.classes)
    return pick(tr_idx), pick(va_idx)


# -- linear ----------------------------------------------------------------------------------
@dataclass(kw_only=True)
class LinearOptions(SelectionOptions):
    protocol: str = option("lbfgs", "lbfgs: logistic regression, penalty chosen on val "
                           "(default); sgd: SimCLR paper's linear layer on augmented images",
                           choices=["lbfgs", "sgd"])
    wd_grid: list[float] = option(list(DEFAULT_GRID), "penalty grid lo:hi:num, log-spaced "
                                  "(weight decay = 1/C; default 1e-6:1e5:45)", type=log_grid)
    select: str = option("auto", "validation metric; auto: the dataset's protocol metric "
                         "(mean per-class accuracy for Aircraft, Pets, Caltech-101, Flowers; "
                         "mAP for VOC2007)", choices=["auto", "top1", "mean_per_class"])
    solver: str = option("auto", "sequential warm-started fits (CPU default) or all penalties "
                         "at once (CUDA default)", choices=["auto", "sequential", "batched"])
    max_iter: int | None = option(None, "L-BFGS iterations per penalty (default 100 sequential, "
                                  "1000 batched)", type=int)
    refit_max_iter: int = option(1000, type=int)
    tol: float = option(1e-4, "stop at max|grad| <= tol", type=float)
    standardize: bool = option(True, "fit raw features (ssl-transfer) instead of standardised "
                               "ones", flag="--no-standardize", action="store_false")
    epochs: int = option(90, "sgd protocol: epochs", type=int)
    lr: float = option(0.1, "sgd protocol: lr per 256 images", type=float)
    sgd_batch_size: int = option(256, type=int)


def linear(opts: LinearOptions) -> dict[str, float]:
    """Linear probe at every tap of ``opts``; one record per tap."""
    s = ProbeSession.open(opts)
    test_split = s.test_split(opts.test_split)
    info = s.info(test_split)
    headline, multilabel = info.metric, info.multilabel
    if opts.protocol == "sgd":  # trains on augmented images: no train features needed
        test = s.labelled(s.features(test_split), test_split)
        return _linear_sgd(s, opts, test, test_split)
    test = s.labelled(s.features(test_split), test_split, multilabel_ok=True)
    train = s.labelled(s.features(opts.train_split), opts.train_split, multilabel_ok=True)
    num_classes = train.labels.shape[1] if multilabel else _num_classes(train, test)
    select = headline if opts.select == "auto" or multilabel else opts.select
    val_split = s.val_split(opts.val_split, test_split)
    if val_split == "holdout":
        train, val = _split_features(train, opts.val_fraction, opts.seed)
    else:
        val = s.labelled(s.features(val_split), val_split, multilabel_ok=True)
    dev = s.device
    for tap in s.taps:
        tr = (train.feats[tap].to(dev), train.labels.to(dev))
        va = (val.feats[tap].to(dev), val.labels.to(dev))
        te = (test.feats[tap].to(dev), test.labels.to(dev))
        start = time.perf_counter()
        if multilabel:  # one binary logistic regression per class, selected by val mAP
            res = linear_probe_multilabel(tr, va, te, opts.wd_grid, opts.max_iter,
                                          opts.refit_max_iter, opts.tol, opts.standardize)
        else:
            res = linear_probe(tr, va, te, num_classes, opts.wd_grid, select,
                               opts.max_iter, opts.refit_max_iter, opts.tol, opts.standardize,
                               opts.solver)
        metrics = with_score({f"linear/{k}": v for k, v in res.metrics.items()}, "linear",
                             headline)
        metrics["linear/wd"] = res.wd
        metrics["linear/val_score"] = max(score for _, score in res.val_curve)
        settings = {
            "protocol": "lbfgs", "wd_grid": [min(opts.wd_grid), max(opts.wd_grid),
                                             len(opts.wd_grid)],
            "select": select, "score": headline,
            "val": val_split, "val_fraction": opts.val_fraction,
            "solver": res.solver, "max_iter": res.max_iter,
            "refit_max_iter": opts.refit_max_iter, "tol": opts.tol,
            "standardize": opts.standardize,
            "train_split": opts.train_split, "test_split": test_split,
        }
        s.record("linear", tap, metrics, settings,
                 {"train": len(tr[1]), "val": len(va[1]), "test": len(te[1])},
                 time.perf_counter() - start)
    return s.finish()


def _linear_sgd(s: ProbeSession, opts: LinearOptions, test: FeatureSet,
                test_split: str) -> dict[str, float]:
    start = time.perf_counter()
    train_ds = s.dataset(opts.train_split)
    assert train_ds is not None
    if min(train_ds.targets) < 0:
        raise UserError(f"{s.dataset_name} split {opts.train_split!r} has unlabelled images")
    num_classes = max(len(train_ds.classes), max(train_ds.targets) + 1, int(test.labels.max()) + 1)
    heads = train_linear_sgd(
        s.loaded.model, train_ds, s.recipe(opts.train_split), s.taps, num_classes,
        opts.epochs, opts.sgd_batch_size, opts.lr, device=s.device, seed=opts.seed,
        num_workers=opts.workers,
    )
    wall = (time.perf_counter() - start) / len(s.taps)
    headline = s.info(test_split).metric
    for tap in s.taps:
        metrics = with_score({f"linear/{k}": v for k, v in
                              evaluate_linear(heads[tap], test.feats[tap], test.labels).items()},
                             "linear", headline)
        settings = {"protocol": "sgd", "score": headline, "epochs": opts.epochs, "lr": opts.lr,
                    "batch_size": opts.sgd_batch_size, "momentum": 0.9, "nesterov": True,
                    "weight_decay": 0.0, "schedule": "cosine", "augment": "crop+flip",
                    "train_split": opts.train_split, "test_split": test_split}
        s.record("linear", tap, metrics, settings, {"train": len(train_ds), "test": len(test)},
                 wall)
    return s.finish()


# -- knn -------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class KnnOptions(ProbeOptions):
    k: list[int] = option(list(DEFAULT_KS), "e.g. 10,20,100,200", type=int_list)
    temperature: list[float] = option([0.1], "e.g. 0.1 or 0.07,0.1", type=float_list)
    train_split: str = option("train")
    test_split: str = option("auto", "auto: test, else val")
    chunk_size: int = option(1024, "test images per chunk", type=int)


def knn(opts: KnnOptions) -> dict[str, float]:
    """Weighted k-NN at every tap, k and temperature of ``opts``; one record per (tap, T)."""
    s = ProbeSession.open(opts)
    test_split = s.test_split(opts.test_split)
    info = s.info(test_split)
    headline = info.metric
    train = s.labelled(s.features(opts.train_split), opts.train_split, multilabel_ok=True)
    test = s.labelled(s.features(test_split), test_split, multilabel_ok=True)
    score_k = min(max(opts.k), len(train))  # transfer/score: the headline metric at the largest k
    num_classes = 0 if info.multilabel else _num_classes(train, test)
    suffix = {}
    for tap in s.taps:
        for t in opts.temperature:
            bank, queries = train.feats[tap].to(s.device), test.feats[tap]
            if info.multilabel:
                metrics, wall = _timed(lambda b=bank, q=queries, t=t: knn_multilabel(  # type: ignore[misc]
                    b, train.labels, q, test.labels, opts.k, t, opts.chunk_size))
            else:
                metrics, wall = _timed(lambda b=bank, q=queries, t=t: knn_classify(  # type: ignore[misc]
                    b, train.labels, q, test.labels, opts.k, t, num_classes, opts.chunk_size))
            metrics = with_score(metrics, "knn", headline, f"@k{score_k}")
            settings = {"k": opts.k, "k_effective": [min(k, len(train)) for k in opts.k],
                        "temperature": t, "score": f"{headline}@k{score_k}",
                        "train_split": opts.train_split, "test_split": test_split}
            if len(opts.temperature) > 1:
                suffix[len(s.records)] = f"@t{t:g}"
            s.record("knn", tap, metrics, settings, {"train": len(train), "test": len(test)},
                     wall)
    return s.finish(suffix)


# -- retrieval -------------------------------------------------------------------------------
@dataclass(kw_only=True)
class RetrievalOptions(ProbeOptions):
    split: str = option("auto", "auto: test, else val")
    mode: str = option("within", "within, class-disjoint, or both comma-separated")
    recall_k: list[int] = option(list(DEFAULT_RECALL_KS), type=int_list)
    chunk_size: int = option(512, "queries per chunk", type=int)


def retrieval(opts: RetrievalOptions) -> dict[str, float]:
    """Retrieval metrics at every tap and mode of ``opts``; one record per (tap, mode)."""
    modes = [m.strip() for m in opts.mode.split(",") if m.strip()]
    for mode in modes:
        if mode not in ("within", "class-disjoint"):
            raise UserError(f"unknown retrieval mode {mode!r}; valid: within, class-disjoint")
    s = ProbeSession.open(opts)
    split = s.test_split(opts.split)
    data = s.labelled(s.features(split), split)
    suffix = {}
    for tap in s.taps:
        feats = data.feats[tap].to(s.device)
        for mode in modes:
            if mode == "within":
                metrics, wall = _timed(lambda f=feats: retrieval_metrics(  # type: ignore[misc]
                    f, data.labels, opts.recall_k, opts.chunk_size))
            else:
                metrics, wall = _timed(lambda f=feats: class_disjoint_retrieval(  # type: ignore[misc]
                    f, data.labels, opts.seed, opts.recall_k, opts.chunk_size))
            if len(modes) > 1:
                suffix[len(s.records)] = f"@{mode}"
            s.record("retrieval", tap, metrics,
                     {"mode": mode, "split": split, "recall_k": opts.recall_k},
                     {"gallery": int(metrics["retrieval/queries"])}, wall)
    return s.finish(suffix)


# -- quality ---------------------------------------------------------------------------------
@dataclass(kw_only=True)
class QualityOptions(ProbeOptions):
    split: str = option("train", "images to measure (labels not needed)")
    samples: int = option(4096, "images for alignment/uniformity (two augmented views each)",
                          type=int)
    rankme_samples: int = option(25600, "images for RankMe (Garrido et al. use 25,600)",
                                 type=int)


def quality(opts: QualityOptions) -> dict[str, float]:
    """RankMe, alignment and uniformity at every tap of ``opts``; one record per tap."""
    s = ProbeSession.open(opts)
    clean = s.features(opts.split)
    ds = s.dataset(opts.split)
    assert ds is not None
    rng = np.random.default_rng(opts.seed)
    rank_idx = np.sort(rng.choice(len(ds), min(opts.rankme_samples, len(ds)), replace=False))
    view_idx = np.sort(rng.choice(len(ds), min(opts.samples, len(ds)), replace=False))
    start = time.perf_counter()
    v1, v2 = view_features(s.loaded.model, ds.select(view_idx), s.recipe(opts.split), s.taps,
                           opts.batch_size, s.device, opts.seed, opts.workers)
    view_wall = (time.perf_counter() - start) / len(s.taps)
    for tap in s.taps:
        metrics, wall = _timed(lambda tap=tap: quality_from_features(  # type: ignore[misc]
            clean.feats[tap][rank_idx].to(s.device), v1[tap].to(s.device), v2[tap].to(s.device)))
        s.record("quality", tap, metrics,
                 {"split": opts.split, "samples": len(view_idx), "rankme_samples": len(rank_idx),
                  "views": "simclr_transform(resolve_recipe(AugmentConfig(), info))"},
                 {opts.split: len(ds)}, wall + view_wall)
    return s.finish()


# -- fewshot ---------------------------------------------------------------------------------
@dataclass(kw_only=True)
class FewshotOptions(ProbeOptions):
    split: str = option("auto", "auto: test, else val")
    ways: int = option(5, type=int)
    shots: list[int] = option([1, 5], "e.g. 1,5", type=int_list)
    queries: int = option(15, "query images per class", type=int)
    episodes: int = option(600, type=int)


def fewshot(opts: FewshotOptions) -> dict[str, float]:
    """N-way K-shot prototype accuracy at every tap of ``opts``; one record per tap."""
    s = ProbeSession.open(opts)
    split = s.test_split(opts.split)
    data = s.labelled(s.features(split), split)
    for tap in s.taps:
        start = time.perf_counter()
        metrics = {}
        for shots in opts.shots:
            mean, ci = fewshot_accuracy(data.feats[tap].to(s.device), data.labels, opts.ways,
                                        shots, opts.queries, opts.episodes, opts.seed)
            metrics[f"fewshot/{opts.ways}w{shots}s"] = mean
            metrics[f"fewshot/{opts.ways}w{shots}s_ci95"] = ci
        s.record("fewshot", tap, metrics,
                 {"ways": opts.ways, "shots": opts.shots, "queries": opts.queries,
                  "episodes": opts.episodes, "split": split, "prototype": "mean, cosine"},
                 {split: len(data)}, time.perf_counter() - start)
    return s.finish()


def probe_evaluator(name: str, help: str, options: type[OptionsT],
                    probe: Callable[[OptionsT], dict[str, float]]) -> Evaluator:
    """An :class:`Evaluator` whose arguments are the fields of ``options`` and whose run calls
    ``probe`` with them."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        add_options(parser, options)

    def run(args: argparse.Namespace) -> dict[str, Any]:
        return probe(from_args(options, args))

    return Evaluator(name, help, add_arguments, run)


PROBES = (
    probe_evaluator("linear", "linear probe: logistic regression on frozen features (penalty "
                    "chosen on val)", LinearOptions, linear),
    probe_evaluator("knn", "weighted k-NN classification on frozen features", KnnOptions, knn),
    probe_evaluator("retrieval", "image retrieval: Recall@K, P@1, mAP@R, mAP", RetrievalOptions,
                    retrieval),
    probe_evaluator("quality", "label-free quality: RankMe, alignment, uniformity",
                    QualityOptions, quality),
    probe_evaluator("fewshot", "N-way K-shot prototype classification on frozen features",
                    FewshotOptions, fewshot),
)
for _probe in PROBES:
    register_evaluator(_probe)
