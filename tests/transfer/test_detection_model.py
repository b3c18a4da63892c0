"""Detector construction: FPN and C4 for ResNet-18/34/50, norms, frozen stages, weight sources."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import make_run_dir
from detection_helpers import single_thread  # noqa: F401
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from pretrain.checkpoint import save_checkpoint
from pretrain.config import PretrainConfig
from pretrain.config_io import to_dict, write_yaml
from pretrain.encoders import build_encoder
from pretrain.errors import CheckpointError, ConfigError
from pretrain.model import build_model
from probes.key_layouts import infer_resnet
from transfer.detection.backbone import prepare_resnet, stage_channels
from transfer.detection.config import ModelConfig
from transfer.detection.model import make_detector
from transfer.detection.weights import load_backbone_source, load_into

# Tiny images and few ROIs: the C4 head runs res5 once per ROI, the cost that dominates on CPU.
TINY = dict(min_size_train=[96], min_size_test=96, max_size=128, roi_batch_size=8,
            proposals_test=10)


def _batch() -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 128, generator=g), torch.rand(3, 80, 112, generator=g)]
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]]),
         "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # no objects
    ]
    return images, targets


@pytest.mark.parametrize("encoder, arch, c_body, c_head", [
    ("resnet18", "c4", 256, 512),
    ("resnet50", "c4", 1024, 2048),
    ("resnet34", "fpn", 256, 1024),
])
def test_variants_build_and_give_finite_losses(encoder: str, arch: str, c_body: int,
                                              c_head: int) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, **TINY)
    model, report, _ = make_detector(cfg, load_backbone_source("random", encoder), num_classes=3)
    assert model.backbone.out_channels == c_body
    head = model.roi_heads.box_head
    assert getattr(head, "out_channels", None) == c_head or head.fc7.out_features == c_head
    model.train()
    losses = model(*_batch())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.roi_heads.box_predictor.cls_score.weight.grad is not None
    if encoder == "resnet50":
        return  # inference below is the same code path; spare the CPU time
    model.eval()
    with torch.no_grad():
        out = model(_batch()[0])
    assert out[0]["boxes"].shape[1] == 4 and (out[0]["labels"] <= 3).all()


def test_stage_widths_for_basic_and_bottleneck_blocks() -> None:
    assert stage_channels(build_encoder("resnet18")) == [64, 128, 256, 512]
    assert stage_channels(build_encoder("resnet34")) == [64, 128, 256, 512]
    assert stage_channels(build_encoder("resnet50")) == [256, 512, 1024, 2048]


def _norms(module: nn.Module) -> set[type]:
    kinds = (nn.BatchNorm2d, nn.GroupNorm, FrozenBatchNorm2d, nn.SyncBatchNorm)
    return {type(m) for m in module.modules() if isinstance(m, kinds)}


@pytest.mark.parametrize("norm, trainable_norm", [("frozen_bn", FrozenBatchNorm2d),
                                                  ("bn", nn.BatchNorm2d), ("gn", nn.GroupNorm)])
def test_norms_and_frozen_stages(norm: str, trainable_norm: type) -> None:
    net = build_encoder("resnet18")
    frozen = prepare_resnet(net, norm, trainable_stages=3)
    assert frozen == ["stem", "layer1"]
    assert _norms(net.layer1) == {FrozenBatchNorm2d} and isinstance(net.bn1, FrozenBatchNorm2d)
    assert _norms(net.layer2) == {trainable_norm} == _norms(net.layer4)
    assert not any(p.requires_grad for p in [*net.conv1.parameters(), *net.layer1.parameters()])
    assert all(p.requires_grad for p in net.layer2.parameters())


def test_frozen_bn_keeps_the_pretrained_statistics() -> None:
    net = build_encoder("resnet18")
    with torch.no_grad():
        net.layer3[0].bn1.running_mean.uniform_()
    expected = net.layer3[0].bn1.running_mean.clone()
    prepare_resnet(net, "frozen_bn", trainable_stages=5)
    assert torch.equal(net.layer3[0].bn1.running_mean, expected)
    assert all(p.requires_grad for p in net.conv1.parameters())


def test_run_directory_weights_load_and_the_head_is_dropped(tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", encoder="resnet18")
    source = load_backbone_source(str(run))
    assert source.kind == "run" and source.encoder == "resnet18"
    assert source.setup["head"] == "mlp-2" and source.setup["epochs"] == 1
    net = build_encoder("resnet18")
    report = load_into(net, source)
    assert report.missing == [] and len(report.loaded) == len(net.state_dict())
    assert all(k.startswith("head.") for k in report.ignored) and report.ignored
    for key, value in torch.load(run / "checkpoint.pt", weights_only=True)["encoder"].items():
        assert torch.equal(net.state_dict()[key], value)
    assert "loaded 120 tensors; missing: none; ignored: head." in report.summary(source)


def test_torchvision_file_with_classifier_and_missing_keys(tmp_path: Path) -> None:
    import torchvision

    state = torchvision.models.resnet34().state_dict()
    del state["layer4.1.bn2.running_var"]
    path = tmp_path / "r34.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    source = load_backbone_source(str(path))
    assert source.encoder == "resnet34" and source.dropped == ["fc.bias", "fc.weight"]
    report = load_into(build_encoder("resnet34"), source)
    assert report.missing == ["layer4.1.bn2.running_var"]
    assert report.ignored == ["fc.bias", "fc.weight"]
    with pytest.raises(ConfigError, match="holds resnet34"):
        load_backbone_source(str(path), encoder="resnet50")


def test_unusable_sources_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="detection needs one of"):
        load_backbone_source(str(make_run_dir(tmp_path / "cnn", encoder="small_cnn")))
    with pytest.raises(ConfigError, match="random init needs model.encoder"):
        load_backbone_source("random")
    with pytest.raises(CheckpointError, match="not found"):
        load_backbone_source(str(tmp_path / "nope.pth"))
    assert infer_resnet(list(build_encoder("resnet50").state_dict())) == "resnet50"


def test_cifar_stem_run_keeps_its_3x3_kernel_at_stride_2(tmp_path: Path) -> None:
    # written as the first release wrote runs (no setup.json, no checkpoint format key)
    cfg = PretrainConfig()
    cfg.model.encoder, cfg.model.cifar_stem = "resnet18", True
    run = tmp_path / "cifar_run"
    run.mkdir()
    model = build_model(cfg.model)
    write_yaml(to_dict(cfg), run / "config.yaml")
    save_checkpoint({"encoder": model.encoder.state_dict(), "head": model.head.state_dict(),
                     "epoch": 1}, run / "checkpoint.pt")
    detector, report, notes = make_detector(ModelConfig(**TINY), load_backbone_source(str(run)), 2)
    body = detector.backbone.body
    assert body.conv1.kernel_size == (3, 3) and body.conv1.stride == (2, 2)
    assert isinstance(body.maxpool, nn.MaxPool2d)
    assert torch.equal(body.conv1.weight, model.encoder.conv1.weight)
    assert any("CIFAR stem" in n for n in notes) and report.missing == []
    assert (run / "setup.json").is_file()  # rebuilt from the config on first read


def test_a_small_image_folder_run_is_fine_tuned_with_its_cifar_statistics(tmp_path: Path) -> None:
    """The run's own normalisation (its RunSetup), not one guessed from the dataset's name."""
    from PIL import Image

    from pretrain.augment import CIFAR

    folder = tmp_path / "tiles"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (32, 32), (40 * i, 90, 200)).save(folder / c / f"{i}.png")
    run = make_run_dir(tmp_path / "run", encoder="resnet18", dataset=f"imagefolder:{folder}")
    source = load_backbone_source(str(run))
    assert (source.pixel_mean, source.pixel_std) == (CIFAR.mean, CIFAR.std)
    detector, _, _ = make_detector(ModelConfig(**TINY), source, num_classes=2)
    assert tuple(detector.transform.image_mean) == CIFAR.mean
    assert tuple(detector.transform.image_std) == CIFAR.std


@pytest.mark.parametrize("fpn_norm, kind", [("none", None), ("bn", nn.BatchNorm2d),
                                             ("gn", nn.GroupNorm)])
def test_fpn_norm_normalises_every_fpn_conv(fpn_norm: str, kind: type | None) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(arch="fpn", fpn_norm=fpn_norm, **TINY)
    model, _, _ = make_detector(cfg, load_backbone_source("random", "resnet18"), num_classes=3)
    fpn = model.backbone.fpn
    norms = [m for m in fpn.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    convs = [m for m in fpn.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8  # 4 lateral 1x1 + 4 output 3x3
    if kind is None:
        assert norms == [] and all(c.bias is not None for c in convs)
    else:
        assert len(norms) == 8 and all(isinstance(n, kind) for n in norms)
        assert all(c.bias is None for c in convs)  # a norm follows: no bias, as detectron2
    model.train()
    losses = model(*_batch())
    assert all(torch.isfinite(v) for v in losses.values())


def test_coco_r50_fpn_preset_normalises_backbone_and_fpn() -> None:
    from pretrain.config_io import load_config
    from transfer.detection.config import DetectionConfig, resolve_preset
    from transfer.detection.detectron2_config import detectron2_config

    cfg = load_config(DetectionConfig, resolve_preset("coco_r50_fpn_1x"))
    m, t = cfg.model, cfg.train
    assert (m.arch, m.encoder, m.norm, m.fpn_norm, m.trainable_stages) == (
        "fpn", "resnet50", "syncbn", "syncbn", 5)
    assert (t.max_iter, t.batch_size, t.lr, t.steps, t.warmup_iters) == (90000, 16, 0.02,
                                                                         [60000, 80000], 1000)
    d2 = detectron2_config(cfg, "resnet50", "fpn", "w.pkl", 80, (0.5,) * 3, (0.2,) * 3)
    assert d2["MODEL"]["FPN"]["NORM"] == "SyncBN" and d2["MODEL"]["RESNETS"]["NORM"] == "SyncBN"
    with pytest.raises(ConfigError, match="model.fpn_norm must be one of none, bn, syncbn, gn"):
        load_config(DetectionConfig, None, ["model.fpn_norm=ln"])
