"""``--engine detectron2``: detectron2's Faster R-CNN on our data, weights, metrics and records.

detectron2 (Wu et al. 2019, github.com/facebookresearch/detectron2) is the engine behind the
MoCo detection protocol (He et al. 2020, Sec. 4.2). This module imports it at the top, so
:mod:`.command` imports this module only for ``--engine detectron2``.

What is detectron2's: the model (``GeneralizedRCNN`` built from :mod:`.detectron2_config`'s
config), the weight loading (``DetectionCheckpointer`` and its name-matching heuristics, which
put ``res5`` into ``roi_heads.res5`` for C4 and ``res2..5`` into ``backbone.bottom_up`` for
FPN), the data pipeline (``DatasetMapper``: ResizeShortestEdge over ``MIN_SIZE_TRAIN``, the
horizontal flip; ``TrainingSampler``; aspect-ratio grouping), the solver (SGD with
``WarmupMultiStepLR``) and the hooks (LR schedule, PreciseBN, periodic checkpoints, writers).

What is shared with the torchvision engine, so that the two differ only in the detector: the
images and boxes (:func:`.datasets.load_detection_data`: invalid boxes dropped and counted,
``data.limit_train``/``limit_test`` applied, one class list), the metrics
(:func:`.evaluate.detection_metrics`, which equal detectron2's ``PascalVOCDetectionEvaluator``
and ``COCOEvaluator`` on the same predictions: ``tests/transfer/test_detectron2_engine.py``),
the per-seed loop, the record and its tags (:mod:`.command`).

Where running ``DefaultTrainer`` as a library departs from its defaults, and why:

* writers: ``CommonMetricPrinter`` and ``JSONWriter`` (``metrics.json``); TensorBoard's
  (``TensorboardXWriter``, into ``<work>/tensorboard/`` as the torchvision engine) only with
  ``train.tensorboard`` (the default writers import tensorboard unconditionally);
* no ``EvalHook``: it evaluates after the last iteration even with ``TEST.EVAL_PERIOD: 0``;
  the engine evaluates once, after training and Precise BN;
* the seed is applied (``seed_all_rng``, what ``default_setup`` does) before the model, the
  data loader and its sampler are built, so the same seed gives the same AP;
* the datasets are registered under names unique to the call and removed afterwards, so a
  suite can run several detectron2 cells in one process.

Refused with one line (:func:`check_options`): ``--resume`` (detectron2 restores weights,
optimizer and iteration but restarts its data stream, so a resumed run would equal no
uninterrupted one), torchrun (detectron2 has its own launcher), ``train.hflip_prob`` other than
0 or 0.5, and bf16 without CUDA (detectron2's ``AMPTrainer`` needs CUDA).
"""

from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
)
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.layers import get_norm
from detectron2.modeling.backbone.resnet import BasicBlock, ResNet
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
from detectron2.structures import BoxMode, Instances
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import (
    CommonMetricPrinter,
    EventWriter,
    JSONWriter,
    TensorboardXWriter,
)
from torch import nn

from pretrain.distributed import is_distributed, resolve_device
from pretrain.errors import ConfigError, NonFiniteLossError
from pretrain.scalars import TENSORBOARD_DIR
from pretrain.step import use_bf16
from transfer.detection.config import DetectionConfig
from transfer.detection.detectron2_config import detectron2_config
from transfer.detection.detectron2_weights import detectron2_backbone, write_detectron2_pickle
from transfer.detection.evaluate import detection_metrics
from transfer.detection.structures import DetectionDataset
from transfer.detection.weights import BackboneSource

WEIGHTS_FILE = "backbone_d2.pkl"
CONFIG_FILE = "detectron2_config.yaml"
METRICS_FILE = "metrics.json"  # detectron2's JSONWriter: one line per logged iteration
LOG_FILE = "log.txt"
_REGISTRATIONS = itertools.count()


def check_options(cfg: DetectionConfig, resume: bool) -> None:
    """Refuse, naming the option, what this engine cannot honour (before any data is read)."""
    if resume:
        raise ConfigError(
            "--resume is not supported by --engine detectron2: detectron2 restores the weights, "
            "optimizer and iteration but restarts its data stream, so the result would equal no "
            "uninterrupted run; start again in a new --output-dir, or use --engine torchvision "
            "(exact resume)")
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--engine detectron2 runs in one process (not under torchrun); use "
                          "detectron2's own launcher, or --engine torchvision under torchrun")
    if cfg.train.hflip_prob not in (0.0, 0.5):
        raise ConfigError(f"train.hflip_prob={cfg.train.hflip_prob}: detectron2 flips with "
                          "probability 0.5 (INPUT.RANDOM_FLIP) or not at all; use 0.5 or 0, or "
                          "--engine torchvision")
    device = resolve_device(cfg.train.device)
    if cfg.train.precision == "bf16" and device.type != "cuda":
        raise ConfigError("train.precision=bf16 with --engine detectron2 needs CUDA "
                          "(detectron2's AMPTrainer); use train.precision=fp32 or auto")


