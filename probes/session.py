"""What every frozen-feature probe shares: options, model, data, features, records.

A :class:`ProbeSession` is opened from :class:`ProbeOptions` (a typed dataclass; the CLI builds
it from its arguments, a notebook directly): it loads the checkpoint once, resolves the dataset
(default: the run's pretraining dataset), the taps (``all``, ``h,z``, ...), the evaluation
transform (the run's own normalisation and crop size unless overridden) and the device, serves
cached features per split, and appends records. Plugins use it too::

    def run(args):
        session = ProbeSession.open(from_args(ProbeOptions, args))
        test = session.features("test")
        ...
        session.record("mine", tap, metrics, settings, splits={"test": len(test)}, wall_s=...)
        return session.finish()
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.augment import PRESETS, ViewRecipe, eval_transform, get_preset, resolve_recipe
from pretrain.config import DEFAULT_CACHE_DIR, AugmentConfig
from pretrain.data import (
    ARCHIVE_SUFFIXES,
    DatasetInfo,
    ImageDataset,
    MissingSplitError,
    load_dataset,
)
from pretrain.distributed import is_main_process, resolve_device
from pretrain.errors import DataError, UserError
from probes.checkpoints import LoadedModel, load_any
from probes.features import FeatureSet, load_features
from probes.options import add_options, option
from probes.records import (
    ResultRecord,
    make_record,
    parse_tags,
    results_path,
    setup_block,
    write_records,
)

log = logging.getLogger("simclr_transfer.probes")


@dataclass(kw_only=True)
class ProbeOptions:
    """What every probe takes: the model, the data, the taps, where to run and to write."""

    run: str = option(positional=True, metavar="RUN", help="run directory, or a checkpoint file "
                      "(torchvision/timm state dict, lightly or solo-learn checkpoint)")
    dataset: str = option("", "digits | cifar10 | imagefolder:PATH | a transfer benchmark "
                          "name (food101, cifar100, birdsnap, sun397, cars, aircraft, voc2007, "
                          "dtd, pets, caltech101, flowers102), optionally NAME:PATH (default: "
                          "the run's pretraining dataset)")
    data_root: str = option("", "archive or folder for the dataset (a benchmark dataset is "
                            "otherwise searched in $SIMCLR_DATA_DIR, ../shared/data and "
                            "<cache-dir>/torchvision)")
    download: bool = option(False, "download a benchmark dataset with torchvision when no "
                            "local copy is found (needs a network)", action="store_true")
    cache_dir: str = option("", "dataset extraction and feature cache (default: the run's "
                            f"data.cache_dir, else {DEFAULT_CACHE_DIR})")
    tap: str = option("all", "all, or a comma list such as h,z or head.0 (representations to "
                      "probe)")
    device: str = option("auto", "auto | cpu | cuda | cuda:N")
    batch_size: int = option(256, "images per forward pass", type=int)
    workers: int = option(0, "DataLoader worker processes", type=int)
    seed: int = option(0, type=int)
    limit: int = option(0, "use a seeded random subset of N images per split (0 = all); for "
                        "smoke tests", type=int)
    image_size: int = option(0, "eval crop size (default: the run's pretraining crop size; for "
                             "an external checkpoint the dataset's)", type=int)
    normalize: str = option("auto", "input normalisation: auto (the run's own; for an external "
                            "checkpoint the dataset's preset) or a preset", choices=["auto", *PRESETS])
    encoder: str = option("", "architecture of an external checkpoint (default: read from a "
                          "ResNet's keys)")
    cifar_stem: bool = option(False, "external ResNet with the 3x3 CIFAR stem (with --encoder)",
                              action="store_true")
    output_dir: str = option("", "where results.jsonl goes (default: the run directory; beside "
                             "an external checkpoint)")
    no_cache: bool = option(False, "do not read or write features", action="store_true")
    tag: list[str] = option([], "label stored in every record (repeatable); suites use it",
                            action="append", metavar="KEY=VALUE")
    json: bool = option(False, "print the result dict as JSON", action="store_true")


@dataclass(kw_only=True)
class SelectionOptions(ProbeOptions):
    """The splits of an evaluator that selects on validation and tests once (the linear probe,
    fine-tuning); :meth:`ProbeSession.val_split` resolves ``val_split``."""

    train_split: str = option("train")
    test_split: str = option("auto", "auto: test, else val")
    val_split: str = option("auto", "auto: the dataset's val split when it has one besides "
                            "test, else a stratified hold-out of the labelled training images; "
                            "'holdout' forces it")
    val_fraction: float = option(0.2, "hold-out share of the labelled training images",
                                 type=float)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``RUN`` and the options every probe takes (the fields of :class:`ProbeOptions`)."""
    add_options(parser, ProbeOptions)


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _numbers(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}")
    return values


