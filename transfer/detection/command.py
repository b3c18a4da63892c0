"""``simclr-transfer detection --config PRESET [options] SOURCE [key=value ...]``: the wrapper.

Reads the config, resolves the backbone source and the data, then for each seed builds the
detector, fine-tunes it (:func:`.train.train_detector`, or detectron2's trainer with
``--engine detectron2``: :mod:`.detectron2_engine`), evaluates the final model on the
test split (never a best checkpoint) and appends one record per seed to ``results.jsonl``
(:mod:`.record`), the same record for both engines:
the run directory's for a run source, ``--output-dir``'s otherwise. With ``--seeds N`` the
returned metrics are the mean over N seeds and ``<key>_std`` the sample standard deviation
(MoCo reports the mean of 5 trials).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pretrain.config_io import load_config, to_dict, write_yaml
from pretrain.distributed import resolve_device
from pretrain.errors import ConfigError
from pretrain.jsonl import append_jsonl
from pretrain.run import RESULTS_FILE
from pretrain.scalars import check_available, open_writers
from pretrain.step import use_bf16
from probes.records import parse_tags
from transfer.detection import distributed as dist
from transfer.detection.config import DetectionConfig, resolve_preset
from transfer.detection.datasets import load_detection_data
from transfer.detection.evaluate import HEADLINE, detection_metrics, predict
from transfer.detection.model import make_detector
from transfer.detection.precise_bn import update_bn_stats
from transfer.detection.record import detection_record, record_settings
from transfer.detection.structures import DetectionDataset
from transfer.detection.train import CHECKPOINT, train_detector, training_batches
from transfer.detection.weights import BackboneSource, load_backbone_source

STD_KEYS = frozenset(k for keys in HEADLINE.values() for k in keys)  # both families


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Options first: argparse cannot resume positionals after an option (SOURCE --config X k=v).
    p.usage = ("simclr-transfer detection --config PRESET [--seeds N] [--output-dir DIR] "
               "[--resume] [--engine E] [--json] SOURCE [key=value ...]")
    p.add_argument("source", help="run directory, torchvision/timm .pth/.safetensors, or 'random'")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.max_iter=100")
    p.add_argument("--config", required=True, help="YAML file or preset name in configs/detection/")
    p.add_argument("--seeds", type=int, default=1, help="repeat with seeds seed..seed+N-1")
    p.add_argument("--output-dir", default="", help="work folders (and records, for non-run sources)")
    p.add_argument("--resume", action="store_true", help="continue from the work folder's checkpoint")
    p.add_argument("--engine", choices=["torchvision", "detectron2"], default="torchvision",
                   help="whose Faster R-CNN and trainer: torchvision's (default) or detectron2's "
                        "(needs detectron2 installed; same data, metrics and records)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                   help="stored in the records' tags (repeatable), e.g. a suite cell")


def output_paths(source: BackboneSource, output_dir: str, name: str, seed: int) -> tuple[Path, Path]:
    """(work folder of this seed, results.jsonl)."""
    if source.kind == "run":
        base = Path(output_dir) if output_dir else Path(source.path) / "detection"
        return base / f"{name}_s{seed}", Path(source.path) / RESULTS_FILE
    base = Path(output_dir or "runs/detection")
    init = "random" if source.kind == "random" else Path(source.path).stem
    return base / f"{name}_{source.encoder}-{init}_s{seed}", base / RESULTS_FILE


def run_seed(cfg: DetectionConfig, source: BackboneSource, train_ds: DetectionDataset,
             test_ds: DetectionDataset, work_dir: Path, resume: bool) -> tuple[dict, dict, str]:
    """Fine-tune and evaluate once; returns (metrics, settings extras, device name)."""
    t = cfg.train
    device = resolve_device(t.device)
    distributed = dist.init_from_environment(device)
    device = dist.local_device(device)
    if (work_dir / CHECKPOINT).is_file() and not resume:
        raise ConfigError(f"{work_dir} already holds a checkpoint; pass --resume to continue it "
                          "or choose another --output-dir")
    torch.manual_seed(t.seed)
    model, report, notes = make_detector(cfg.model, source, len(train_ds.classes),
                                         sync_bn=distributed and device.type == "cuda")
    if dist.is_main():
        print(report.summary(source))
        for note in notes:
            print(note)
        work_dir.mkdir(parents=True, exist_ok=True)
        write_yaml(to_dict(cfg), work_dir / "config.yaml")
    stats = train_detector(model, train_ds, t, work_dir, device, resume=resume,
                           num_workers=cfg.data.num_workers)
    bf16 = use_bf16(t.precision, device)
    precise = update_bn_stats(  # no-op unless eval.precise_bn_iters and trained BNs
        model, training_batches(train_ds, t, device, t.max_iter, cfg.eval.precise_bn_iters,
                                cfg.data.num_workers), cfg.eval.precise_bn_iters, bf16)
    preds = predict(model, test_ds, device, cfg.eval.batch_size, cfg.data.num_workers, bf16,
                    t.progress)
    metrics = detection_metrics(test_ds, preds) if dist.is_main() else {}
    extras = {"train": stats, "loaded_tensors": len(report.loaded),
              "missing_keys": report.missing, "ignored_keys": report.ignored,
              "world_size": dist.world_size(), "bf16": bf16, "predicted_images": len(preds),
              "precise_bn_batches": precise}
    return metrics, extras, device.type


def aggregate(per_seed: list[dict[str, float]]) -> dict[str, float]:
    """Mean over seeds of every key; ``<key>_std`` (ddof=1, 0 for one seed) for the headline
    keys of both families."""
    out: dict[str, float] = {}
    for key in per_seed[0]:
        values = np.array([m[key] for m in per_seed], dtype=float)
        out[key] = float(np.mean(values))
        if key in STD_KEYS:
            out[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    out["det/n_seeds"] = float(len(per_seed))
    return out


INSTALL = ("detectron2 is installed from its repository (it is not on PyPI): "
           "pip install 'git+https://github.com/facebookresearch/detectron2.git' (needs a C++ "
           "compiler; https://detectron2.readthedocs.io/en/latest/tutorials/install.html)")

SeedRunner = Callable[[DetectionConfig, BackboneSource, DetectionDataset, DetectionDataset, Path,
                       bool], tuple[dict, dict, str]]


def engine_runner(engine: str, cfg: DetectionConfig, resume: bool) -> SeedRunner:
    """The per-seed function of ``engine`` (:func:`run_seed` or detectron2's counterpart),
    after checking the engine can honour ``cfg`` and ``resume``."""
    if engine == "torchvision":
        return run_seed
    try:
        from transfer.detection import detectron2_engine
    except ImportError as exc:
        top = (exc.name or str(exc)).split(".")[0]
        what = top if top == "detectron2" else f"{top} (a detectron2 dependency)"
        raise ConfigError(f"--engine detectron2 needs detectron2, but {what} is not installed; "
                          f"{INSTALL}; or use the default --engine torchvision") from None
    detectron2_engine.check_options(cfg, resume)
    return detectron2_engine.run_seed


def run(args: argparse.Namespace) -> dict[str, float]:
    cfg_path = resolve_preset(args.config)
    cfg = load_config(DetectionConfig, cfg_path, args.overrides)
    name = cfg.name or cfg_path.stem
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    check_available(cfg.train.tensorboard, "")  # one line, before any data or weights are read
    source = load_backbone_source(args.source, cfg.model.encoder)
    run_one = engine_runner(args.engine, cfg, args.resume)
    train_ds, test_ds, data_stats = load_detection_data(cfg.data)
    headline = HEADLINE[cfg.data.test.format]  # VOC07 family for VOC data, COCO for COCO
    per_seed = []
    for i in range(args.seeds):
        seed = cfg.train.seed + i
        seed_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=seed))
        work_dir, results = output_paths(source, args.output_dir, name, seed_cfg.train.seed)
        start = time.perf_counter()
        metrics, extras, device = run_one(seed_cfg, source, train_ds, test_ds, work_dir, args.resume)
        if not dist.is_main():
            continue
        settings = {**record_settings(seed_cfg), "preset": name, "engine": args.engine,
                    "headline": list(headline),
                    "work_dir": str(work_dir), "classes": train_ds.classes, **data_stats,
                    **extras}
        splits = {"train": len(train_ds), "test": len(test_ds)}
        record = detection_record(metrics, settings, source.setup, test_ds.name, splits,
                                  seed_cfg.train.seed, time.perf_counter() - start, device,
                                  parse_tags(args.tag))
        append_jsonl(results, record)
        if seed_cfg.train.tensorboard:  # the test metrics, at the last iteration
            with open_writers(work_dir, tensorboard=True) as writers:
                writers.write(metrics, seed_cfg.train.max_iter)
        per_seed.append(metrics)
        shown = ", ".join(f"{k.split('/')[1]} {metrics[k]:.2f}" for k in headline)
        print(f"detection seed {seed_cfg.train.seed}: {shown}  (record: {results})")
    if not per_seed:
        return {}
    summary = aggregate(per_seed)
    if len(per_seed) > 1:
        print("detection mean over seeds: " + ", ".join(
            f"{k.split('/')[1]} {summary[k]:.2f} ± {summary[k + '_std']:.2f}" for k in headline
        ) + f" (n={len(per_seed)})")
    return summary