def register_custom_heads() -> None:
    """C4 heads stock detectron2 lacks: a BasicBlock res5 (R18/34) and MoCo's extra norm after
    res5 (``Res5ROIHeadsExtraNorm`` of MoCo's ``detection/train_net.py``)."""

    class BasicRes5ROIHeads(Res5ROIHeads):
        @classmethod
        def _build_res5_block(cls, cfg: Any) -> tuple:
            out = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS * 8
            n = {18: 2, 34: 3}[cfg.MODEL.RESNETS.DEPTH]
            blocks = ResNet.make_stage(BasicBlock, n, stride_per_block=[2] + [1] * (n - 1),
                                       in_channels=out // 2, out_channels=out,
                                       norm=cfg.MODEL.RESNETS.NORM)
            return nn.Sequential(*blocks), out

    def with_norm(base: type) -> type:
        class ExtraNorm(base):
            @classmethod
            def _build_res5_block(cls, cfg: Any) -> tuple:
                seq, out = super()._build_res5_block(cfg)
                seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out))
                return seq, out
        return ExtraNorm

    for name, cls in (("BasicRes5ROIHeads", BasicRes5ROIHeads),
                      ("Res5ROIHeadsExtraNorm", with_norm(Res5ROIHeads)),
                      ("BasicRes5ROIHeadsExtraNorm", with_norm(BasicRes5ROIHeads))):
        if name not in ROI_HEADS_REGISTRY:
            cls.__name__ = name
            ROI_HEADS_REGISTRY.register(cls)


def dataset_dicts(dataset: DetectionDataset) -> list[dict[str, Any]]:
    """detectron2's standard dataset dicts of our records: the same images and boxes.

    Boxes are ``XYXY_ABS`` in pixels, ``category_id`` is the contiguous 0-based class (ours
    minus 1), and a box the torchvision engine leaves out of training (COCO crowd) is marked
    ``iscrowd``, which ``DatasetMapper`` leaves out too. ``index`` (the record's position)
    comes back with each prediction.
    """
    out = []
    for index, rec in enumerate(dataset.records):
        skip = rec.ignore & rec.train_ignored
        annotations = [
            {"bbox": [float(v) for v in box], "bbox_mode": BoxMode.XYXY_ABS,
             "category_id": int(label) - 1, "iscrowd": int(crowd)}
            for box, label, crowd in zip(rec.boxes, rec.labels, skip, strict=True)
        ]
        out.append({"file_name": str(rec.file), "image_id": rec.image_id, "index": index,
                    "height": rec.height, "width": rec.width, "annotations": annotations})
    return out


def to_prediction(inputs: dict[str, Any], instances: Instances) -> dict[str, Any]:
    """One image's detectron2 ``Instances`` (0-based classes, original-image pixels) as
    :func:`.evaluate.predict`'s prediction dict (1-based labels)."""
    instances = instances.to("cpu")
    return {
        "index": int(inputs["index"]),
        "image_id": int(inputs["image_id"]),
        "boxes": instances.pred_boxes.tensor.float().numpy(),
        "scores": instances.scores.float().numpy(),
        "labels": instances.pred_classes.numpy().astype(np.int64) + 1,
    }


