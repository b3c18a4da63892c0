"""Faster R-CNN (Ren et al. 2015) on our ResNets: FPN (Lin et al. 2017) or C4 (res5 ROI head).

Both variants follow detectron2's Base-RCNN-FPN / Base-RCNN-C4 settings:

* FPN: anchors 32..512 (one size per level P2..P6), ratios 0.5/1/2; RPN keeps 2000/1000
  boxes per level before NMS (train/test) and 1000 per image after; 7x7 ROIAlign on P2..P5
  and a 2-fc (1024) box head.
* C4: RPN on res4 (stride 16) with all 15 anchors; 12000/6000 boxes before NMS, 2000/1000
  after; 14x14 ROIAlign on res4, res5 (stride 2 inside) on each ROI, mean-pooled to C5.

Input: a list of (3, H, W) float images in 0-1. Training returns the loss dict
(``loss_classifier``, ``loss_box_reg``, ``loss_objectness``, ``loss_rpn_box_reg``);
evaluation returns per image ``boxes`` (D, 4) in original pixels, ``scores`` (D,), ``labels``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from pretrain.encoders import build_encoder
from transfer.detection.backbone import (
    C4Body,
    Res5Head,
    fpn_body,
    prepare_resnet,
    restore_stem_stride,
    stage_channels,
)
from transfer.detection.config import ModelConfig
from transfer.detection.weights import BackboneSource, LoadReport, load_into

ANCHOR_SIZES = (32, 64, 128, 256, 512)  # pixels, detectron2 default
ASPECT_RATIOS = (0.5, 1.0, 2.0)


class ScaleTransform(GeneralizedRCNNTransform):
    """Resize with a random shorter side from ``min_size_train`` when training (detectron2's
    ResizeShortestEdge "choice", sampled per image from torch's RNG), ``min_size_test`` in
    evaluation; normalise with ``image_mean``/``image_std``; pad to a multiple of 32."""

    min_size: tuple[int, ...]  # set by GeneralizedRCNNTransform.__init__

    def __init__(self, min_size_train: Sequence[int], min_size_test: int, max_size: int,
                 image_mean: Sequence[float], image_std: Sequence[float]) -> None:
        super().__init__(tuple(min_size_train), max_size, list(image_mean), list(image_std))
        self.min_size_test = int(min_size_test)

    def resize(self, image: torch.Tensor, target: dict | None = None) -> tuple:
        if self.training:
            return super().resize(image, target)
        train_sizes, self.min_size = self.min_size, (self.min_size_test,)
        try:
            return super().resize(image, target)
        finally:
            self.min_size = train_sizes


def build_detector(
    resnet: nn.Module,
    arch: str,
    num_classes: int,
    *,
    min_size_train: Sequence[int] = (800,),
    min_size_test: int = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] = (0.485, 0.456, 0.406),
    image_std: Sequence[float] = (0.229, 0.224, 0.225),
    roi_batch_size: int = 512,
    proposals_test: int = 1000,
    score_thresh: float = 0.05,
    detections_per_image: int = 100,
    res5_extra_norm: nn.Module | None = None,
    fpn_norm: str = "none",
    sync_bn: bool = False,
) -> FasterRCNN:
    """Faster R-CNN around a prepared torchvision ResNet (see :mod:`.backbone`).

    Args:
        resnet: torchvision ResNet with loaded weights, frozen stages and converted norms.
        arch: ``"fpn"`` or ``"c4"``.
        num_classes: object classes K, without background (the predictor has K + 1 outputs).
        proposals_test: RPN proposals kept per image at test time (detectron2: 1000).
        res5_extra_norm: c4 only, a norm module over C5 channels appended after res5.
        fpn_norm: fpn only, the norm after each FPN conv (see :func:`.backbone.fpn_body`);
            ``sync_bn`` makes ``syncbn`` synchronised.
    """
    common = dict(
        box_batch_size_per_image=roi_batch_size,
        box_score_thresh=score_thresh,
        box_detections_per_img=detections_per_image,
    )
    if arch == "fpn":
        model = FasterRCNN(
            fpn_body(resnet, fpn_norm, sync_bn),
            num_classes=num_classes + 1,
            rpn_pre_nms_top_n_train=2000,
            rpn_pre_nms_top_n_test=1000,
            rpn_post_nms_top_n_train=1000,
            rpn_post_nms_top_n_test=proposals_test,
            **common,
        )
    elif arch == "c4":
        c5 = stage_channels(resnet)[3]
        body = C4Body(resnet)
        model = FasterRCNN(
            body,
            rpn_anchor_generator=AnchorGenerator((ANCHOR_SIZES,), (ASPECT_RATIOS,)),
            rpn_head=RPNHead(body.out_channels, len(ANCHOR_SIZES) * len(ASPECT_RATIOS)),
            rpn_pre_nms_top_n_train=12000,
            rpn_pre_nms_top_n_test=6000,
            rpn_post_nms_top_n_train=2000,
            rpn_post_nms_top_n_test=proposals_test,
            box_roi_pool=MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=0),
            box_head=Res5Head(resnet.get_submodule("layer4"), c5, res5_extra_norm),
            box_predictor=FastRCNNPredictor(c5, num_classes + 1),
            **common,
        )
    else:
        raise ValueError(f"unknown arch {arch!r}")
    model.transform = ScaleTransform(min_size_train, min_size_test, max_size, image_mean, image_std)
    return model


def make_detector(cfg: ModelConfig, source: BackboneSource, num_classes: int,
                  sync_bn: bool = False) -> tuple[FasterRCNN, LoadReport, list[str]]:
    """Build the encoder, load ``source`` into it, prepare it and wrap it in Faster R-CNN.

    Returns:
        (model, load report, notes): notes are warnings for the user (CIFAR stem, ...).
    """
    resnet = build_encoder(source.encoder, cifar_stem=source.cifar_stem)
    report = load_into(resnet, source)
    notes = []
    if restore_stem_stride(resnet):
        notes.append(
            "warning: the backbone was pretrained with a CIFAR stem (3x3 stride-1 conv1, no "
            "max-pool); detection keeps the pretrained 3x3 kernel but uses stride 2 and a "
            "max-pool, so res2..res5 have the usual strides 4..32"
        )
    frozen = prepare_resnet(resnet, cfg.norm, cfg.trainable_stages, sync=sync_bn)
    if cfg.norm == "syncbn" and not sync_bn:
        notes.append("note: model.norm=syncbn without CUDA + torch.distributed is plain BatchNorm")
    extra: nn.Module | None = None
    if cfg.arch == "c4" and cfg.res5_extra_norm:
        c5 = stage_channels(resnet)[3]
        extra = nn.GroupNorm(32, c5) if cfg.norm == "gn" else nn.BatchNorm2d(c5)
        if cfg.norm == "syncbn" and sync_bn:
            extra = nn.SyncBatchNorm(c5)
    mean, std = source.normalisation(cfg.pixel_mean, cfg.pixel_std)
    model = build_detector(
        resnet,
        cfg.arch,
        num_classes,
        min_size_train=cfg.min_size_train,
        min_size_test=cfg.min_size_test,
        max_size=cfg.max_size,
        image_mean=mean,
        image_std=std,
        roi_batch_size=cfg.roi_batch_size,
        proposals_test=cfg.proposals_test,
        score_thresh=cfg.score_thresh,
        detections_per_image=cfg.detections_per_image,
        res5_extra_norm=extra,
        fpn_norm=cfg.fpn_norm,
        sync_bn=sync_bn,
    )
    if frozen:
        notes.append(f"frozen stages: {', '.join(frozen)}")
    return model, report, notes
