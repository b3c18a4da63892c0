"""Strict config loading: unknown keys, types, overrides, presets shipped in configs/."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.config import PretrainConfig
from pretrain.config_io import load_config, parse_overrides, to_dict
from pretrain.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\nmodel:\n  head: linear\n")
    cfg = load_config(
        PretrainConfig, path, ["optim.lr=0.5", "model.out_dim=64", "optim.weight_decay=1e-6"]
    )
    assert cfg.train.epochs == 3 and cfg.model.head == "linear"
    assert cfg.optim.lr == 0.5 and isinstance(cfg.optim.lr, float)
    assert cfg.model.out_dim == 64 and cfg.optim.weight_decay == 1e-6
    assert to_dict(cfg)["model"]["head"] == "linear"


def test_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epoch: 3\n")
    with pytest.raises(
        ConfigError, match=r"unknown config key train\.epoch; valid keys in train: epochs"
    ):
        load_config(PretrainConfig, path)
    with pytest.raises(ConfigError, match="valid keys: data, model, augment, optim, train"):
        load_config(PretrainConfig, None, ["trian.epochs=3"])


def test_type_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="train.epochs: expected an integer"):
        load_config(PretrainConfig, None, ["train.epochs=ten"])
    with pytest.raises(ConfigError, match="model.bn: expected true or false"):
        load_config(PretrainConfig, None, ["model.bn=3"])
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        load_config(PretrainConfig, None, ["train.epochs=0"])
    with pytest.raises(ConfigError, match="not of the form"):
        parse_overrides(["train.epochs"])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PretrainConfig, "/nonexistent.yaml")


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pretrain_configs_load(path: Path) -> None:
    cfg = load_config(PretrainConfig, path)
    assert cfg.train.epochs >= 1


def test_imagenet_preset_matches_paper() -> None:
    cfg = load_config(PretrainConfig, CONFIGS / "imagenet_resnet50_mlp.yaml")
    assert (cfg.train.batch_size, cfg.optim.name, cfg.optim.lr) == (4096, "lars", 0.3)
    assert (cfg.optim.weight_decay, cfg.train.temperature, cfg.train.epochs) == (1e-6, 0.1, 100)
    assert (cfg.model.encoder, cfg.model.head, cfg.model.num_layers) == ("resnet50", "mlp", 2)
    assert (cfg.model.hidden_dim, cfg.model.out_dim) == (2048, 128)


def test_dotted_overrides_merge_but_whole_mappings_replace() -> None:
    from pretrain.config_io import merge

    base = {"model": {"head": "mlp", "bn": True}, "variants": {"a": [1], "b": [2]}}
    out = merge(base, parse_overrides(["model.head=linear", "variants={c: [3]}"]))
    assert out["model"] == {"head": "linear", "bn": True}
    assert out["variants"] == {"c": [3]}


def test_global_bn_is_on_whenever_there_are_several_ranks() -> None:
    from pretrain.train import global_bn

    assert load_config(PretrainConfig, None, []).train.sync_bn is None
    assert [global_bn(None, w) for w in (1, 2, 8)] == [False, True, True]
    off = load_config(PretrainConfig, None, ["train.sync_bn=false"]).train.sync_bn
    assert off is False and not global_bn(off, 8)
    configs = Path(__file__).parents[2] / "configs"
    imagenet = load_config(PretrainConfig, configs / "imagenet_resnet50_mlp.yaml")
    assert imagenet.train.sync_bn is True


@pytest.mark.parametrize("head", ["none", "linear", "mlp"])
def test_cifar_configs_hold_the_cited_official_recipe(head: str) -> None:
    """The values the configs cite: the official CIFAR-10 command (README, commit 0075cc0)."""
    path = Path(__file__).parents[2] / "configs" / f"cifar10_resnet18_{head}.yaml"
    cfg = load_config(PretrainConfig, path)
    optim, model = cfg.optim, cfg.model
    assert (cfg.train.batch_size, optim.name, optim.lr, optim.lr_scaling) == (512, "lars", 1.0, "linear")
    assert (optim.weight_decay, cfg.train.temperature) == (1e-6, 0.5)
    assert (model.encoder, model.cifar_stem, model.zero_init_residual) == ("resnet18", True, True)
    assert cfg.augment.preset == "cifar" and cfg.train.epochs == 500
