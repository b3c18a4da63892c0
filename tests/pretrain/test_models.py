"""Every registered encoder and head: shapes, taps, no NaN; registry behaviour."""

from __future__ import annotations

import pytest
import torch

from pretrain.encoders import ENCODERS, build_encoder
from pretrain.errors import UserError
from pretrain.heads import HEADS, HeadShape, build_head
from pretrain.model import SimCLRModel
from pretrain.registry import Registry


@pytest.mark.parametrize("name", ENCODERS.names())
@pytest.mark.parametrize("cifar_stem", [False, True])
def test_registered_encoders(name: str, cifar_stem: bool) -> None:
    torch.manual_seed(0)
    enc = build_encoder(name, cifar_stem=cifar_stem).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h = enc(x)
    assert h.shape == (2, enc.num_features)
    assert torch.isfinite(h).all()


def test_cifar_stem_changes_resnet_stem_only() -> None:
    plain = build_encoder("resnet18")
    cifar = build_encoder("resnet18", cifar_stem=True)
    assert plain.conv1.kernel_size == (7, 7) and plain.conv1.stride == (2, 2)
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)
    assert set(plain.state_dict()) == set(cifar.state_dict())
    assert not any(k.startswith("fc.") for k in plain.state_dict())


def test_timm_encoder() -> None:
    enc = build_encoder("timm:resnet10t")
    h = enc(torch.randn(2, 3, 32, 32))
    assert h.shape == (2, enc.num_features) == (2, 512)


def test_unknown_encoder_lists_valid_names() -> None:
    with pytest.raises(UserError, match="resnet18"):
        build_encoder("resnet19")
    with pytest.raises(UserError, match="timm"):
        build_encoder("timm:not_a_model_xyz")


@pytest.mark.parametrize(
    "name,kwargs,taps,out",
    [
        ("none", {}, ["z"], 32),
        ("linear", {"out_dim": 8}, ["z"], 8),
        ("linear", {"out_dim": 8, "bn": True}, ["z"], 8),
        ("mlp", {"num_layers": 2, "hidden_dim": 16, "out_dim": 8}, ["head.0", "z"], 8),
        ("mlp", {"num_layers": 3, "hidden_dim": 16, "out_dim": 8}, ["head.0", "head.1", "z"], 8),
        ("mlp", {"num_layers": 2, "hidden_dim": 0, "out_dim": 8, "bn": False}, ["head.0", "z"], 8),
    ],
)
def test_heads_shapes_and_taps(name: str, kwargs: dict, taps: list[str], out: int) -> None:
    torch.manual_seed(0)
    head = build_head(name, in_dim=32, shape=HeadShape(**kwargs))
    h = torch.randn(5, 32)
    z = head(h)
    got = head.forward_taps(h)
    assert head.tap_names() == taps == list(got)
    assert z.shape == (5, out)
    torch.testing.assert_close(got["z"], z)
    for name_, t in got.items():
        assert torch.isfinite(t).all(), name_
    if name == "none":
        assert z is h


def test_mlp_layout_matches_official_code() -> None:
    head = build_head("mlp", in_dim=32, shape=HeadShape(hidden_dim=16, out_dim=8, num_layers=3))
    kinds = [[type(m).__name__ for m in layer] for layer in head.layers]
    assert kinds == [
        ["Linear", "BatchNorm1d", "ReLU"],
        ["Linear", "BatchNorm1d", "ReLU"],
        ["Linear", "BatchNorm1d"],
    ]
    z = head.train()(torch.randn(64, 32))
    assert (z < 0).any()  # no ReLU on the output
    taps = head.forward_taps(torch.randn(64, 32))
    assert (taps["head.0"] >= 0).all()  # hidden taps are post-ReLU


def test_model_taps_in_one_pass() -> None:
    enc = build_encoder("small_cnn")
    model = SimCLRModel(enc, build_head("mlp", enc.num_features, HeadShape(hidden_dim=16, out_dim=8)))
    assert model.tap_names() == ["h", "head.0", "z"]
    model.eval()
    x = torch.randn(3, 3, 16, 16)
    taps = model.forward_taps(x)
    assert taps["h"].shape == (3, 256) and taps["z"].shape == (3, 8)
    torch.testing.assert_close(taps["z"], model(x))


def test_heads_registry_and_duplicates() -> None:
    assert HEADS.names() == ["linear", "mlp", "none"]
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    with pytest.raises(KeyError):
        reg.add("a", 2)
    with pytest.raises(UserError, match="valid: a"):
        reg.get("b")


def test_output_bn_has_no_shift_and_hidden_bns_do() -> None:
    """Official tf2/model.py: the output layer's BN is center=False (scale only)."""
    head = build_head("mlp", 32, HeadShape(hidden_dim=16, out_dim=8, num_layers=3))
    hidden, last = head.layers[0][1], head.layers[-1][1]
    assert hidden.bias.requires_grad and not last.bias.requires_grad and last.weight.requires_grad
    linear = build_head("linear", 32, HeadShape(out_dim=8))
    assert not linear.layers[0][1].bias.requires_grad
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    head.train()(torch.randn(16, 32)).pow(2).sum().backward()
    opt.step()
    assert torch.count_nonzero(last.bias) == 0 and torch.count_nonzero(hidden.bias) > 0
    assert "layers.2.1.bias" in head.state_dict()  # kept: heads with a shift still load


@pytest.mark.parametrize("arch, last_bn", [("resnet18", "bn2"), ("resnet50", "bn3")])
def test_zero_init_residual_starts_every_block_as_the_identity(arch: str, last_bn: str) -> None:
    zero, plain = build_encoder(arch, zero_init_residual=True), build_encoder(arch)
    blocks = [b for layer in (zero.layer1, zero.layer2, zero.layer3, zero.layer4) for b in layer]
    assert all(torch.count_nonzero(getattr(b, last_bn).weight) == 0 for b in blocks)
    assert torch.count_nonzero(plain.layer1[0].get_submodule(last_bn).weight) > 0


def test_global_bn_conversion_keeps_the_frozen_shift() -> None:
    from pretrain.sync_bn import GlobalBatchNorm, convert_sync_batchnorm

    head = convert_sync_batchnorm(build_head("mlp", 32, HeadShape(out_dim=8)), torch.device("cpu"))
    last = head.layers[-1][1]
    assert isinstance(last, GlobalBatchNorm) and not last.bias.requires_grad
    assert head.layers[0][1].bias.requires_grad