class PredictionCollector(DatasetEvaluator):
    """A detectron2 evaluator that keeps every prediction (for ``detection_metrics``)."""

    def reset(self) -> None:
        self.predictions: list[dict[str, Any]] = []

    def process(self, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> None:
        for inp, out in zip(inputs, outputs, strict=True):
            self.predictions.append(to_prediction(inp, out["instances"]))

    def evaluate(self) -> list[dict[str, Any]]:
        return sorted(self.predictions, key=lambda p: p["index"])


def event_writers(output_dir: Path, max_iter: int, tensorboard: bool = False) -> list[EventWriter]:
    """Console and ``metrics.json`` writers (no extra package); TensorBoard's when asked for
    (``train.tensorboard``, whose package :func:`.command.run` has checked)."""
    writers = [CommonMetricPrinter(max_iter), JSONWriter(str(output_dir / METRICS_FILE))]
    if tensorboard:
        writers.append(TensorboardXWriter(str(output_dir / TENSORBOARD_DIR)))
    return writers


class EngineTrainer(DefaultTrainer):
    """``DefaultTrainer`` with ``DefaultTrainer.build_hooks``'s hooks minus ``EvalHook``,
    writers from :func:`event_writers` every ``log_period`` iterations."""

    def __init__(self, cfg: CfgNode, log_period: int, tensorboard: bool = False) -> None:
        self.log_period = log_period  # read by build_hooks, which DefaultTrainer.__init__ calls
        self.tensorboard = tensorboard
        super().__init__(cfg)

    def build_hooks(self) -> list[Any]:
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATALOADER.NUM_WORKERS = 0  # as DefaultTrainer: Precise BN's own loader
        out: list[Any] = [hooks.IterationTimer(), hooks.LRScheduler()]
        if cfg.TEST.PRECISE_BN.ENABLED and hooks.get_bn_modules(self.model):
            # period 0: once, after the last iteration (before the checkpoint is written)
            out.append(hooks.PreciseBN(0, self.model, self.build_train_loader(cfg),
                                       cfg.TEST.PRECISE_BN.NUM_ITER))
        out.append(hooks.PeriodicCheckpointer(self.checkpointer, cfg.SOLVER.CHECKPOINT_PERIOD))
        out.append(hooks.PeriodicWriter(self.build_writers(), period=self.log_period))
        return out

    def build_writers(self) -> list[EventWriter]:
        return event_writers(Path(self.cfg.OUTPUT_DIR), self.max_iter, self.tensorboard)


class KeyReportingCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that keeps the incompatible keys of its last load."""

    def _load_model(self, checkpoint: Any) -> Any:
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible

    def unused_keys(self) -> list[str]:
        """Checkpoint keys the model took nothing from, except BN's ``num_batches_tracked``
        where the model's norm (FrozenBN, GN) has no such buffer."""
        own = set(self.model.state_dict())
        return sorted(k for k in self.incompatible.unexpected_keys
                      if not (k.endswith(".num_batches_tracked") and k not in own))


def backbone_keys(model: nn.Module, arch: str) -> list[str]:
    """The model's keys that come from the pretrained ResNet: ``backbone.bottom_up.*`` (FPN);
    ``backbone.*`` and ``roi_heads.res5.*`` without the extra norm (C4)."""
    keys = list(model.state_dict())
    if arch == "fpn":
        return [k for k in keys if k.startswith("backbone.bottom_up.")]
    return [k for k in keys if k.startswith("backbone.")
            or (k.startswith("roi_heads.res5.") and not k.startswith("roi_heads.res5.norm."))]


@contextmanager
def registered(dataset: DetectionDataset, role: str) -> Iterator[str]:
    """``dataset`` in detectron2's catalogs under a name unique to this call, removed after."""
    name = f"simclr_{role}_{os.getpid()}_{next(_REGISTRATIONS)}"
    dicts = dataset_dicts(dataset)
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).set(thing_classes=list(dataset.classes))
    try:
        yield name
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@contextmanager
def detectron2_logging(work_dir: Path, to_console: bool) -> Iterator[None]:
    """detectron2's and fvcore's log lines into ``work_dir/log.txt`` (and the console when
    ``to_console``) for the duration of one run; the handlers are removed afterwards."""
    handlers: list[logging.Handler] = [logging.FileHandler(work_dir / LOG_FILE)]
    if to_console:
        handlers.append(logging.StreamHandler(sys.stdout))
    fmt = logging.Formatter("[%(asctime)s %(name)s] %(message)s", "%H:%M:%S")
    loggers = [logging.getLogger(n) for n in ("detectron2", "fvcore")]
    levels = [lg.level for lg in loggers]
    for handler in handlers:
        handler.setFormatter(fmt)
    for lg in loggers:
        lg.setLevel(logging.INFO)
        for handler in handlers:
            lg.addHandler(handler)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            for handler in handlers:
                lg.removeHandler(handler)
            lg.setLevel(level)
        for handler in handlers:
            handler.close()


def build_config(cfg: DetectionConfig, source: BackboneSource, weights: str, num_classes: int,
                 train: str, test: str, work_dir: Path, device: torch.device) -> dict[str, Any]:
    """The detectron2 config of one run as a dict (also written to ``detectron2_config.yaml``)."""
    config = detectron2_config(cfg, source.encoder, cfg.model.arch, weights, num_classes,
                               *source.normalisation(cfg.model.pixel_mean, cfg.model.pixel_std))
    config["DATASETS"] = {"TRAIN": [train], "TEST": [test]}
    config["DATALOADER"] = {"NUM_WORKERS": cfg.data.num_workers}
    config["INPUT"]["RANDOM_FLIP"] = "horizontal" if cfg.train.hflip_prob > 0 else "none"
    config["OUTPUT_DIR"] = str(work_dir)
    config["MODEL"]["DEVICE"] = str(device)
    config["SOLVER"]["AMP"] = {"ENABLED": use_bf16(cfg.train.precision, device)}
    return config