def float_list(text: str) -> list[float]:
    """``"0.07,0.1"`` -> positive numbers."""
    values = _numbers(text)
    if min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def nonnegative_float_list(text: str) -> list[float]:
    """``"0,1e-5"`` -> numbers >= 0 (a weight-decay grid that includes none)."""
    values = _numbers(text)
    if min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected numbers >= 0, got {text!r}")
    return values


def log_grid(text: str) -> list[float]:
    """``"lo:hi:num"`` -> num log-spaced values from lo to hi (inclusive)."""
    try:
        lo, hi, num = text.split(":")
        grid = np.logspace(np.log10(float(lo)), np.log10(float(hi)), int(num))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected lo:hi:num such as 1e-6:1e5:45, got {text!r}") from None
    return [float(v) for v in grid]


def parse_taps(spec: str, valid: list[str]) -> list[str]:
    """``"all"`` or a comma list -> taps in model order; unknown names list the valid ones."""
    if spec.strip() == "all":
        return list(valid)
    taps = [t.strip() for t in spec.split(",") if t.strip()]
    for tap in taps:
        if tap not in valid:
            raise UserError(f"unknown tap {tap!r}; valid taps: {', '.join(valid)}, all")
    if not taps:
        raise UserError(f"--tap is empty; valid taps: {', '.join(valid)}, all")
    return [t for t in valid if t in taps]


def eval_recipe(
    loaded: LoadedModel, info: DatasetInfo, image_size: int = 0, normalize: str = "auto"
) -> ViewRecipe:
    """How a probe prepares images of a dataset with ``info`` for ``loaded``.

    Augmentation strengths (for probes that augment) come from the dataset's preset; the crop
    size and the normalisation are the run's own (its :class:`~pretrain.run.RunSetup`), for an
    external checkpoint the dataset's, unless ``image_size`` (> 0) or ``normalize`` (a preset
    name) override them.
    """
    recipe = resolve_recipe(AugmentConfig(), info)
    run = loaded.run
    size = image_size or (run.setup.image_size if run else recipe.image_size)
    if normalize != "auto":
        preset = get_preset(normalize, "--normalize")
        mean, std = preset.mean, preset.std
    elif run is not None:
        mean, std = run.setup.mean, run.setup.std
    else:
        mean, std = recipe.mean, recipe.std
    return dataclasses.replace(recipe, image_size=size, mean=mean, std=std)


