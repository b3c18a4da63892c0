"""External checkpoints: torchvision, lightly and solo-learn key layouts map onto our model.

Each fake checkpoint is made from a real model's state dict with the other library's key names,
so a correct mapping must reproduce the reference model's outputs exactly.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from pretrain.checkpoint import save_checkpoint
from pretrain.encoders import build_encoder
from pretrain.errors import CheckpointError
from probes.checkpoints import load_any

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def resnet():
    """A torchvision ResNet-18 with the CIFAR stem and random weights (and non-trivial BN)."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=7)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def features_of(net):
    """h of a torchvision ResNet: everything but fc."""
    with torch.no_grad():
        trunk = nn.Sequential(*list(net.children())[:-1])
        return trunk(X).flatten(1)


def test_torchvision_state_dict(resnet, tmp_path):
    path = tmp_path / "tv.pth"
    torch.save(resnet.state_dict(), path)
    loaded = load_any(path, encoder="resnet18", cifar_stem=True)
    assert loaded.source == "torchvision"
    assert loaded.taps == ["h"]
    assert loaded.unused_keys == ["fc.bias", "fc.weight"]
    with torch.no_grad():
        assert torch.allclose(loaded.model.forward_taps(X)["h"], features_of(resnet), atol=1e-5)


def test_lightly_checkpoint_with_sequential_backbone_and_bn_head(resnet, tmp_path):
    backbone = nn.Sequential(*list(resnet.children())[:-1])  # lightly's examples: backbone.0 = conv1
    torch.manual_seed(1)
    head = nn.Sequential(  # lightly SimCLRProjectionHead(512, 64, 32): Linear, BN, ReLU, Linear, BN
        nn.Linear(512, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
        nn.Linear(64, 32, bias=False), nn.BatchNorm1d(32),
    ).eval()
    head[1].running_mean.uniform_(-1, 1)
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"projection_head.layers.{k}": v for k, v in head.state_dict().items()})
    path = tmp_path / "lightly.ckpt"
    save_checkpoint({"state_dict": state, "epoch": 7}, path)
    loaded = load_any(path, encoder="resnet18", cifar_stem=True)
    assert loaded.source == "lightly"
    assert loaded.taps == ["h", "head.0", "z"]
    assert loaded.unused_keys == []
    h_ref = features_of(resnet)
    with torch.no_grad():
        out = loaded.model.forward_taps(X)
        assert torch.allclose(out["h"], h_ref, atol=1e-5)
        assert torch.allclose(out["head.0"], head[:3](h_ref), atol=1e-5)
        assert torch.allclose(out["z"], head(h_ref), atol=1e-5)


def test_solo_learn_checkpoint_reports_its_classifier_as_unused(resnet, tmp_path):
    torch.manual_seed(2)
    projector = nn.Sequential(nn.Linear(512, 48), nn.ReLU(), nn.Linear(48, 16))  # solo SimCLR
    state = {f"backbone.{k}": v for k, v in resnet.state_dict().items() if not k.startswith("fc")}
    state.update({f"projector.{k}": v for k, v in projector.state_dict().items()})
    state["classifier.weight"] = torch.randn(10, 512)  # solo-learn's online linear classifier
    state["classifier.bias"] = torch.zeros(10)
    path = tmp_path / "solo.ckpt"
    save_checkpoint({"state_dict": state, "epoch": 3, "global_step": 100}, path)
    loaded = load_any(path, encoder="resnet18", cifar_stem=True)
    assert loaded.source == "solo-learn"
    assert loaded.unused_keys == ["classifier.bias", "classifier.weight"]
    assert loaded.taps == ["h", "head.0", "z"]
    with torch.no_grad():
        out = loaded.model.forward_taps(X)
        assert torch.allclose(out["z"], projector(features_of(resnet)), atol=1e-5)


def test_unrepresentable_head_is_reported_not_dropped_silently(resnet, tmp_path):
    state = {f"backbone.{k}": v for k, v in resnet.state_dict().items() if not k.startswith("fc")}
    # BN on the hidden layer only: our head has BN on all layers or none
    state.update({"projector.0.weight": torch.randn(32, 512), "projector.1.weight": torch.ones(32),
                  "projector.1.bias": torch.zeros(32), "projector.1.running_mean": torch.zeros(32),
                  "projector.1.running_var": torch.ones(32), "projector.3.weight": torch.randn(8, 32),
                  "projector.3.bias": torch.zeros(8)})
    path = tmp_path / "odd.ckpt"
    save_checkpoint({"state_dict": state}, path)
    loaded = load_any(path, encoder="resnet18", cifar_stem=True)
    assert loaded.taps == ["h"]
    assert len(loaded.unused_keys) == 7 and all(k.startswith("projector.") for k in loaded.unused_keys)


