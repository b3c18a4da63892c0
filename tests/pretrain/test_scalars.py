"""TensorBoard and W&B scalars: the numbers of metrics.jsonl, read back with each tool's own
reader (tensorboard's EventAccumulator; W&B's record protobufs from its offline run file), a
resumed run without duplicated epochs, and one-line errors without the packages."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest
from interrupts import monitor_dies_at_call

from pretrain.cli import main as pretrain_main
from pretrain.config import PretrainConfig
from pretrain.config_io import load_config
from pretrain.jsonl import read_jsonl
from pretrain.monitor import monitor_key
from pretrain.scalars import TENSORBOARD_DIR, WANDB_ID_FILE, ScalarWriters, scalar_tags
from pretrain.train import train

FAST = [
    "data.limit=160", "model.hidden_dim=32", "model.out_dim=16", "train.batch_size=32",
    "optim.name=sgd", "optim.lr=0.1", "optim.warmup_epochs=1", "train.progress=false",
    "train.epochs=3", "train.log_every=2",
]
WATCHED = ["train.monitor_every=1", "train.monitor_k=20", "train.monitor_taps=h,z",
           "train.quality_every=1", "train.quality_samples=64"]


def _cfg(tmp_path: Path, *extra: str) -> PretrainConfig:
    return load_config(PretrainConfig, None, [*FAST, f"train.run_dir={tmp_path}", *extra])


def _epochs(run: Path) -> list[dict]:
    return [line for line in read_jsonl(run / "metrics.jsonl") if "epoch" in line
            and "event" not in line]


def _board(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of ``run/tensorboard`` as tensorboard itself reads it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / TENSORBOARD_DIR))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalar_tags_keep_slashed_keys_and_drop_what_is_not_a_number() -> None:
    record = {"loss": 1.5, "monitor/knn_top1/h": 80.0, "monitor/split": "holdout", "flag": True,
              "epoch": 3, "nan": float("nan")}
    tags = scalar_tags(record, "train")
    assert tags.keys() == {"train/loss", "monitor/knn_top1/h", "train/epoch", "train/nan"}
    assert tags["train/epoch"] == 3.0
    ScalarWriters().write(record, 1)  # nothing asked for: nothing happens


def test_tensorboard_holds_every_metrics_line_at_its_step(tmp_path: Path) -> None:
    train(_cfg(tmp_path, "train.name=tb", "train.tensorboard=true", *WATCHED))
    run = tmp_path / "tb"
    board, epochs = _board(run), _epochs(run)
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    steps = [e["step"] for e in epochs]
    wanted = ["train/loss", "train/lr", "train/pairs_per_s", "train/epoch", monitor_key("h"),
              monitor_key("z"), "quality/rankme/h", "quality/alignment/h", "quality/uniformity/h",
              "quality/rankme/z"]
    for tag in wanted:
        key = tag.removeprefix("train/")
        assert board[tag] == [(s, pytest.approx(e[key], rel=1e-6, abs=1e-6))
                              for s, e in zip(steps, epochs, strict=True)], tag
    # the per-step curve: every log_every=2 steps, at the loss read-backs
    assert [s for s, _ in board["step/loss"]] == list(range(2, steps[-1] + 1, 2))
    assert [s for s, _ in board["step/lr"]] == [s for s, _ in board["step/loss"]]


def test_a_resumed_run_has_each_epoch_once_in_tensorboard(tmp_path: Path) -> None:
    """Killed in epoch 4 with the last checkpoint at epoch 2: epoch 3 is trained (and written)
    twice; TensorBoard must show it once, with the resumed run's values."""
    args = ["train.name=cut", "train.tensorboard=true", "train.epochs=4",
            "train.checkpoint_every=2", "train.monitor_every=1", "train.monitor_k=20"]
    with monitor_dies_at_call(4), pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, *args))
    assert [v for _, v in _board(tmp_path / "cut")["train/epoch"]] == [1, 2, 3]
    train(_cfg(tmp_path, *args), resume=True)
    board, epochs = _board(tmp_path / "cut"), _epochs(tmp_path / "cut")
    assert [v for _, v in board["train/epoch"]] == [1, 2, 3, 4]
    resumed = {e["epoch"]: e for e in epochs}  # the later line of epoch 3 wins
    assert [v for _, v in board["train/loss"]] == [pytest.approx(resumed[i]["loss"], rel=1e-6)
                                                   for i in (1, 2, 3, 4)]
    step_axis = [s for s, _ in board["step/loss"]]
    assert step_axis == sorted(set(step_axis))  # no step twice


def _wandb_records(path: Path) -> list:
    """The records of a W&B run file: a 7-byte header (':W&B', magic, version), then LevelDB
    log blocks of 32 KiB holding (crc32, length, type) chunks of ``Record`` protobufs
    (wandb/sdk/internal/datastore.py in wandb < 0.20; the format is unchanged since)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_holds_the_scalars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="wandb is an optional extra: pip install -e '.[wandb]'")
    import json

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    train(_cfg(tmp_path, "train.name=wb", "train.epochs=2", "train.wandb_project=simclr-test",
               "train.monitor_every=1", "train.monitor_k=20"))
    run = tmp_path / "wb"
    run_id = (run / WANDB_ID_FILE).read_text().strip()
    (run_file,) = (run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    records = _wandb_records(run_file)
    (info,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (info.run_id, info.project, info.display_name) == (run_id, "simclr-test", "wb")
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    per_epoch = [h for h in history if "train/epoch" in h]
    epochs = _epochs(run)
    assert [h["_step"] for h in per_epoch] == [e["step"] for e in epochs]
    for h, e in zip(per_epoch, epochs, strict=True):
        assert h["train/loss"] == pytest.approx(e["loss"])
        assert h[monitor_key("h")] == pytest.approx(e[monitor_key("h")])
        assert h["train/pairs_per_s"] == pytest.approx(e["pairs_per_s"])


@pytest.mark.parametrize(("override", "package"), [("train.tensorboard=true", "tensorboard"),
                                                   ("train.wandb_project=p", "wandb")])
def test_a_missing_package_is_one_line_and_writes_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
        override: str, package: str) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "wandb", None)
    code = pretrain_main([*FAST, f"train.run_dir={tmp_path}", "train.name=x", override])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"needs the {package} package" in err and f"simclr-transfer[{package}]" in err
    assert not (tmp_path / "x").exists()
