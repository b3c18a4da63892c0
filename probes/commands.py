"""Registers the built-in frozen-feature probes with the evaluator registry.

``linear``, ``knn``, ``retrieval``, ``quality`` and ``fewshot``: each is a thin wrapper that opens
a :class:`~probes.session.ProbeSession` (checkpoint, dataset, taps, cached features), calls the
pure core of its module once per tap and setting, appends one record per call and returns the
flat dict ``{"<tap>:<metric>": value}``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from pretrain.errors import UserError
from probes.features import FeatureSet, subset
from probes.fewshot import fewshot_accuracy
from probes.knn import DEFAULT_KS, knn_classify
from probes.linear import linear_probe, stratified_holdout
from probes.linear_sgd import evaluate_linear, train_linear_sgd
from probes.quality import quality_from_features, view_features
from probes.registry import Evaluator, register_evaluator
from probes.retrieval import DEFAULT_RECALL_KS, class_disjoint_retrieval, retrieval_metrics
from probes.session import (
    ProbeSession,
    add_common_arguments,
    float_list,
    int_list,
    log_grid,
)


def _timed(fn: Callable[[], dict]) -> tuple[dict, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _num_classes(*sets: FeatureSet) -> int:
    return max(max(len(fs.classes), int(fs.labels.max()) + 1) for fs in sets)


# -- linear ----------------------------------------------------------------------------------
def add_linear_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--protocol", choices=["lbfgs", "sgd"], default="lbfgs",
                   help="lbfgs: logistic regression, penalty chosen on val (default); "
                   "sgd: SimCLR paper's linear layer on augmented images")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="auto", help="auto: test, else val")
    p.add_argument("--val-split", default="auto", help="auto: the dataset's val split when "
                   "it has one besides test, else a stratified hold-out; 'holdout' forces it")
    p.add_argument("--val-fraction", type=float, default=0.2, help="hold-out share of train")
    p.add_argument("--wd-grid", type=log_grid, default="1e-6:1e5:45",
                   help="penalty grid lo:hi:num, log-spaced (weight decay = 1/C)")
    p.add_argument("--select", choices=["top1", "mean_per_class"], default="top1")
    p.add_argument("--solver", choices=["auto", "sequential", "batched"], default="auto",
                   help="sequential warm-started fits (CPU default) or all penalties at once "
                   "(CUDA default)")
    p.add_argument("--max-iter", type=int, default=None, help="L-BFGS iterations per penalty "
                   "(default 100 sequential, 1000 batched)")
    p.add_argument("--refit-max-iter", type=int, default=1000)
    p.add_argument("--tol", type=float, default=1e-4, help="stop at max|grad| <= tol")
    p.add_argument("--no-standardize", dest="standardize", action="store_false",
                   help="fit raw features (ssl-transfer) instead of standardised ones")
    p.add_argument("--epochs", type=int, default=90, help="sgd protocol: epochs")
    p.add_argument("--lr", type=float, default=0.1, help="sgd protocol: lr per 256 images")
    p.add_argument("--sgd-batch-size", type=int, default=256)


def run_linear(args: argparse.Namespace) -> dict[str, float]:
    s = ProbeSession.open(args)
    test_split = s.test_split(args.test_split)
    test = s.labelled(s.features(test_split), test_split)
    if args.protocol == "sgd":  # trains on augmented images: no train features needed
        return _run_linear_sgd(s, args, test, test_split)
    train = s.labelled(s.features(args.train_split), args.train_split)
    num_classes = _num_classes(train, test)
    val_split = args.val_split
    if val_split == "auto":
        val_split = "val" if test_split != "val" and s.has_split("val") else "holdout"
    if val_split == "holdout":
        tr_idx, va_idx = stratified_holdout(train.labels.numpy(), args.val_fraction, args.seed)
        val = FeatureSet({t: f[va_idx] for t, f in train.feats.items()}, train.labels[va_idx],
                         train.classes)
        train = FeatureSet({t: f[tr_idx] for t, f in train.feats.items()}, train.labels[tr_idx],
                           train.classes)
    else:
        val = s.labelled(s.features(val_split), val_split)
    dev = s.device
    for tap in s.taps:
        tr = (train.feats[tap].to(dev), train.labels.to(dev))
        va = (val.feats[tap].to(dev), val.labels.to(dev))
        te = (test.feats[tap].to(dev), test.labels.to(dev))
        start = time.perf_counter()
        res = linear_probe(tr, va, te, num_classes, args.wd_grid, args.select, args.max_iter,
                           args.refit_max_iter, args.tol, args.standardize, args.solver)
        metrics = {f"linear/{k}": v for k, v in res.metrics.items()}
        metrics["linear/wd"] = res.wd
        metrics["linear/val_score"] = max(score for _, score in res.val_curve)
        settings = {
            "protocol": "lbfgs", "wd_grid": [min(args.wd_grid), max(args.wd_grid),
                                             len(args.wd_grid)],
            "select": args.select, "val": val_split, "val_fraction": args.val_fraction,
            "solver": res.solver, "max_iter": res.max_iter,
            "refit_max_iter": args.refit_max_iter, "tol": args.tol,
            "standardize": args.standardize,
            "train_split": args.train_split, "test_split": test_split,
        }
        s.record("linear", tap, metrics, settings,
                 {"train": len(tr[1]), "val": len(va[1]), "test": len(te[1])},
                 time.perf_counter() - start)
    return s.finish()


def _run_linear_sgd(s: ProbeSession, args: argparse.Namespace, test: FeatureSet,
                    test_split: str) -> dict[str, float]:
    start = time.perf_counter()
    train_ds = s.dataset(args.train_split)
    assert train_ds is not None
    if min(train_ds.targets) < 0:
        raise UserError(f"{s.dataset_name} split {args.train_split!r} has unlabelled images")
    num_classes = max(len(train_ds.classes), max(train_ds.targets) + 1, int(test.labels.max()) + 1)
    heads = train_linear_sgd(
        s.loaded.model, train_ds, s.recipe(args.train_split), s.taps, num_classes,
        args.epochs, args.sgd_batch_size, args.lr, device=s.device, seed=args.seed,
        num_workers=args.workers,
    )
    wall = (time.perf_counter() - start) / len(s.taps)
    for tap in s.taps:
        metrics = {f"linear/{k}": v for k, v in
                   evaluate_linear(heads[tap], test.feats[tap], test.labels).items()}
        settings = {"protocol": "sgd", "epochs": args.epochs, "lr": args.lr,
                    "batch_size": args.sgd_batch_size, "momentum": 0.9, "nesterov": True,
                    "weight_decay": 0.0, "schedule": "cosine", "augment": "crop+flip",
                    "train_split": args.train_split, "test_split": test_split}
        s.record("linear", tap, metrics, settings, {"train": len(train_ds), "test": len(test)},
                 wall)
    return s.finish()


# -- knn -------------------------------------------------------------------------------------
def add_knn_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--k", type=int_list, default=list(DEFAULT_KS), help="e.g. 10,20,100,200")
    p.add_argument("--temperature", type=float_list, default=[0.1], help="e.g. 0.1 or 0.07,0.1")
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="auto", help="auto: test, else val")
    p.add_argument("--chunk-size", type=int, default=1024, help="test images per chunk")


def run_knn(args: argparse.Namespace) -> dict[str, float]:
    s = ProbeSession.open(args)
    test_split = s.test_split(args.test_split)
    train = s.labelled(s.features(args.train_split), args.train_split)
    test = s.labelled(s.features(test_split), test_split)
    num_classes = _num_classes(train, test)
    suffix = {}
    for tap in s.taps:
        for t in args.temperature:
            metrics, wall = _timed(lambda tap=tap, t=t: knn_classify(
                train.feats[tap].to(s.device), train.labels, test.feats[tap], test.labels,
                args.k, t, num_classes, args.chunk_size))
            settings = {"k": args.k, "k_effective": [min(k, len(train)) for k in args.k],
                        "temperature": t, "train_split": args.train_split,
                        "test_split": test_split}
            if len(args.temperature) > 1:
                suffix[len(s.records)] = f"@t{t:g}"
            s.record("knn", tap, metrics, settings, {"train": len(train), "test": len(test)},
                     wall)
    return s.finish(suffix)


# -- retrieval -------------------------------------------------------------------------------
def add_retrieval_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--split", default="auto", help="auto: test, else val")
    p.add_argument("--mode", default="within", help="within, class-disjoint, or both "
                   "comma-separated")
    p.add_argument("--recall-k", type=int_list, default=list(DEFAULT_RECALL_KS))
    p.add_argument("--chunk-size", type=int, default=512, help="queries per chunk")


def run_retrieval(args: argparse.Namespace) -> dict[str, float]:
    modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    for mode in modes:
        if mode not in ("within", "class-disjoint"):
            raise UserError(f"unknown retrieval mode {mode!r}; valid: within, class-disjoint")
    s = ProbeSession.open(args)
    split = s.test_split(args.split)
    data = s.labelled(s.features(split), split)
    suffix = {}
    for tap in s.taps:
        feats = data.feats[tap].to(s.device)
        for mode in modes:
            if mode == "within":
                metrics, wall = _timed(lambda f=feats: retrieval_metrics(
                    f, data.labels, args.recall_k, args.chunk_size))
            else:
                metrics, wall = _timed(lambda f=feats: class_disjoint_retrieval(
                    f, data.labels, args.seed, args.recall_k, args.chunk_size))
            if len(modes) > 1:
                suffix[len(s.records)] = f"@{mode}"
            s.record("retrieval", tap, metrics,
                     {"mode": mode, "split": split, "recall_k": args.recall_k},
                     {"gallery": int(metrics["retrieval/queries"])}, wall)
    return s.finish(suffix)


# -- quality ---------------------------------------------------------------------------------
def add_quality_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--split", default="train", help="images to measure (labels not needed)")
    p.add_argument("--samples", type=int, default=4096,
                   help="images for alignment/uniformity (two augmented views each)")
    p.add_argument("--rankme-samples", type=int, default=25600,
                   help="images for RankMe (Garrido et al. use 25,600)")


def run_quality(args: argparse.Namespace) -> dict[str, float]:
    s = ProbeSession.open(args)
    clean = s.features(args.split)
    ds = s.dataset(args.split)
    assert ds is not None
    rng = np.random.default_rng(args.seed)
    rank_idx = np.sort(rng.choice(len(ds), min(args.rankme_samples, len(ds)), replace=False))
    view_idx = np.sort(rng.choice(len(ds), min(args.samples, len(ds)), replace=False))
    start = time.perf_counter()
    v1, v2 = view_features(s.loaded.model, subset(ds, view_idx), s.recipe(args.split), s.taps,
                           args.batch_size, s.device, args.seed, args.workers)
    view_wall = (time.perf_counter() - start) / len(s.taps)
    for tap in s.taps:
        metrics, wall = _timed(lambda tap=tap: quality_from_features(
            clean.feats[tap][rank_idx].to(s.device), v1[tap].to(s.device), v2[tap].to(s.device)))
        s.record("quality", tap, metrics,
                 {"split": args.split, "samples": len(view_idx), "rankme_samples": len(rank_idx),
                  "views": "simclr_transform(resolve_recipe(AugmentConfig(), info))"},
                 {args.split: len(ds)}, wall + view_wall)
    return s.finish()


# -- fewshot ---------------------------------------------------------------------------------
def add_fewshot_arguments(p: argparse.ArgumentParser) -> None:
    add_common_arguments(p)
    p.add_argument("--split", default="auto", help="auto: test, else val")
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int_list, default=[1, 5], help="e.g. 1,5")
    p.add_argument("--queries", type=int, default=15, help="query images per class")
    p.add_argument("--episodes", type=int, default=600)


def run_fewshot(args: argparse.Namespace) -> dict[str, float]:
    s = ProbeSession.open(args)
    split = s.test_split(args.split)
    data = s.labelled(s.features(split), split)
    for tap in s.taps:
        start = time.perf_counter()
        metrics = {}
        for shots in args.shots:
            mean, ci = fewshot_accuracy(data.feats[tap].to(s.device), data.labels, args.ways,
                                        shots, args.queries, args.episodes, args.seed)
            metrics[f"fewshot/{args.ways}w{shots}s"] = mean
            metrics[f"fewshot/{args.ways}w{shots}s_ci95"] = ci
        s.record("fewshot", tap, metrics,
                 {"ways": args.ways, "shots": args.shots, "queries": args.queries,
                  "episodes": args.episodes, "split": split, "prototype": "mean, cosine"},
                 {split: len(data)}, time.perf_counter() - start)
    return s.finish()


for _name, _help, _add, _run in [
    ("linear", "linear probe: logistic regression on frozen features (penalty chosen on val)",
     add_linear_arguments, run_linear),
    ("knn", "weighted k-NN classification on frozen features", add_knn_arguments, run_knn),
    ("retrieval", "image retrieval: Recall@K, P@1, mAP@R, mAP", add_retrieval_arguments,
     run_retrieval),
    ("quality", "label-free quality: RankMe, alignment, uniformity", add_quality_arguments,
     run_quality),
    ("fewshot", "N-way K-shot prototype classification on frozen features",
     add_fewshot_arguments, run_fewshot),
]:
    register_evaluator(Evaluator(_name, _help, _add, _run))