@dataclass
class ProbeSession:
    options: ProbeOptions
    loaded: LoadedModel
    dataset_name: str
    data_root: str
    cache_dir: str
    taps: list[str]
    device: torch.device
    records: list[ResultRecord] = field(default_factory=list)
    _datasets: dict[str, ImageDataset | None] = field(default_factory=dict)
    _features: dict[str, FeatureSet] = field(default_factory=dict)
    _setup: dict[str, Any] | None = None
    tags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def open(cls, options: ProbeOptions) -> ProbeSession:
        opts = options
        tags = parse_tags(opts.tag)
        loaded = load_any(opts.run, encoder=opts.encoder, cifar_stem=opts.cifar_stem)
        if loaded.unused_keys:
            shown = ", ".join(loaded.unused_keys[:8])
            more = f" (+{len(loaded.unused_keys) - 8} more)" if len(loaded.unused_keys) > 8 else ""
            log.warning("warning: %d checkpoint keys were not used: %s%s",
                        len(loaded.unused_keys), shown, more)
        cfg = loaded.run.config if loaded.run is not None else None
        name = opts.dataset or (cfg.data.name if cfg else "")
        if not name:
            raise UserError("an external checkpoint needs --dataset (digits, cifar10, "
                            "imagefolder:PATH)")
        same = cfg is not None and name == cfg.data.name
        root = opts.data_root or (cfg.data.root if same and cfg else "")
        cache = opts.cache_dir or (cfg.data.cache_dir if cfg else "") or DEFAULT_CACHE_DIR
        taps = parse_taps(opts.tap, loaded.taps)
        return cls(opts, loaded, name, root, cache, taps, resolve_device(opts.device), tags=tags)

    # -- data -------------------------------------------------------------------------------
    @property
    def display_name(self) -> str:
        """Path-free dataset name for records: ``imagefolder:caltech101_subset``, ``cifar10``."""
        kind, _, arg = self.dataset_name.partition(":")
        if not arg:
            return kind
        name = Path(arg.rstrip("/")).name
        for suffix in ARCHIVE_SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        return f"{kind}:{name}"

    @property
    def data_path(self) -> str:
        """Where the images came from, when a path says it (imagefolder or --data-root)."""
        _, _, arg = self.dataset_name.partition(":")
        return str(Path(arg or self.data_root).resolve()) if (arg or self.data_root) else ""

    def dataset(self, split: str, required: bool = True) -> ImageDataset | None:
        """Split ``split`` of the dataset (seeded subset under ``--limit``); None if absent."""
        if split not in self._datasets:
            try:
                ds = load_dataset(self.dataset_name, split, self.data_root, self.cache_dir,
                                  download=self.options.download)
            except MissingSplitError:  # a missing path or an unreadable image still raises
                if required:
                    raise
                ds = None
            if ds is not None and self.options.limit and self.options.limit < len(ds):
                rng = np.random.default_rng(self.options.seed)
                ds = ds.select(np.sort(rng.choice(len(ds), self.options.limit, replace=False)))
            self._datasets[split] = ds
        return self._datasets[split]

    def has_split(self, split: str, other_than: str = "train") -> bool:
        """Whether ``split`` exists as its own images (a flat folder answers every split)."""
        ds, ref = self.dataset(split, required=False), self.dataset(other_than, required=False)
        if ds is None:
            return False
        if ref is not None and ds.files is not None and ds.files == ref.files:
            return False
        return True

    def test_split(self, requested: str = "auto") -> str:
        """``auto``: ``test`` when the dataset has it, else ``val`` (e.g. Tiny ImageNet)."""
        if requested != "auto":
            return requested
        if self.has_split("test"):
            return "test"
        if self.has_split("val"):
            return "val"
        raise DataError(f"dataset {self.dataset_name} has neither a test nor a val split")

    def val_split(self, requested: str, test_split: str) -> str:
        """``auto``: ``val`` when the dataset has a val split that is not the test split, else
        ``holdout`` (a stratified hold-out of train); anything else as given."""
        if requested != "auto":
            return requested
        return "val" if test_split != "val" and self.has_split("val") else "holdout"

    def recipe(self, split: str = "train") -> ViewRecipe:
        """The views of ``split`` (see :func:`eval_recipe`)."""
        ds = self.dataset(split)
        assert ds is not None
        return eval_recipe(self.loaded, ds.info, self.options.image_size, self.options.normalize)

    def features(self, split: str) -> FeatureSet:
        """Eval-transform features of ``split`` at every session tap (cached)."""
        if split not in self._features:
            ds = self.dataset(split)
            assert ds is not None
            fs = load_features(
                self.loaded.model, self.loaded.model_key, ds,
                f"{self.dataset_name}|{self.data_root}|limit={self.options.limit}"
                f"|seed={self.options.seed if self.options.limit else 0}",
                split, eval_transform(self.recipe(split)), self.taps,
                None if self.options.no_cache else self.cache_dir,
                self.options.batch_size, self.device, self.options.workers,
            )
            self._features[split] = fs
        return self._features[split]

    def info(self, split: str) -> DatasetInfo:
        """What the dataset says of itself: its protocol's headline metric (``metric``:
        ``top1``, ``mean_per_class``, ``map11``; written as ``transfer/score``) and whether its
        targets are multi-label (``multilabel``)."""
        ds = self.dataset(split)
        assert ds is not None
        return ds.info

    def labelled(self, fs: FeatureSet, split: str, multilabel_ok: bool = False) -> FeatureSet:
        """``fs`` after checking it has labels; a multi-label split (VOC2007's (N, C) targets,
        where -1 means "ignored") passes only where the probe handles it."""
        if fs.labels.dim() == 2:
            if not multilabel_ok:
                raise UserError(f"{self.dataset_name} is multi-label; this probe needs one "
                                "class per image (linear and knn handle multi-label data)")
            return fs
        if len(fs) == 0 or int(fs.labels.min()) < 0:
            raise DataError(f"{self.dataset_name} split {split!r} has unlabelled images; this "
                            "probe needs class labels")
        return fs

    # -- records ------------------------------------------------------------------------------
    def record(self, evaluator: str, tap: str, metrics: dict[str, float],
               settings: dict[str, Any], splits: dict[str, int], wall_s: float,
               setup: dict[str, Any] | None = None,
               optional: dict[str, Any] | None = None) -> ResultRecord:
        """Build one record (see :mod:`probes.records`) and append it to the results file.

        ``setup`` replaces the checkpoint's setup block (a random-init baseline has its own);
        ``optional`` adds optional record keys (``from_tap``, ``label_fraction``).
        """
        if self._setup is None:
            self._setup = setup_block(self.loaded)
        opts = self.options
        extra = {"data_path": self.data_path, "limit": opts.limit, "image_size": opts.image_size,
                 "normalize": "" if opts.normalize == "auto" else opts.normalize}
        settings = {**settings, **{k: v for k, v in extra.items() if v}}  # only when they apply
        rec = make_record(
            evaluator, tap, self.display_name, metrics, settings,
            self._setup if setup is None else setup, splits, opts.seed, wall_s,
            str(self.device), self.tags, optional,
        )
        if is_main_process():  # under torchrun every rank computes, rank 0 writes
            write_records([rec], results_path(self.loaded, opts.output_dir))
        self.records.append(rec)
        return rec

    def finish(self, suffix: dict[int, str] | None = None) -> dict[str, float]:
        """Flat result dict ``{"<tap>:<metric>": value}``; prints a table unless ``--json``.

        ``suffix`` maps a record index to a string appended to its metric names (to tell apart
        several settings of one tap, e.g. ``@t0.07``).
        """
        out: dict[str, float] = {}
        for i, rec in enumerate(self.records):
            tail = (suffix or {}).get(i, "")
            for key, value in rec["metrics"].items():
                out[f"{rec['tap']}:{key}{tail}"] = value
        if not self.options.json and is_main_process():
            print_table(self.records, suffix)
            print(f"records appended to {results_path(self.loaded, self.options.output_dir)}")
        return out


def print_table(records: list[ResultRecord], suffix: dict[int, str] | None = None,
                file: Any = None) -> None:
    """A short human-readable table: one row per record, one column per metric."""
    file = file or sys.stdout
    if not records:
        return
    columns: list[str] = []
    for rec in records:
        columns += [k for k in rec["metrics"] if k not in columns]
    names = [c.split("/", 1)[-1] for c in columns]
    header = ["tap", "setting"] + names
    rows = []
    for i, rec in enumerate(records):
        setting = (suffix or {}).get(i, "").lstrip("@")
        rows.append([rec["tap"], setting or "-"] + [
            f"{rec['metrics'][c]:.4g}" if c in rec["metrics"] else "" for c in columns])
    widths = [max(len(str(r[j])) for r in [header] + rows) for j in range(len(header))]
    print(f"{records[0]['evaluator']} on {records[0]['dataset']}", file=file)
    for row in [header] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)), file=file)

