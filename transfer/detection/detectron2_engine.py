"""``--engine detectron2``: train detectron2's own Faster R-CNN on the exported weights.

Only runs where detectron2 is importable (install: ``pip install
'git+https://github.com/facebookresearch/detectron2.git'``, which needs a C++/CUDA toolchain).
It converts the backbone (:mod:`.detectron2_weights`), writes the matching config
(:mod:`.detectron2_config`), registers the datasets (VOC folders via ``register_pascal_voc``,
COCO via ``register_coco_instances``), trains with ``DefaultTrainer`` and evaluates with
``COCOEvaluator`` (COCO) or ``PascalVOCDetectionEvaluator`` (VOC; 11-point metric as for 2007).
The test suite does not run this path: detectron2 is not installable from the package
registries CI reaches.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from pretrain.errors import ConfigError
from pretrain.jsonl import append_jsonl
from transfer.detection.config import DatasetSpec, DetectionConfig
from transfer.detection.datasets import resolve_root
from transfer.detection.weights import BackboneSource

INSTALL = "pip install 'git+https://github.com/facebookresearch/detectron2.git'"


def _register(d2: Any, name: str, spec: DatasetSpec, cfg: DetectionConfig, classes: list[str]) -> None:
    from transfer.detection.coco import find_coco_files
    from transfer.detection.voc import find_voc_folder

    base = resolve_root(spec.root, cfg.data.cache_dir)
    if spec.format == "voc":
        folder = find_voc_folder(base, spec.subdir)
        d2.data.datasets.register_pascal_voc(name, str(folder), spec.split, 2007, classes)
    else:
        ann, images = find_coco_files(base, spec.split, spec.images, spec.annotations)
        d2.data.datasets.register_coco_instances(name, {}, str(ann), str(images))


def _custom_heads(d2: Any) -> None:
    """C4 heads stock detectron2 lacks: BasicBlock res5 (R18/34) and MoCo's extra norm."""
    from detectron2.layers import get_norm
    from detectron2.modeling.backbone.resnet import BasicBlock, ResNet
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads
    from torch import nn

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


def run_detectron2(cfg: DetectionConfig, source: BackboneSource, work_dir: Path,
                   results: Path) -> dict[str, float]:
    try:
        import detectron2 as d2
        import detectron2.data.datasets  # noqa: F401
        from detectron2.config import get_cfg
        from detectron2.engine import DefaultTrainer
        from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
    except ImportError:
        raise ConfigError(f"--engine detectron2 needs detectron2, which is not installed; {INSTALL}"
                          " (or use the default --engine torchvision)") from None
    from pretrain.distributed import resolve_device
    from transfer.detection.datasets import describe_spec, load_detection_data
    from transfer.detection.detectron2_config import detectron2_config
    from transfer.detection.detectron2_weights import to_detectron2, write_detectron2_pickle
    from transfer.detection.record import detection_record

    start = time.perf_counter()
    _custom_heads(d2)
    train_ds, _, _ = load_detection_data(cfg.data)  # validates data, gives the class list
    classes = train_ds.classes
    work_dir.mkdir(parents=True, exist_ok=True)
    if source.cifar_stem:
        raise ConfigError("detectron2's stem is 7x7; a CIFAR-stem backbone needs --engine torchvision")
    arrays, mapping = to_detectron2(source.state_dict or {})
    if mapping.unmapped:
        raise ConfigError(f"keys without a detectron2 name: {', '.join(mapping.unmapped[:5])}")
    pkl = work_dir / "backbone_d2.pkl"
    if source.state_dict is not None:
        write_detectron2_pickle(arrays, pkl, author="simclr-transfer")
    names = [f"simclr_train_{i}" for i in range(len(cfg.data.train))]
    for name, spec in zip(names, cfg.data.train, strict=True):
        _register(d2, name, spec, cfg, classes)
    _register(d2, "simclr_test", cfg.data.test, cfg, classes)
    config = detectron2_config(cfg, source.encoder, cfg.model.arch,
                               str(pkl) if source.state_dict is not None else "", len(classes),
                               source.pixel_mean, source.pixel_std)
    config["DATASETS"] = {"TRAIN": names, "TEST": ["simclr_test"]}
    config["OUTPUT_DIR"] = str(work_dir)
    config["MODEL"]["DEVICE"] = str(resolve_device(cfg.train.device))
    (work_dir / "detectron2_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    d2cfg = get_cfg()
    d2cfg.merge_from_file(str(work_dir / "detectron2_config.yaml"))
    is_voc = cfg.data.test.format == "voc"

    class Trainer(DefaultTrainer):
        @classmethod
        def build_evaluator(cls, c: Any, dataset_name: str, output_folder: Any = None) -> Any:
            if is_voc:
                return PascalVOCDetectionEvaluator(dataset_name)
            return COCOEvaluator(dataset_name, output_dir=str(work_dir / "inference"))

    trainer = Trainer(d2cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    raw = Trainer.test(d2cfg, trainer.model)["bbox"]
    # PascalVOCDetectionEvaluator's AP/AP50/AP75 are VOC APs (11-point for 2007), not COCO's:
    # the names of evaluate.py's two families.
    prefix = "det/voc07_" if is_voc else "det/coco_"
    metrics = {f"{prefix}{k}": float(v) for k, v in raw.items() if not k.startswith("AP-")}
    settings = {"engine": "detectron2", "detectron2_config": config,
                "unmapped_keys": mapping.unmapped, "skipped_keys": list(mapping.skipped)}
    splits = {"train": len(train_ds)}
    device = config["MODEL"]["DEVICE"]
    append_jsonl(results, detection_record(metrics, settings, source.setup,
                                           describe_spec(cfg.data.test), splits, cfg.train.seed,
                                           time.perf_counter() - start, device))
    print(f"detectron2 metrics: {metrics}")
    return metrics