def test_wrong_architecture_is_an_error_naming_the_fix(resnet, tmp_path):
    path = tmp_path / "tv.pth"
    torch.save(resnet.state_dict(), path)
    with pytest.raises(CheckpointError, match="cifar-stem"):
        load_any(path, encoder="resnet18", cifar_stem=False)  # 3x3 conv1 vs 7x7
    with pytest.raises(CheckpointError, match="165 missing"):
        load_any(path, encoder="resnet50", cifar_stem=True)


def test_resnet_architecture_and_stem_are_read_from_the_keys(resnet, tmp_path):
    path = tmp_path / "tv.pth"
    torch.save(resnet.state_dict(), path)
    inferred, named = load_any(path), load_any(path, encoder="resnet18", cifar_stem=True)
    assert (inferred.encoder, inferred.cifar_stem) == ("resnet18", True)
    assert inferred.model_key == named.model_key
    lightly = {f"backbone.{k}": v for k, v in
               nn.Sequential(*list(resnet.children())[:-1]).state_dict().items()}
    save_checkpoint({"state_dict": lightly}, tmp_path / "lightly.ckpt")
    assert load_any(tmp_path / "lightly.ckpt").encoder == "resnet18"  # integer-indexed keys
    with torch.no_grad():
        assert torch.allclose(inferred.model.forward_taps(X)["h"], features_of(resnet), atol=1e-5)


def test_safetensors_files_load_like_torch_files(resnet, tmp_path):
    from safetensors.torch import save_file

    weights = {k: v.contiguous() for k, v in resnet.state_dict().items()}
    save_file(weights, str(tmp_path / "w.safetensors"))
    loaded = load_any(tmp_path / "w.safetensors")
    assert loaded.encoder == "resnet18" and loaded.unused_keys == ["fc.bias", "fc.weight"]
    with torch.no_grad():
        assert torch.allclose(loaded.model.forward_taps(X)["h"], features_of(resnet), atol=1e-5)


def test_non_resnet_file_needs_an_encoder_and_missing_paths_are_named(tmp_path):
    path = tmp_path / "cnn.pth"
    torch.save(build_encoder("small_cnn").state_dict(), path)
    with pytest.raises(CheckpointError, match="--encoder"):
        load_any(path)
    assert load_any(path, encoder="small_cnn").taps == ["h"]
    with pytest.raises(CheckpointError, match="not found"):
        load_any(tmp_path / "nope")


def test_missing_weights_are_refused_or_listed_when_allowed(resnet, tmp_path):
    state = resnet.state_dict()
    del state["layer4.1.bn2.running_var"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="1 missing"):
        load_any(tmp_path / "partial.pth")
    assert load_any(tmp_path / "partial.pth", allow_missing=True).missing_keys == [
        "layer4.1.bn2.running_var"]


def test_run_directory_and_its_checkpoint_file(digits_run):
    a = load_any(digits_run)
    b = load_any(digits_run / "checkpoint.pt")
    assert a.source == b.source == "run"
    assert a.taps == ["h", "head.0", "z"]
    assert a.checkpoint_hash == b.checkpoint_hash and len(a.checkpoint_hash) == 64
    assert a.checkpoint_hash == hashlib.sha256((digits_run / "checkpoint.pt").read_bytes()).hexdigest()
    assert a.run is not None and a.run.config.model.encoder == "small_cnn"
    assert a.run.setup.head == "mlp-2" and a.epoch == 1
    assert not a.model.training


def test_a_run_checkpoint_is_read_from_disk_once(digits_run, monkeypatch):
    """Weights, hash and epoch come from one read of checkpoint.pt (it used to be three)."""
    opened = []
    real_open = io.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file).name == "checkpoint.pt":
            opened.append(file)
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)
    loaded = load_any(digits_run)
    assert len(opened) == 1 and loaded.epoch == 1 and len(loaded.checkpoint_hash) == 64


def test_our_linear_head_is_rebuilt_as_a_linear_head(run_factory, tmp_path):
    run = run_factory(tmp_path / "run", head="linear")
    copy = tmp_path / "copy.pt"
    copy.write_bytes((run / "checkpoint.pt").read_bytes())
    loaded = load_any(copy, encoder="small_cnn")
    assert loaded.model.head.identity.label == "linear" and loaded.taps == ["h", "z"]


def test_our_checkpoint_without_its_config(digits_run, tmp_path):
    copy = tmp_path / "elsewhere.pt"
    copy.write_bytes((digits_run / "checkpoint.pt").read_bytes())
    ours, theirs = load_any(digits_run), load_any(copy, encoder="small_cnn")
    assert theirs.taps == ours.taps and theirs.unused_keys == []
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours.model(x), theirs.model(x), atol=1e-6)


def test_pickled_hyper_parameters_are_refused_with_a_way_out(tmp_path):
    import argparse

    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)},
                "hyper_parameters": argparse.Namespace(lr=0.1)}, path)  # not weights-only safe
    with pytest.raises(CheckpointError, match=r"weights_only=True.*c\['state_dict'\]"):
        load_any(path, encoder="small_cnn")
