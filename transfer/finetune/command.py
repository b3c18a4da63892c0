"""``simclr-transfer finetune RUN --dataset D [--from-tap T] [--label-fraction F] [--protocol P]``.

For every labelled subset (each ``--label-fraction``, or ``--subset-file``) and every tap:

1. the network is the source's encoder plus its head layers up to the tap plus a new classifier
   (:mod:`.model`); ``--init random`` starts the same architecture from the initialisation its
   pretraining started from (a run: ``build_model`` under the run's seed), the supervised
   baseline on the same schedule;
2. when the protocol (or ``--lr-grid`` / ``--wd-grid``) gives several hyper-parameters, each is
   trained on the labelled subset minus a seeded stratified validation hold-out (or on the
   subset, validated on the dataset's own val split), scored on validation only, and the best
   (ties: the first in grid order) is **refit** on the whole labelled subset;
3. the final model is evaluated **once** on the test split (the last step's weights: no epoch
   is chosen on test) and one record is appended per (tap, subset), with ``from_tap`` and
   ``label_fraction`` as record fields and the protocol, subset size and chosen
   hyper-parameters in its settings.

Trainings live in ``<run>/finetune/<tap>_f<fraction>_<protocol>_<init>_s<seed>-<hash>/``
(``select/<lr>_<wd>/`` and ``final/``), each resumable exactly (``--resume``); a finished cell
is not run again by ``--resume``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pretrain.augment import eval_transform
from pretrain.data import ImageDataset, dataset_fingerprint
from pretrain.distributed import is_distributed, is_main_process, world_size
from pretrain.errors import ConfigError, DataError, UserError
from pretrain.model import SimCLRModel, build_model
from pretrain.step import use_bf16
from probes.features import fingerprint
from probes.linear_sgd import crop_flip_transform
from probes.metrics import with_score
from probes.options import option
from probes.records import ResultRecord, random_init_setup, results_path
from probes.session import ProbeSession, SelectionOptions, float_list, nonnegative_float_list
from transfer.finetune.loop import CHECKPOINT, FitSpec, RunOptions, evaluate, fit
from transfer.finetune.model import build_finetune_net, kept_head_layers, reinitialised
from transfer.finetune.protocols import PROTOCOLS, Protocol, schedule_length
from transfer.finetune.subsets import (
    LabelledSubset,
    label_subset,
    subset_from_file,
    validation_holdout,
)

DONE_FILE = "record.json"  # a finished cell: its record, so --resume does not run it again
VAL_FILE = "val.json"


def fraction_list(text: str) -> list[float]:
    """``"0.01,0.1,1"`` -> ``[0.01, 0.1, 1.0]``; each in (0, 1]."""
    values = float_list(text)
    if max(values) > 1.0:
        raise argparse.ArgumentTypeError(f"label fractions are in (0, 1], got {text!r}")
    return values


@dataclass(kw_only=True)
class FinetuneOptions(SelectionOptions):
    """``simclr-transfer finetune``'s options: the probes' common ones plus the recipe."""

    tap: str = option("auto", "tap(s) to fine-tune from: h, head.0, ..., z, a comma list, or "
                      "all; auto: the protocol's (h; simclr-v2: head.0 with <= 10%% labels)",
                      flag="--from-tap")
    skip_missing_taps: bool = option(False, "skip --from-tap entries the run does not have "
                                     "(suites over heads of different depths)",
                                     action="store_true")
    protocol: str = option("simclr", "recipe: simclr (SimCLR App. B.5), simclr-v2 (SimCLRv2 "
                           "Sec. 3.1), transfer (SimCLR App. B.8: lr and wd chosen on val)",
                           choices=PROTOCOLS.names())
    label_fraction: list[float] = option([1.0], "labelled share(s) of train, class-balanced and "
                                         "seeded, e.g. 0.01,0.1,1", type=fraction_list)
    subset_file: str = option("", "the labelled images: one file name (or index) per line, as "
                              "the official ImageNet 1%% / 10%% lists; replaces --label-fraction")
    subset_seed: int = option(0, "seed of the label-fraction subsets (fixed across --seed, like "
                              "the official lists)", type=int)
    init: str = option("pretrained", "pretrained: the source's weights; random: the same "
                       "architecture from its pretraining's initialisation (the baseline)",
                       choices=["pretrained", "random"])
    select: str = option("auto", "validation metric; auto: the dataset's protocol metric "
                         "(mean per-class accuracy for Aircraft, Pets, Caltech-101, Flowers)",
                         choices=["auto", "top1", "mean_per_class"])
    lr_grid: list[float] = option([], "base learning rate(s) before the protocol's batch "
                                  "scaling (default: the protocol's)", type=float_list)
    wd_grid: list[float] = option([], "weight decay(s), 0 allowed (default: the protocol's)",
                                  type=nonnegative_float_list)
    epochs: int = option(0, "passes over the labelled images (default: the protocol's)", type=int)
    steps: int = option(0, "optimizer steps instead of epochs", type=int)
    train_batch_size: int = option(0, "global batch (default: the protocol's; capped to the "
                                   "labelled images)", type=int)
    crop_scale_min: float = option(0.08, "smallest crop area of the training augmentation",
                                   type=float)
    precision: str = option("auto", "auto: bf16 autocast on CUDA, fp32 elsewhere",
                            choices=["auto", "bf16", "fp32"])
    channels_last: bool = option(True, "NCHW inputs on CUDA", flag="--no-channels-last",
                                 action="store_false")
    log_every: int = option(50, "steps between loss reads (the only host sync)", type=int)
    checkpoint_every: int = option(0, "steps between checkpoints (0: every pass)", type=int)
    progress: bool = option(True, "no progress bars", flag="--no-progress", action="store_false")
    resume: bool = option(False, "continue killed trainings from their checkpoints and skip "
                          "finished cells", action="store_true")


def check_options(opts: FinetuneOptions) -> None:
    """Values argparse cannot check alone; a bad one is a one-line :class:`ConfigError`."""
    for name in ("epochs", "steps", "train_batch_size", "checkpoint_every"):
        if getattr(opts, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0")
    if opts.log_every < 1:
        raise ConfigError("--log-every must be >= 1")
    if not 0.0 < opts.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {opts.val_fraction:g}")
    if not 0.0 < opts.crop_scale_min <= 1.0:
        raise ConfigError(f"--crop-scale-min must be in (0, 1], got {opts.crop_scale_min:g}")
    if opts.val_split not in ("auto", "holdout") and opts.val_split == opts.test_split:
        raise ConfigError("--val-split and --test-split name the same split")


def resolve_taps(spec: str, protocol: Protocol, fraction: float, taps: list[str],
                 skip_missing: bool, quiet: bool = False) -> list[str]:
    """The taps to fine-tune from, in model order (``auto``: the protocol's for ``fraction``);
    skipped ones are named on stdout unless ``quiet``."""
    if spec.strip() == "auto":
        return [protocol.default_tap(fraction, taps)]
    if spec.strip() == "all":
        return list(taps)
    asked = [t.strip() for t in spec.split(",") if t.strip()]
    missing = [t for t in asked if t not in taps]
    if missing and not skip_missing:
        raise UserError(f"unknown tap {missing[0]!r}; valid taps: {', '.join(taps)}, all, auto "
                        "(--skip-missing-taps skips taps a run lacks)")
    kept = [t for t in taps if t in asked]
    if not kept:
        raise UserError(f"none of the taps {spec!r} exists; valid taps: {', '.join(taps)}")
    if missing and is_main_process() and not quiet:
        print(f"finetune: skipping tap(s) {', '.join(missing)} (this model has {', '.join(taps)})")
    return kept


def labels_of(ds: ImageDataset, split: str) -> np.ndarray:
    if ds.multilabel:
        raise UserError(f"{ds.name} is multi-label ({ds.info.metric}); fine-tuning trains a "
                        "softmax classifier and needs one class per image (use linear or knn)")
    labels = np.asarray(ds.targets)
    if len(labels) == 0 or labels.min() < 0:
        raise DataError(f"{ds.name} split {split!r} has unlabelled images; fine-tuning needs "
                        "class labels")
    return labels


@dataclass
class Source:
    """The weights a cell starts from, and how its records describe them."""

    model: SimCLRModel
    init: str  # "pretrained" | "random"
    identity: str  # checkpoint content hash; "random": each cell names its initial weights
    setup: dict[str, Any] | None  # None: the checkpoint's own setup block


def make_source(session: ProbeSession, init: str, seed: int) -> Source:
    """The pretrained model, or the same architecture at its initialisation (``random``)."""
    loaded = session.loaded
    if init == "pretrained":
        return Source(loaded.model, init, loaded.checkpoint_hash, None)
    setup = random_init_setup(loaded.encoder, loaded.cifar_stem)
    if loaded.run is not None:  # the network the run's pretraining started from
        init_seed = loaded.run.config.train.seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)
            model = build_model(loaded.run.config.model)
        setup["pretrain_seed"] = init_seed
    else:
        init_seed = seed
        model = reinitialised(loaded.model, seed)
    model.eval()
    return Source(model, init, "random", setup)


def weights_digest(*modules: torch.nn.Module) -> str:
    """A content hash of the state dicts of ``modules``: equal for equal networks (the random
    baselines of runs that differ only in their head agree up to the layers a tap keeps)."""
    h = hashlib.blake2b(digest_size=16)
    for key, value in ((k, v) for m in modules for k, v in m.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class Cell:
    """One (tap, labelled subset) of a finetune command, with what every fit of it shares."""

    tap: str
    subset: LabelledSubset
    directory: Path
    identity: dict[str, Any]


class FinetuneCommand:
    """The state of one ``simclr-transfer finetune`` invocation (see the module docstring)."""

    def __init__(self, opts: FinetuneOptions) -> None:
        check_options(opts)
        self.opts = opts
        self.protocol = PROTOCOLS.get(opts.protocol)
        self.session = s = ProbeSession.open(dataclasses.replace(opts, tap="all"))
        train_ds = s.dataset(opts.train_split)
        assert train_ds is not None
        self.train_ds: ImageDataset = train_ds
        self.train_labels = labels_of(self.train_ds, opts.train_split)
        self.images = dataset_fingerprint(train_ds)  # one stat per file: once, not per cell
        self.test_split = s.test_split(opts.test_split)
        test_ds = s.dataset(self.test_split)
        assert test_ds is not None
        self.test_ds = test_ds
        test_labels = labels_of(test_ds, self.test_split)
        self.num_classes = max(len(self.train_ds.classes), int(self.train_labels.max()) + 1,
                               int(test_labels.max()) + 1)
        self.val_split = s.val_split(opts.val_split, self.test_split)
        self.select_metric = test_ds.info.metric if opts.select == "auto" else opts.select
        recipe = s.recipe(opts.train_split)
        self.train_transform = crop_flip_transform(recipe, opts.crop_scale_min)
        self.test_transform = eval_transform(recipe)
        self.source = make_source(s, opts.init, opts.seed)
        self.run_options = RunOptions(s.device, opts.precision, opts.channels_last, opts.workers,
                                      opts.progress, opts.log_every, opts.checkpoint_every)
        root = Path(opts.output_dir) if opts.output_dir else results_path(s.loaded).parent
        self.work_root = root / "finetune"
        # random-init baselines are shared by every run whose network they equal (one
        # computation for the heads of a suite): they live in the cache, keyed by the weights
        self.baseline_root = Path(s.cache_dir) / "finetune-baselines"
        self.lr_grid = list(opts.lr_grid or self.protocol.lr_grid)
        self.wd_grid = list(opts.wd_grid or self.protocol.wd_grid)

    # -- planning ------------------------------------------------------------------------------
    def subsets(self) -> list[LabelledSubset]:
        if self.opts.subset_file:
            return [subset_from_file(self.opts.subset_file, self.train_ds.files,
                                     self.train_ds.targets)]
        return [label_subset(self.train_labels, f, self.opts.subset_seed)
                for f in self.opts.label_fraction]

    def cell(self, tap: str, subset: LabelledSubset) -> Cell:
        o = self.opts
        source, root = self.source.identity, self.work_root
        if self.source.init == "random":  # the initial network itself names the baseline
            net = build_finetune_net(self.source.model, tap, self.num_classes)
            source, root = f"random:{weights_digest(net.encoder, net.head)}", self.baseline_root
        identity = {
            "source": source, "tap": tap, "classes": self.num_classes,
            "images": self.images, "limit": o.limit,
            "subset": fingerprint(subset.indices.tolist(), size=16), "protocol": self.protocol.name,
            "lr_grid": self.lr_grid, "wd_grid": self.wd_grid, "epochs": o.epochs, "steps": o.steps,
            "batch": o.train_batch_size, "seed": o.seed, "val": [self.val_split, o.val_fraction,
                                                                 self.select_metric],
            "transform": repr(self.train_transform), "world": world_size(),
        }
        name = (f"{tap}_f{subset.fraction:g}_{self.protocol.name}_{self.source.init}_s{o.seed}-"
                f"{fingerprint(identity)}")
        return Cell(tap, subset, root / name, identity)

    def fit_spec(self, cell: Cell, num_images: int, lr: float, wd: float) -> FitSpec:
        """The training of ``num_images`` labelled images at base lr ``lr``, grid decay ``wd``."""
        p, world = self.protocol, world_size()
        batch = min(self.opts.train_batch_size or p.batch_size, num_images)
        batch -= batch % world
        if batch < 1:
            raise UserError(f"{num_images} labelled images cannot fill a batch on {world} "
                            "processes; raise --label-fraction")
        peak = p.peak_lr(lr, batch)
        total = schedule_length(p, cell.subset.fraction, num_images, batch, self.opts.epochs,
                                self.opts.steps)
        return FitSpec(p.optimizer, p.nesterov, p.momentum, peak, p.torch_weight_decay(wd, peak),
                       batch, total, p.bn_momentum(max(1, round(num_images / batch))),
                       self.opts.seed)

    # -- running -------------------------------------------------------------------------------
    def train_one(self, cell: Cell, indices: np.ndarray, lr: float, wd: float, folder: Path,
                  ) -> tuple[torch.nn.Module, FitSpec, dict[str, Any]]:
        spec = self.fit_spec(cell, len(indices), lr, wd)
        net = build_finetune_net(self.source.model, cell.tap, self.num_classes)
        identity = json.dumps({**cell.identity, "fit": dataclasses.asdict(spec),
                               "indices": fingerprint(indices.tolist(), size=16)}, sort_keys=True)
        if is_main_process():
            folder.mkdir(parents=True, exist_ok=True)
        stats = fit(net, self.train_ds.select(indices), self.train_transform, spec,
                    self.run_options, folder, identity, resume=self.opts.resume)
        return net, spec, stats

    def select(self, cell: Cell) -> tuple[float, float, list[dict[str, Any]], int]:
        """(chosen lr, chosen wd, the validation curve, val images); the final model is then
        refit on the whole labelled subset (train + val)."""
        grid = [(lr, wd) for lr in self.lr_grid for wd in self.wd_grid]
        if len(grid) == 1:
            return grid[0][0], grid[0][1], [], 0
        if self.val_split == "holdout":
            fit_idx, val_idx = validation_holdout(self.train_labels, cell.subset,
                                                  self.opts.val_fraction, self.opts.seed)
            val_ds = self.train_ds.select(val_idx)
        else:
            fit_idx = cell.subset.indices
            found = self.session.dataset(self.val_split)
            assert found is not None
            val_ds = found
            labels_of(val_ds, self.val_split)
        curve = []
        for lr, wd in grid:
            folder = cell.directory / "select" / f"lr{lr:g}_wd{wd:g}"
            done = folder / VAL_FILE
            if self.opts.resume and done.is_file():
                metrics = json.loads(done.read_text())
            else:
                net, _, _ = self.train_one(cell, fit_idx, lr, wd, folder)
                metrics = evaluate(net, val_ds, self.test_transform, self.session.device,
                                   self.opts.batch_size, self.opts.workers)
                if is_main_process():
                    done.write_text(json.dumps(metrics) + "\n")
                    (folder / CHECKPOINT).unlink(missing_ok=True)  # only its score is kept
            curve.append({"lr": lr, "wd": wd, **metrics})
            if is_main_process():
                print(f"finetune {cell.tap} @ {cell.subset.fraction:g} labels: lr {lr:g} wd {wd:g} "
                      f"-> val {self.select_metric} {metrics[self.select_metric]:.2f}")
        best = max(range(len(curve)), key=lambda i: (curve[i][self.select_metric], -i))
        return curve[best]["lr"], curve[best]["wd"], curve, len(val_ds)

    def run_cell(self, cell: Cell) -> ResultRecord:
        opts, s = self.opts, self.session
        done = cell.directory / DONE_FILE
        if done.is_file() and self.source.init == "random":
            return self.reuse_baseline(cell, json.loads(done.read_text()))
        if opts.resume and done.is_file():
            record: ResultRecord = json.loads(done.read_text())
            s.records.append(record)
            if is_main_process():
                print(f"finetune {cell.tap} @ {cell.subset.fraction:g} labels: done "
                      f"({cell.directory}); not run again")
            return record
        if cell.directory.exists() and not opts.resume:
            raise UserError(f"{cell.directory} holds an earlier run of this fine-tuning; pass "
                            "--resume to continue it (or remove the folder to start again)")
        if is_distributed():  # every rank has looked before rank 0 creates the folder
            torch.distributed.barrier()
        start = time.perf_counter()
        lr, wd, curve, val_images = self.select(cell)
        net, spec, stats = self.train_one(cell, cell.subset.indices, lr, wd,
                                          cell.directory / "final")
        metrics = with_score({f"finetune/{k}": v for k, v in evaluate(
            net, self.test_ds, self.test_transform, s.device, opts.batch_size,
            opts.workers).items()}, "finetune", self.test_ds.info.metric)
        if curve:
            metrics["finetune/val_score"] = max(c[self.select_metric] for c in curve)
        settings = self.settings(cell, spec, lr, wd, curve, stats)
        splits = {"train": len(cell.subset), "test": len(self.test_ds)}
        if val_images:
            splits["val"] = val_images
        record = s.record("finetune", cell.tap, metrics, settings, splits,
                          time.perf_counter() - start, setup=self.source.setup,
                          optional={"from_tap": cell.tap,
                                    "label_fraction": cell.subset.fraction})
        if is_main_process():
            done.write_text(json.dumps(record) + "\n")
            shown = ", ".join(f"{k.split('/')[1]} {v:.2f}" for k, v in metrics.items())
            print(f"finetune {cell.tap} @ {cell.subset.fraction:g} labels "
                  f"({len(cell.subset)} images): test {shown}")
        return record

    def reuse_baseline(self, cell: Cell, earlier: dict[str, Any]) -> ResultRecord:
        """A random-init cell that another run (or an earlier call) trained already: the same
        network, data and settings (the cell's folder is named by them), so its result is
        recorded again for this run, with this call's tags, without training."""
        start = time.perf_counter()
        if is_main_process():
            print(f"finetune {cell.tap} @ {cell.subset.fraction:g} labels, random init: the same "
                  f"baseline was trained already ({cell.directory}); recording its result")
        return self.session.record(  # wall_s: the time spent now (the training is counted once)
            "finetune", cell.tap, earlier["metrics"], earlier["settings"], earlier["splits"],
            time.perf_counter() - start, setup=self.source.setup,
            optional={"from_tap": cell.tap, "label_fraction": cell.subset.fraction})

    def settings(self, cell: Cell, spec: FitSpec, lr: float, wd: float,
                 curve: list[dict[str, Any]], stats: dict[str, Any]) -> dict[str, Any]:
        o, p, subset = self.opts, self.protocol, cell.subset
        return {
            "from_tap": cell.tap, "label_fraction": subset.fraction,  # also record fields
            "protocol": p.name, "protocol_source": p.source, "init": self.source.init,
            "subset_size": len(subset), "subset_source": subset.source,
            "subset_seed": o.subset_seed if subset.source == "fraction" else None,
            "subset_min_per_class": min(subset.per_class.values()),
            "kept_head_layers": kept_head_layers(cell.tap, self.session.loaded.taps,
                                                 len(self.session.loaded.model.head.layers)),
            "selection": "val" if curve else "none (one setting)",
            "val": self.val_split if curve else None,
            "val_fraction": o.val_fraction if curve and self.val_split == "holdout" else None,
            "select": self.select_metric if curve else None,
            "lr_grid": self.lr_grid, "wd_grid": self.wd_grid, "lr_scaling": p.lr_scaling,
            "optimizer": p.optimizer, "nesterov": p.nesterov, "momentum": p.momentum,
            "batch_size": spec.batch_size, "steps": spec.total_steps,
            "bn_momentum": spec.bn_momentum, "schedule": "cosine, no warm-up",
            "classifier_init": "zeros", "augment": f"random resized crop ({o.crop_scale_min:g}-1) "
            "+ flip", "bf16": use_bf16(o.precision, self.session.device),
            "train_split": o.train_split, "score": self.test_ds.info.metric,
            "test_split": self.test_split, "work_dir": str(cell.directory),
            # what selection chose and measured: results of the run, not its setup (a re-run on
            # other hardware may choose otherwise), so tables treat them as volatile
            "train": {**stats, "world_size": world_size(), "lr": lr, "wd": wd, "peak_lr": spec.lr,
                      "weight_decay": spec.weight_decay, "val_curve": curve},
        }

    def run(self) -> dict[str, float]:
        suffix: dict[int, str] = {}
        subsets = self.subsets()
        for i, subset in enumerate(subsets):
            taps = resolve_taps(self.opts.tap, self.protocol, subset.fraction,
                                self.session.loaded.taps, self.opts.skip_missing_taps, quiet=i > 0)
            for tap in taps:
                if len(subsets) > 1:
                    suffix[len(self.session.records)] = f"@f{subset.fraction:g}"
                self.run_cell(self.cell(tap, subset))
        return self.session.finish(suffix)


def finetune(opts: FinetuneOptions) -> dict[str, float]:
    """Fine-tune from every tap and label fraction of ``opts``; one record per pair."""
    return FinetuneCommand(opts).run()

