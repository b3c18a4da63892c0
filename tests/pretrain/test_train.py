"""End to end on CPU: runs, checkpoints, exact resume after a kill, and the CLI's errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pretrain.step as step_module
from pretrain.checkpoint import load_checkpoint
from pretrain.cli import main as pretrain_main
from pretrain.config import PretrainConfig
from pretrain.config_io import load_config
from pretrain.errors import NonFiniteLossError, UserError
from pretrain.jsonl import read_jsonl
from pretrain.run import load_run
from pretrain.train import train

FAST = [
    "data.limit=128",
    "model.hidden_dim=32",
    "model.out_dim=16",
    "train.batch_size=32",
    "optim.name=sgd",
    "optim.lr=0.1",
    "optim.warmup_epochs=1",
    "train.progress=false",
]


def _cfg(tmp_path: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [*FAST, f"train.run_dir={tmp_path}", *extra])


def test_two_epoch_run_writes_a_loadable_run_directory(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "train.epochs=2", "train.name=r")
    summary = train(cfg)
    run = tmp_path / "r"
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt",
        "config.yaml",
        "metrics.jsonl",
        "setup.json",
        "summary.json",
    ]
    lines = read_jsonl(run / "metrics.jsonl")
    assert [line.get("epoch") for line in lines[:2]] == [1, 2]
    assert {"loss", "lr", "pairs_per_s", "epoch_time_s"} <= set(lines[0])
    assert lines[-1]["event"] == "summary" and summary["steps"] == 8
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert set(ckpt) == {"format", "encoder", "head", "optimizer", "epoch", "step", "total_steps",
                         "train_time_s"}
    assert (ckpt["epoch"], ckpt["step"], ckpt["total_steps"]) == (2, 8, 8)
    assert 0 < ckpt["train_time_s"] == summary["train_time_s"]
    loaded = load_run(run)
    assert loaded.config == cfg and loaded.epoch == 2
    assert loaded.model.tap_names() == ["h", "head.0", "z"] and not loaded.model.training
    assert loaded.setup.head == "mlp-2" and loaded.setup.taps == ("h", "head.0", "z")
    with pytest.raises(UserError, match="already holds a checkpoint"):
        train(cfg)  # never overwrite a finished run silently


def test_both_augmentation_pipelines_record_the_same_metrics(tmp_path: Path) -> None:
    keys = {}
    for where in ("cpu", "gpu"):  # "gpu" = batched device augmentation; runs on CPU tensors too
        cfg = _cfg(tmp_path, "train.epochs=1", f"train.name={where}", f"augment.device={where}")
        summary = train(cfg)
        assert summary["augment_device"] == where
        lines = read_jsonl(tmp_path / where / "metrics.jsonl")
        assert lines[0]["loss"] > 0 and lines[0]["epoch"] == 1
        keys[where] = set(lines[0])
    assert keys["cpu"] == keys["gpu"]


def test_quality_is_logged_during_pretraining(tmp_path: Path) -> None:
    cfg = _cfg(
        tmp_path, "train.epochs=2", "train.name=q", "train.quality_every=2", "train.quality_samples=64"
    )
    train(cfg)
    lines = read_jsonl(tmp_path / "q" / "metrics.jsonl")
    assert "quality/rankme/h" not in lines[0]  # epoch 1: not a quality epoch
    for tap in ("h", "head.0", "z"):
        assert 1.0 <= lines[1][f"quality/rankme/{tap}"] <= 64.0  # at most min(N, D)
        assert 0.0 <= lines[1][f"quality/alignment/{tap}"] <= 4.0  # squared distance of unit vectors
        assert lines[1][f"quality/uniformity/{tap}"] <= 0.0


def test_kill_and_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    args = [*FAST, f"train.run_dir={tmp_path}", "train.epochs=3"]
    uninterrupted = train(load_config(PretrainConfig, None, [*args, "train.name=full"]))
    assert uninterrupted["epochs"] == 3

    # A real kill: SIGKILL the CLI as soon as its first epoch's metrics line exists.
    cmd = [sys.executable, "-m", "pretrain.cli", *args, "train.name=killed"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.is_file() and metrics.read_text().count('"epoch"') >= 1:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    epoch_at_kill = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["epoch"]
    assert 1 <= epoch_at_kill < 3, "the run finished before it could be killed"

    assert pretrain_main([*args, "train.name=killed", "--resume"]) == 0
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert resumed["epoch"] == 3 and resumed["step"] == full["step"]
    for part in ("encoder", "head"):
        for key, value in full[part].items():
            torch.testing.assert_close(resumed[part][key], value, rtol=0, atol=0, msg=key)
    events = [line.get("event") for line in read_jsonl(metrics)]
    assert "resume" in events


def test_non_finite_loss_stops_and_names_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"n": 0}
    real = step_module.nt_xent

    def flaky(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
        calls["n"] += 1
        loss = real(z1, z2, t)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(step_module, "nt_xent", flaky)
    with pytest.raises(NonFiniteLossError, match="epoch 1: non-finite NT-Xent loss at step 3"):
        train(_cfg(tmp_path, "train.epochs=1", "train.name=nan"))


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = pretrain_main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _cli(capsys, "train.epoch=1")
    assert code == 2 and err.startswith("error: unknown config key train.epoch; valid keys")
    assert "\n" not in err

    code, err = _cli(capsys, *FAST, f"train.run_dir={tmp_path}", "data.name=imagefolder:/no/such/dir")
    assert code == 2 and err == "error: dataset path not found: /no/such/dir"

    bad = tmp_path / "bad"
    bad.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(bad / f"{i}.png")
    (bad / "3.png").write_bytes(b"\x89PNG truncated")
    code, err = _cli(
        capsys,
        *FAST,
        f"train.run_dir={tmp_path}",
        f"data.name=imagefolder:{bad}",
        "train.batch_size=8",
        "data.num_workers=1",
        "data.limit=0",
    )
    assert code == 2 and "\n" not in err
    assert err.startswith("error: cannot read image") and str(bad / "3.png") in err

    code, err = _cli(capsys, f"train.run_dir={tmp_path}", "train.name=none", "--resume")
    assert code == 2 and "no checkpoint to resume from" in err
