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
    sizes = [1 + i % 3 for i in range(n)]  # batches of 1, 2, 3 images: weights must differ
    return [([torch.rand(3, 8, 8, generator=g) * (i + 1) for _ in range(k)], [{}] * k)
            for i, k in enumerate(sizes)]


def test_running_stats_become_the_statistics_of_all_batches_pooled() -> None:
    torch.manual_seed(0)
    model = TinyDetector()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k}
    batches = _batches(5)
    with torch.no_grad():
        feats = [model.conv(torch.stack(images)) for images, _ in batches]
    pooled = torch.cat([f.transpose(0, 1).reshape(4, -1) for f in feats], dim=1)  # (C, all)
    expected_mean = pooled.mean(1)
    expected_var = pooled.var(1, unbiased=False)
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


class _TupleInput(nn.Module):
    """fvcore feeds each loader item as one argument: unpack it into (images, targets)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, batch: tuple[list[torch.Tensor], list[dict]]) -> dict[str, torch.Tensor]:
        return self.inner(*batch)


def test_equals_fvcores_update_bn_stats_on_the_same_batches() -> None:
    """fvcore.nn.precise_bn.update_bn_stats is what detectron2's PreciseBN hook calls."""
    from fvcore.nn.precise_bn import update_bn_stats as fvcore_update

    torch.manual_seed(0)
    ours, theirs = TinyDetector(), TinyDetector()
    theirs.load_state_dict(ours.state_dict())
    batches = _batches(6)
    update_bn_stats(ours, iter(batches), num_iters=6)
    wrapped = _TupleInput(theirs).train()
    fvcore_update(wrapped, batches, num_iters=6)
    torch.testing.assert_close(ours.bn.running_mean, theirs.bn.running_mean)
    torch.testing.assert_close(ours.bn.running_var, theirs.bn.running_var)


def test_a_negative_iteration_count_is_a_config_error() -> None:
    import pytest

    from pretrain.config_io import load_config
    from pretrain.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.precise_bn_iters must be >= 0, got -1"):
        load_config(DetectionConfig, None, ["eval.precise_bn_iters=-1"])


class BranchDetector(TinyDetector):
    """A second BN that only batches with targets reach, as a head some batches skip."""

    def __init__(self) -> None:
        super().__init__()
        self.branch_bn = nn.BatchNorm2d(4)

    def forward(self, images: list[torch.Tensor], targets: list[dict]) -> dict[str, torch.Tensor]:
        x = self.bn(self.conv(torch.stack(images)))
        if any(targets):
            x = self.branch_bn(x)
        return {"loss": x.mean()}


def test_a_bn_is_estimated_only_from_the_batches_that_reach_it() -> None:
    torch.manual_seed(0)
    model = BranchDetector()
    batches = _batches(4)
    batches[0] = (batches[0][0], [{"boxes": torch.zeros(0, 4)}] * len(batches[0][0]))
    with torch.no_grad():
        first = model.bn(model.conv(torch.stack(batches[0][0])))
    assert update_bn_stats(model, iter(batches), num_iters=4) == 4
    torch.testing.assert_close(model.branch_bn.running_mean, first.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(model.branch_bn.running_var, first.var(dim=(0, 2, 3),
                                                                         unbiased=False))