def _final_loss(trainer: DefaultTrainer) -> float:
    """Mean total loss of the last 20 iterations (as the torchvision engine reports it)."""
    values = [v for v, _ in trainer.storage.history("total_loss").values()]
    tail = values[-20:]
    return float(np.mean(tail)) if tail else float("nan")


def run_seed(cfg: DetectionConfig, source: BackboneSource, train_ds: DetectionDataset,
             test_ds: DetectionDataset, work_dir: Path, resume: bool) -> tuple[dict, dict, str]:
    """Fine-tune and evaluate once with detectron2; returns (metrics, settings extras, device).

    The counterpart of :func:`.command.run_seed` (same arguments, same returns). ``cfg`` and
    ``resume`` have passed :func:`check_options` (:func:`.command.engine_runner` calls it before
    any data is read), so ``resume`` is always False here.
    """
    if (work_dir / "last_checkpoint").is_file():
        raise ConfigError(f"{work_dir} already holds a detectron2 run; --engine detectron2 "
                          "cannot resume it: choose another --output-dir or remove the folder")
    register_custom_heads()
    t = cfg.train
    device = resolve_device(t.device)
    bf16 = use_bf16(t.precision, device)
    work_dir.mkdir(parents=True, exist_ok=True)
    weights, mapping = "", None
    if source.state_dict is not None:
        arrays, mapping = detectron2_backbone(source)
        write_detectron2_pickle(arrays, work_dir / WEIGHTS_FILE, author="simclr-transfer")
        weights = str(work_dir / WEIGHTS_FILE)
    with registered(train_ds, "train") as train, registered(test_ds, "test") as test, \
            detectron2_logging(work_dir, t.progress):
        config = build_config(cfg, source, weights, len(train_ds.classes), train, test, work_dir,
                              device)
        (work_dir / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=False))
        d2cfg = get_cfg()
        d2cfg.merge_from_file(str(work_dir / CONFIG_FILE))
        d2cfg.freeze()
        seed_all_rng(t.seed)  # before the model, the data loader and its sampler exist
        trainer = EngineTrainer(d2cfg, log_period=t.log_every, tensorboard=t.tensorboard)
        if bf16:
            trainer._trainer.precision = torch.bfloat16  # AMPTrainer's autocast dtype (fp16 default)
        own = backbone_keys(trainer.model, cfg.model.arch)
        missing, unused = own, []
        if weights:
            checkpointer = KeyReportingCheckpointer(trainer.model)
            checkpointer.load(weights)
            missing = sorted(set(own) & set(checkpointer.incompatible.missing_keys))
            unused = checkpointer.unused_keys()
            print(f"backbone: {source.encoder} from {source.kind} {source.path}: loaded "
                  f"{len(own) - len(missing)} of {len(own)} backbone tensors; missing: "
                  f"{', '.join(missing) or 'none'}; unused: {', '.join(unused) or 'none'}")
        else:
            print(f"backbone: {source.encoder}, random init ({len(own)} tensors)")
        start = time.perf_counter()
        try:
            trainer.train()
        except FloatingPointError as exc:
            raise NonFiniteLossError(f"detection loss became non-finite at iteration "
                                     f"{trainer.iter + 1} (detectron2): "
                                     f"{str(exc).splitlines()[0]}") from None
        train_wall = time.perf_counter() - start
        loader = build_detection_test_loader(DatasetCatalog.get(test),  # the registered dicts
                                             mapper=DatasetMapper(d2cfg, is_train=False),
                                             batch_size=cfg.eval.batch_size,
                                             num_workers=cfg.data.num_workers)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            predictions = inference_on_dataset(trainer.model, loader, PredictionCollector())
    if len(predictions) != len(test_ds):  # InferenceSampler covers every image once
        raise AssertionError(f"detectron2 predicted {len(predictions)} of {len(test_ds)} images")
    precise = (cfg.eval.precise_bn_iters
               if cfg.eval.precise_bn_iters and hooks.get_bn_modules(trainer.model) else 0)
    extras = {
        "train": {"iterations": t.max_iter, "resumed_from": 0, "final_loss": _final_loss(trainer),
                  "train_wall_s": train_wall,
                  "images_per_s": t.max_iter * t.batch_size / train_wall if train_wall else 0.0},
        "loaded_tensors": len(own) - len(missing),
        "missing_keys": missing,
        "ignored_keys": unused + source.dropped,
        "skipped_keys": sorted(mapping.skipped) if mapping else [],
        "world_size": 1,
        "bf16": bf16,
        "predicted_images": len(predictions),
        "precise_bn_batches": precise,
        "detectron2_config": config,
    }
    return detection_metrics(test_ds, predictions), extras, device.type
