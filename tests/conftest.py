"""Shared fixtures: a tiny run directory built without training, and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pretrain.checkpoint import save_checkpoint
from pretrain.config import PretrainConfig
from pretrain.config_io import to_dict, write_yaml
from pretrain.data import shared_data_dirs
from pretrain.model import build_model
from pretrain.runs import CHECKPOINT_FILE, CONFIG_FILE


def make_run_dir(
    path: Path,
    encoder: str = "small_cnn",
    head: str = "mlp",
    num_layers: int = 2,
    seed: int = 0,
    dataset: str = "digits",
) -> Path:
    """A run directory in the exact format ``simclr-pretrain`` writes, with random weights."""
    cfg = PretrainConfig()
    cfg.data.name = dataset
    cfg.model.encoder = encoder
    cfg.model.head = head
    cfg.model.num_layers = num_layers
    cfg.model.hidden_dim = 64
    cfg.model.out_dim = 32
    cfg.train.seed = seed
    cfg.train.epochs = 1
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    path.mkdir(parents=True, exist_ok=True)
    write_yaml(to_dict(cfg), path / CONFIG_FILE)
    save_checkpoint(
        {"encoder": model.encoder.state_dict(), "head": model.head.state_dict(), "epoch": 1},
        path / CHECKPOINT_FILE,
    )
    return path


@pytest.fixture
def tiny_run_dir(tmp_path: Path) -> Path:
    return make_run_dir(tmp_path / "run")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder holding ../shared/data archives; skips where it is absent (not in CI)."""
    for d in shared_data_dirs():
        if (d / "README.md").is_file():
            return d
    pytest.skip("../shared/data not found")


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data_cache")
