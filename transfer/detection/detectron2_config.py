"""A detectron2 config (yacs YAML) matching exported weights and a detection config.

Self-contained (no ``_BASE_``): the values of detectron2's ``Base-RCNN-FPN.yaml`` /
``Base-RCNN-C4.yaml`` plus what torchvision-style weights need (the notes of detectron2's
``convert-torchvision-to-d2.py``): ``INPUT.FORMAT: RGB``, ``RESNETS.STRIDE_IN_1X1: False``
(torchvision puts the stride in the 3x3 conv), ``PIXEL_MEAN``/``PIXEL_STD`` in 0-255 RGB
units, ``RESNETS.DEPTH``, and ``RES2_OUT_CHANNELS: 64`` for ResNet-18/34 (detectron2 asserts
it). The solver, scales and class count come from the detection config.

Stock detectron2 builds the C4 ``res5`` head from Bottleneck blocks, so ResNet-18/34 C4 and
MoCo's extra norm after res5 need custom ROI heads (``BasicRes5ROIHeads``,
``Res5ROIHeadsExtraNorm``); ``transfer.detection.detectron2_engine`` registers both.
"""

from __future__ import annotations

from typing import Any

from transfer.detection.config import DetectionConfig

DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50}
D2_NORMS = {"frozen_bn": "FrozenBN", "bn": "BN", "syncbn": "SyncBN", "gn": "GN"}


def detectron2_config(
    cfg: DetectionConfig,
    encoder: str,
    arch: str,
    weights: str,
    num_classes: int,
    pixel_mean: tuple[float, ...],
    pixel_std: tuple[float, ...],
) -> dict[str, Any]:
    """The config as a nested dict (write it with ``yaml.safe_dump``).

    Args:
        pixel_mean, pixel_std: RGB normalisation in 0-1 units (as torchvision); written x255.
    """
    depth = DEPTHS[encoder]
    m, t = cfg.model, cfg.train
    basic = depth in (18, 34)
    resnets: dict[str, Any] = {
        "DEPTH": depth,
        "RES2_OUT_CHANNELS": 64 if basic else 256,
        "STRIDE_IN_1X1": False,
        "NORM": D2_NORMS[m.norm],
    }
    model: dict[str, Any] = {
        "META_ARCHITECTURE": "GeneralizedRCNN",
        "WEIGHTS": weights,
        "MASK_ON": False,
        "PIXEL_MEAN": [round(255.0 * v, 3) for v in pixel_mean],
        "PIXEL_STD": [round(255.0 * v, 3) for v in pixel_std],
        "BACKBONE": {"FREEZE_AT": 5 - m.trainable_stages},
        "RESNETS": resnets,
    }
    if arch == "fpn":
        model["BACKBONE"]["NAME"] = "build_resnet_fpn_backbone"
        resnets["OUT_FEATURES"] = ["res2", "res3", "res4", "res5"]
        model["FPN"] = {"IN_FEATURES": ["res2", "res3", "res4", "res5"],
                        "NORM": "" if m.fpn_norm == "none" else D2_NORMS[m.fpn_norm]}
        model["ANCHOR_GENERATOR"] = {"SIZES": [[32], [64], [128], [256], [512]],
                                     "ASPECT_RATIOS": [[0.5, 1.0, 2.0]]}
        model["RPN"] = {"IN_FEATURES": ["p2", "p3", "p4", "p5", "p6"],
                        "PRE_NMS_TOPK_TRAIN": 2000, "PRE_NMS_TOPK_TEST": 1000,
                        "POST_NMS_TOPK_TRAIN": 1000, "POST_NMS_TOPK_TEST": m.proposals_test}
        model["ROI_HEADS"] = {"NAME": "StandardROIHeads", "IN_FEATURES": ["p2", "p3", "p4", "p5"]}
        model["ROI_BOX_HEAD"] = {"NAME": "FastRCNNConvFCHead", "NUM_FC": 2, "POOLER_RESOLUTION": 7}
    else:
        model["BACKBONE"]["NAME"] = "build_resnet_backbone"
        resnets["OUT_FEATURES"] = ["res4"]
        model["RPN"] = {"PRE_NMS_TOPK_TEST": 6000, "POST_NMS_TOPK_TEST": m.proposals_test}
        head = "Res5ROIHeads"
        if basic:
            head = "BasicRes5ROIHeads"
        if m.res5_extra_norm:
            head = ("Basic" if basic else "") + "Res5ROIHeadsExtraNorm"
        model["ROI_HEADS"] = {"NAME": head}
    model.setdefault("ROI_HEADS", {})
    model["ROI_HEADS"].update({"NUM_CLASSES": num_classes, "BATCH_SIZE_PER_IMAGE": m.roi_batch_size,
                               "SCORE_THRESH_TEST": m.score_thresh})
    return {
        "MODEL": model,
        "INPUT": {"FORMAT": "RGB", "MIN_SIZE_TRAIN": list(m.min_size_train),
                  "MIN_SIZE_TEST": m.min_size_test, "MAX_SIZE_TRAIN": m.max_size,
                  "MAX_SIZE_TEST": m.max_size},
        "DATASETS": {"TRAIN": [], "TEST": []},
        "SOLVER": {"IMS_PER_BATCH": t.batch_size, "BASE_LR": t.lr, "MOMENTUM": t.momentum,
                   "WEIGHT_DECAY": t.weight_decay, "WEIGHT_DECAY_NORM": t.weight_decay_norm,
                   "STEPS": list(t.steps), "GAMMA": t.gamma, "MAX_ITER": t.max_iter,
                   "WARMUP_ITERS": t.warmup_iters, "WARMUP_FACTOR": t.warmup_factor,
                   "CHECKPOINT_PERIOD": t.checkpoint_every},
        "TEST": {"DETECTIONS_PER_IMAGE": m.detections_per_image,
                 "PRECISE_BN": {"ENABLED": cfg.eval.precise_bn_iters > 0,
                                "NUM_ITER": cfg.eval.precise_bn_iters or 200}},
        "SEED": t.seed,
        "VERSION": 2,
    }
