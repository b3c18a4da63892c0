"""The online k-NN monitor: the probe's numbers, never on test unless asked, no effect on the
weights, a series that survives a resume, and one-line refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from interrupts import monitor_dies_at_call

import pretrain.train as train_module
from pretrain.augment import eval_transform, resolve_recipe
from pretrain.checkpoint import load_checkpoint
from pretrain.config import PretrainConfig
from pretrain.config_io import load_config
from pretrain.data import ImageDataset, load_dataset
from pretrain.errors import ConfigError
from pretrain.features import extract_features
from pretrain.jsonl import read_jsonl
from pretrain.model import build_model
from pretrain.monitor import (
    HOLDOUT_FRACTION,
    SPLIT_KEY,
    build_monitor,
    monitor_key,
    unusable_reason,
)
from pretrain.run import load_run
from pretrain.train import train
from probes.knn import knn_classify

FAST = [
    "data.limit=160", "model.hidden_dim=32", "model.out_dim=16", "train.batch_size=32",
    "optim.name=sgd", "optim.lr=0.1", "optim.warmup_epochs=1", "train.progress=false",
    "train.epochs=3",
]


def _cfg(tmp_path: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [*FAST, f"train.run_dir={tmp_path}", *extra])


def _epochs(run: Path) -> list[dict]:
    lines = read_jsonl(run / "metrics.jsonl")
    return [line for line in lines if "epoch" in line and "event" not in line]


def test_monitor_holdout_is_a_stratified_part_of_train_and_scores_like_the_knn_probe() -> None:
    train_set = load_dataset("digits", "train", limit=300)
    recipe = resolve_recipe(PretrainConfig().augment, train_set.info)
    torch.manual_seed(0)
    model = build_model(PretrainConfig().model)
    monitor = build_monitor(train_set, recipe, "holdout", ("h", "z"), 20, 0.1, seed=3,
                            load_test=lambda: pytest.fail("the hold-out must not read test"))
    assert len(monitor.val) == pytest.approx(HOLDOUT_FRACTION * len(train_set), abs=10)
    assert len(monitor.bank) + len(monitor.val) == len(train_set)
    assert set(monitor.val.targets) == set(train_set.targets)  # every class is watched
    val_rows = {monitor.val.array[i].tobytes() for i in range(len(monitor.val))}
    assert not val_rows & {monitor.bank.array[i].tobytes() for i in range(len(monitor.bank))}
    again = build_monitor(train_set, recipe, "holdout", ("h",), 20, 0.1, seed=3, load_test=list)
    assert again.val.targets == monitor.val.targets  # seeded

    got = monitor(model, torch.device("cpu"))
    assert got[SPLIT_KEY] == "holdout" and got["monitor/time_s"] > 0
    transform = eval_transform(recipe)
    bank = extract_features(model, monitor.bank, transform, ["h", "z"])
    val = extract_features(model, monitor.val, transform, ["h", "z"])
    for tap in ("h", "z"):
        probe = knn_classify(bank[tap], torch.tensor(monitor.bank.targets), val[tap],
                             torch.tensor(monitor.val.targets), ks=(20,), temperature=0.1,
                             num_classes=10)
        assert got[monitor_key(tap)] == pytest.approx(probe["knn/top1@k20"], abs=1e-9)


def test_monitored_run_logs_the_series_and_ends_with_the_unmonitored_weights(tmp_path: Path) -> None:
    train(_cfg(tmp_path, "train.name=plain"))
    train(_cfg(tmp_path, "train.name=watched", "train.monitor_every=2", "train.monitor_k=50",
               "train.monitor_taps=h,z"))
    epochs = _epochs(tmp_path / "watched")
    assert [monitor_key("h") in e for e in epochs] == [False, True, True]  # every 2nd, and last
    for e in epochs[1:]:
        assert 0.0 <= e[monitor_key("h")] <= 100.0 and 0.0 <= e[monitor_key("z")] <= 100.0
        assert e[SPLIT_KEY] == "holdout"
    assert epochs[-1][monitor_key("h")] > 100.0 / 10 + 20  # far above chance on digits
    plain = load_checkpoint(tmp_path / "plain" / "checkpoint.pt")
    watched = load_checkpoint(tmp_path / "watched" / "checkpoint.pt")
    for key, value in plain["encoder"].items():  # the monitor consumed no RNG, touched no BN
        torch.testing.assert_close(watched["encoder"][key], value, rtol=0, atol=0, msg=key)

    run = load_run(tmp_path / "watched")  # the last record measured the final weights
    ds = load_dataset("digits", "train", limit=160)
    monitor = build_monitor(ds, resolve_recipe(run.config.augment, ds.info), "holdout", ("h",),
                            50, 0.1, seed=0, load_test=list)
    assert monitor(run.model, torch.device("cpu"))[monitor_key("h")] == pytest.approx(
        epochs[-1][monitor_key("h")], abs=1e-9)


def test_a_resumed_run_continues_the_monitor_series(tmp_path: Path) -> None:
    watched = ["train.monitor_every=1", "train.monitor_k=50"]
    train(_cfg(tmp_path, "train.name=full", *watched))
    with monitor_dies_at_call(2), pytest.raises(KeyboardInterrupt):  # after epoch 1's checkpoint
        train(_cfg(tmp_path, "train.name=cut", *watched))
    train(_cfg(tmp_path, "train.name=cut", *watched), resume=True)
    full, cut = _epochs(tmp_path / "full"), _epochs(tmp_path / "cut")
    assert [e["epoch"] for e in cut] == [1, 2, 3]
    assert [e[monitor_key("h")] for e in cut] == [e[monitor_key("h")] for e in full]


def test_monitor_split_test_is_used_only_when_asked_and_recorded(tmp_path: Path) -> None:
    train(_cfg(tmp_path, "train.name=t", "train.epochs=1", "train.monitor_every=1",
               "train.monitor_split=test"))
    (record,) = _epochs(tmp_path / "t")
    assert record[SPLIT_KEY] == "test" and 0 <= record[monitor_key("h")] <= 100


def test_unlabelled_data_is_skipped_with_one_line() -> None:
    info = load_dataset("digits", "train", limit=8).info
    unlabelled = ImageDataset("unlabelled", [-1] * 4, [], info,
                              array=np.zeros((4, 8, 8, 3), np.uint8))
    assert unusable_reason(unlabelled) == "unlabelled has no labels"
    assert unusable_reason(load_dataset("digits", "train", limit=8)) is None


def test_unlabelled_training_data_runs_without_the_monitor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train_module, "unusable_reason", lambda ds: f"{ds.name} has no labels")
    train(_cfg(tmp_path, "train.name=u", "train.epochs=1", "train.monitor_every=1"))
    assert "k-NN monitor skipped: digits has no labels" in capsys.readouterr().out
    assert monitor_key("h") not in _epochs(tmp_path / "u")[0]


@pytest.mark.parametrize(("override", "message"), [
    ("train.monitor_taps=h,q", "unknown tap(s) q; this model has h, head.0, z"),
    ("train.monitor_split=val", "train.monitor_split must be one of holdout, test"),
    ("train.monitor_k=0", "train.monitor_k must be >= 1"),
    ("train.monitor_every=-1", "train.monitor_every must be >= 0 (0 = off), got -1"),
])
def test_bad_monitor_settings_are_refused_before_training(tmp_path: Path, override: str,
                                                          message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(_cfg(tmp_path, "train.name=bad", "train.monitor_every=1", override))
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()
