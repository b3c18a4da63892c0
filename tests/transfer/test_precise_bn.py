"""Precise BN (Wu and Johnson 2021; detectron2 TEST.PRECISE_BN) on hand-checkable statistics."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from transfer.detection.config import DetectionConfig
from transfer.detection.detectron2_config import detectron2_config
from transfer.detection.precise_bn import trained_batchnorms, update_bn_stats


class TinyDetector(nn.Module):
    """Takes (images, targets) like torchvision's detectors; BN after a conv, a frozen BN too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4, momentum=0.1)
        self.frozen = FrozenBatchNorm2d(4)

    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        x = self.frozen(self.bn(self.conv(torch.stack(images))))
        return {"loss": x.mean()}


def _batches(n: int) -> list[tuple[list[torch.Tensor], list[dict]]]:
    g = torch.Generator().manual_seed(0)
    return [([torch.rand(3, 8, 8, generator=g) * (i + 1) for _ in range(2)], [{}, {}])
            for i in range(n)]


def test_running_stats_become_the_average_of_the_batch_statistics() -> None:
    torch.manual_seed(0)
    model = TinyDetector()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    batches = _batches(5)
    with torch.no_grad():
        feats = [model.conv(torch.stack(images)) for images, _ in batches]
    expected_mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    expected_var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    assert update_bn_stats(model, iter(batches), num_iters=4 + 1) == 5
    torch.testing.assert_close(model.bn.running_mean, expected_mean)
    torch.testing.assert_close(model.bn.running_var, expected_var)
    assert model.bn.momentum == 0.1  # restored
    for k, v in weights.items():
        if "num_batches" not in k:
            assert torch.equal(model.state_dict()[k], v), k  # weights and frozen BN untouched
    assert trained_batchnorms(model) == [model.bn]


def test_off_or_without_trained_bn_it_changes_nothing() -> None:
    model = TinyDetector()
    before = model.bn.running_mean.clone()
    assert update_bn_stats(model, iter(_batches(3)), num_iters=0) == 0
    model = TinyDetector()
    model.bn = nn.Identity()  # type: ignore[assignment]
    assert update_bn_stats(model, iter(_batches(3)), num_iters=3) == 0
    assert torch.equal(before, TinyDetector().bn.running_mean)


def test_the_voc_preset_and_detectron2_config_enable_it() -> None:
    from pretrain.config_io import load_config
    from transfer.detection.config import resolve_preset

    cfg = load_config(DetectionConfig, resolve_preset("voc0712_r50_c4_24k"))
    assert cfg.eval.precise_bn_iters == 200
    d2 = detectron2_config(cfg, "resnet50", "c4", "w.pkl", 20, (0.5,) * 3, (0.2,) * 3)
    assert d2["TEST"]["PRECISE_BN"] == {"ENABLED": True, "NUM_ITER": 200}
    assert load_config(DetectionConfig, resolve_preset("bccd_r18_fpn")).eval.precise_bn_iters == 0
