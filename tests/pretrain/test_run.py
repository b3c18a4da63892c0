"""The run contract: setup.json, the checkpoint schema, load_run and resume checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pretrain.checkpoint import load_checkpoint, save_checkpoint
from pretrain.config import PretrainConfig
from pretrain.config_io import load_config
from pretrain.encoders import ENCODERS, build_encoder
from pretrain.errors import CheckpointError, ConfigError
from pretrain.heads import HeadShape, build_head, describe_head
from pretrain.model import build_model
from pretrain.run import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    SETUP_FILE,
    load_run,
    read_checkpoint,
    read_setup,
    restore,
    run_name,
)
from pretrain.run.state import CHECKPOINT_FORMAT
from pretrain.train import train

FAST = ["data.limit=128", "train.epochs=2", "train.batch_size=32", "model.hidden_dim=32",
        "model.out_dim=16", "optim.name=adamw", "optim.lr=0.001", "optim.warmup_epochs=1",
        "train.progress=false", "train.device=cpu", "augment.image_size=12"]


def _cfg(tmp_path: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [*FAST, f"train.run_dir={tmp_path}", *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = _cfg(tmp_path_factory.mktemp("contract"), "train.name=r")
    train(cfg)
    return Path(cfg.train.run_dir) / "r"


def test_setup_json_holds_what_downstream_needs(run: Path) -> None:
    setup = read_setup(run / SETUP_FILE)
    assert (setup.head, setup.head_kind, setup.head_depth) == ("mlp-2", "mlp", 2)
    assert setup.taps == ("h", "head.0", "z")
    assert (setup.image_size, setup.mean, setup.std) == (12, (0.5,) * 3, (0.5,) * 3)
    assert (setup.pretrain_dataset, setup.epochs, setup.batch_size, setup.seed) == ("digits", 2, 32, 0)
    fields = setup.record_fields()
    assert fields["pretrain_seed"] == 0 and "seed" not in fields
    assert json.loads((run / SETUP_FILE).read_text()) == setup.to_dict()


def test_every_checkpoint_key_is_read_back(run: Path) -> None:
    state = load_checkpoint(run / CHECKPOINT_FILE)
    ckpt = read_checkpoint(state, run / CHECKPOINT_FILE)
    assert state["format"] == CHECKPOINT_FORMAT
    assert (ckpt.state.epoch, ckpt.state.step, ckpt.total_steps) == (2, 8, 8)
    assert ckpt.optimizer is not None and set(ckpt.encoder) and set(ckpt.head)
    with pytest.raises(CheckpointError, match="format 'other/9'"):
        read_checkpoint({**state, "format": "other/9"}, "x.pt")
    with pytest.raises(CheckpointError, match="not a simclr-pretrain checkpoint"):
        read_checkpoint({"state_dict": {}}, "x.pt")


def test_load_run_and_a_run_without_setup_json(run: Path, tmp_path: Path) -> None:
    loaded = load_run(run)
    assert loaded.epoch == 2 and not loaded.model.training
    assert loaded.setup == read_setup(run / SETUP_FILE)
    old = tmp_path / "old"  # a run of the first release: no setup.json
    old.mkdir()
    for name in (CONFIG_FILE, CHECKPOINT_FILE):
        (old / name).write_bytes((run / name).read_bytes())
    assert load_run(old).setup == loaded.setup  # rebuilt the way training builds it
    assert read_setup(old / SETUP_FILE) == loaded.setup  # and written for the next reader
    (old / SETUP_FILE).write_text('{"head": "mlp-2"}')
    with pytest.raises(CheckpointError, match=r"setup.json is not a run setup \(missing encoder"):
        load_run(old)


def test_a_resume_on_another_schedule_is_refused_and_changes_nothing(run: Path) -> None:
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    cfg = _cfg(run.parent, "train.name=r", "train.epochs=3")
    with pytest.raises(ConfigError, match=r"train.epochs \(2 -> 3\).*schedule"):
        train(cfg, resume=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # the checkpoint's own check, for a schedule that changed without a config key (the images)
    model = build_model(cfg.model)
    ckpt = read_checkpoint(load_checkpoint(run / CHECKPOINT_FILE), run / CHECKPOINT_FILE)
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(ConfigError, match="schedule of 8 steps but this config gives 12"):
        restore(model, optimizer, ckpt, 12, run / CHECKPOINT_FILE)


def test_run_names_use_the_head_label() -> None:
    cfg = load_config(PretrainConfig, None, ["model.head=mlp", "model.num_layers=3"])
    assert run_name(cfg) == "digits_small_cnn_mlp-3_s0"
    assert describe_head("linear", HeadShape()).depth == 1
    with pytest.raises(ConfigError, match="num_layers must be >= 1"):
        build_head("mlp", 8, HeadShape(num_layers=0))


def test_an_encoder_without_num_features_fails_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ENCODERS, "_entries", dict(ENCODERS._entries))
    ENCODERS.add("widthless", lambda **_: nn.Conv2d(3, 8, 3))
    with pytest.raises(ConfigError, match="'widthless' does not expose an integer num_features"):
        build_encoder("widthless")


def test_a_truncated_checkpoint_names_the_file(run: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CONFIG_FILE).write_bytes((run / CONFIG_FILE).read_bytes())
    (bad / CHECKPOINT_FILE).write_bytes((run / CHECKPOINT_FILE).read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=f"cannot load checkpoint {bad / CHECKPOINT_FILE}"):
        load_run(bad)
    save_checkpoint({"encoder": {"x": torch.zeros(1)}, "epoch": 1}, bad / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="does not match its config"):
        load_run(bad)
