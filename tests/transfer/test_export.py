"""Export: detectron2 key names written out by hand, numeric round trips, no silent drops."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml
from conftest import make_run_dir

from pretrain.data import DatasetInfo
from transfer.cli import main
from transfer.detection.detectron2_weights import from_detectron2, map_keys, to_detectron2

NORM = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]


def _conv(name: str) -> list[str]:
    """A detectron2 conv with its norm: ``<name>.weight`` and ``<name>.norm.<p>``."""
    return [f"{name}.weight"] + [f"{name}.norm.{p}" for p in NORM]


def expected_d2_keys(blocks: list[int], convs_per_block: int, shortcut_in_res2: bool) -> set[str]:
    """detectron2 ResNet names: stem.conv1, res{2..5}.{b}.conv{1..n}, res{s}.0.shortcut."""
    keys = set(_conv("stem.conv1"))
    for stage, n in zip(range(2, 6), blocks, strict=True):
        for b in range(n):
            for j in range(1, convs_per_block + 1):
                keys |= set(_conv(f"res{stage}.{b}.conv{j}"))
        if stage > 2 or shortcut_in_res2:
            keys |= set(_conv(f"res{stage}.0.shortcut"))
    return keys


def test_resnet18_names_match_detectron2() -> None:
    state = torchvision.models.resnet18().state_dict()
    mapping = map_keys(list(state))
    expected = expected_d2_keys([2, 2, 2, 2], convs_per_block=2, shortcut_in_res2=False)
    assert set(mapping.mapped.values()) == expected
    assert len(expected) == 120
    spot = {
        "conv1.weight": "stem.conv1.weight",
        "bn1.running_var": "stem.conv1.norm.running_var",
        "layer1.0.conv1.weight": "res2.0.conv1.weight",
        "layer1.1.bn2.bias": "res2.1.conv2.norm.bias",
        "layer2.0.downsample.0.weight": "res3.0.shortcut.weight",
        "layer2.0.downsample.1.running_mean": "res3.0.shortcut.norm.running_mean",
        "layer4.1.bn2.weight": "res5.1.conv2.norm.weight",
    }
    assert {k: mapping.mapped[k] for k in spot} == spot
    assert mapping.skipped == {"fc.weight": "classifier, not part of the backbone",
                               "fc.bias": "classifier, not part of the backbone"}
    assert mapping.unmapped == []


def test_resnet50_names_match_detectron2() -> None:
    state = torchvision.models.resnet50().state_dict()
    mapping = map_keys(list(state))
    expected = expected_d2_keys([3, 4, 6, 3], convs_per_block=3, shortcut_in_res2=True)
    assert set(mapping.mapped.values()) == expected
    assert mapping.mapped["layer1.0.downsample.1.weight"] == "res2.0.shortcut.norm.weight"
    assert mapping.mapped["layer3.5.bn3.num_batches_tracked"] == "res4.5.conv3.norm.num_batches_tracked"
    assert mapping.unmapped == [] and set(mapping.skipped) == {"fc.weight", "fc.bias"}


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_round_trip_back_to_torchvision_is_exact(arch: str) -> None:
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
                m.num_batches_tracked += 7
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    arrays, _ = to_detectron2(state)
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    back = from_detectron2(arrays)
    assert back.keys() == state.keys()
    for key, value in state.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key


def test_unknown_keys_are_reported_not_dropped() -> None:
    mapping = map_keys(["conv1.weight", "layer1.0.se.fc1.weight", "attnpool.proj"])
    assert mapping.unmapped == ["layer1.0.se.fc1.weight", "attnpool.proj"]


def test_export_detectron2_from_a_run(tmp_path: Path) -> None:
    # pretrained on photos: ImageNet normalisation, i.e. torchvision's, written in 0-255 units
    run = make_run_dir(tmp_path / "run", encoder="resnet18", dataset="imagefolder:/data/cells",
                       info=DatasetInfo(preset="imagenet", image_size=224))
    assert main(["export", "--format", "detectron2", "--config", "bccd_r18_fpn", str(run)]) == 0
    out = run / "export" / "detectron2"
    with open(out / "resnet18_d2.pkl", "rb") as f:
        blob = pickle.load(f)
    assert blob["matching_heuristics"] is True and "__author__" in blob
    encoder = torch.load(run / "checkpoint.pt", weights_only=True)["encoder"]
    assert len(blob["model"]) == len(encoder) == 120
    assert np.array_equal(blob["model"]["res3.0.shortcut.norm.running_var"],
                          encoder["layer2.0.downsample.1.running_var"].numpy())
    for arch in ("FPN", "C4"):
        cfg = yaml.safe_load((out / f"faster_rcnn_R_18_{arch}.yaml").read_text())
        resnets = cfg["MODEL"]["RESNETS"]
        assert resnets["DEPTH"] == 18 and resnets["RES2_OUT_CHANNELS"] == 64
        assert resnets["STRIDE_IN_1X1"] is False and cfg["INPUT"]["FORMAT"] == "RGB"
        assert cfg["MODEL"]["PIXEL_MEAN"] == [123.675, 116.28, 103.53]
        assert cfg["MODEL"]["PIXEL_STD"] == [58.395, 57.12, 57.375]
        assert cfg["MODEL"]["ROI_HEADS"]["NUM_CLASSES"] == 3
        assert cfg["MODEL"]["WEIGHTS"].endswith("resnet18_d2.pkl")
    c4 = yaml.safe_load((out / "faster_rcnn_R_18_C4.yaml").read_text())
    assert c4["MODEL"]["ROI_HEADS"]["NAME"] == "BasicRes5ROIHeads"  # stock res5 is Bottleneck


def test_export_torchvision_and_timm_load_back(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import load_file

    run = make_run_dir(tmp_path / "run", encoder="resnet50")
    encoder = torch.load(run / "checkpoint.pt", weights_only=True)["encoder"]
    assert main(["export", "--format", "torchvision", "--output", str(tmp_path / "tv"), str(run)]) == 0
    net = torchvision.models.resnet50()
    result = net.load_state_dict(torch.load(tmp_path / "tv" / "resnet50_torchvision.pth",
                                            weights_only=True), strict=False)
    assert result.missing_keys == ["fc.weight", "fc.bias"] and result.unexpected_keys == []
    assert main(["export", "--format", "timm", "--output", str(tmp_path / "timm"), str(run)]) == 0
    model = timm.create_model("resnet50", pretrained=False, num_classes=0)
    model.load_state_dict(load_file(str(tmp_path / "timm" / "resnet50_timm.safetensors")))
    assert torch.equal(model.state_dict()["layer3.2.conv2.weight"], encoder["layer3.2.conv2.weight"])


def test_export_refuses_unmapped_keys_and_cifar_stems(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    state = torchvision.models.resnet18().state_dict()
    state["layer1.0.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "odd.pth")
    assert main(["export", "--format", "detectron2", str(tmp_path / "odd.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "layer1.0.extra.weight" in err and "nothing was written" in err
    assert not (tmp_path / "export").exists()
    state = torchvision.models.resnet18().state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "cifar.pth")
    assert main(["export", "--format", "detectron2", str(tmp_path / "cifar.pth")]) == 2
    assert "CIFAR stem" in capsys.readouterr().err
