"""Issue 13, "nothing lost, nothing stale": a resume that would change what was trained, a resume of
a finished run and a typo in a registered name leave every file as it was; a resumed run's
train time counts every part."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Mapping
from pathlib import Path

import pytest

import pretrain.train as train_module
from pretrain.checkpoint import load_checkpoint, save_checkpoint
from pretrain.cli import main as pretrain_main
from pretrain.config import PretrainConfig
from pretrain.jsonl import read_jsonl
from pretrain.run import CHECKPOINT_FILE, METRICS_FILE, SUMMARY_FILE, load_run

FAST = ["data.limit=64", "train.batch_size=32", "model.hidden_dim=32", "model.out_dim=16",
        "optim.name=sgd", "optim.lr=0.1", "optim.warmup_epochs=1", "augment.image_size=12",
        "train.progress=false", "train.device=cpu", "train.epochs=2", "train.name=r"]


def _args(root: Path, *extra: str) -> list[str]:
    return [*FAST, f"train.run_dir={root}", *extra]


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = pretrain_main(list(argv))
    out, err = capsys.readouterr()
    return code, out.strip(), err.strip()


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file under ``folder`` (a new or removed file shows too)."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _interrupt_after_epoch_one(path: Path, record: Mapping[str, object]) -> None:
    train_module_append(path, record)
    if record.get("epoch") == 1:
        raise KeyboardInterrupt


train_module_append = train_module.append_jsonl


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-epoch run stopped (Ctrl-C) after its first epoch's checkpoint and metrics line."""
    root = tmp_path_factory.mktemp("interrupted")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "append_jsonl", _interrupt_after_epoch_one)
        assert pretrain_main(_args(root)) == 130
    assert load_checkpoint(root / "r" / CHECKPOINT_FILE)["epoch"] == 1
    return root


@pytest.fixture(scope="module")
def finished(interrupted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("finished")
    shutil.copytree(interrupted / "r", root / "r")
    assert pretrain_main(_args(root, "--resume")) == 0
    assert (root / "r" / SUMMARY_FILE).is_file()
    return root


def _copy(src: Path, tmp_path: Path) -> Path:
    shutil.copytree(src / "r", tmp_path / "r")
    return tmp_path


@pytest.mark.parametrize(
    ("overrides", "keys"),
    [
        (["model.head=linear"], ["model.head"]),
        (["model.head=none"], ["model.head"]),
        (["model.out_dim=8", "model.bn=false"], ["model.out_dim", "model.bn"]),
        (["optim.name=adamw"], ["optim.name"]),
        (["optim.lr=0.5", "train.seed=1"], ["optim.lr", "train.seed"]),
        (["augment.color_strength=0.9"], ["augment.color_strength"]),
        (["train.batch_size=16"], ["train.batch_size"]),
    ],
)
def test_a_resume_that_changes_what_was_trained_is_refused_and_touches_nothing(
    interrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    overrides: list[str], keys: list[str],
) -> None:
    root = _copy(interrupted, tmp_path)
    before = _snapshot(root)
    code, _, err = _cli(capsys, *_args(root, *overrides), "--resume")
    assert code == 2 and "\n" not in err and err.startswith("error: ")
    for key in keys:
        assert key in err
    assert _snapshot(root) == before
    load_run(root / "r")  # the run is as readable as before


def test_a_resume_with_harmless_overrides_continues_and_counts_all_train_time(
    interrupted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy(interrupted, tmp_path)
    harmless = ["train.log_every=1", "train.progress=true", "train.checkpoint_every=3",
                "data.num_workers=0", "train.quality_every=0", "train.precision=fp32"]
    code, out, _ = _cli(capsys, *_args(root, *harmless), "--resume")
    assert code == 0 and out.splitlines()[-1].startswith("done: 2 epochs")
    run = root / "r"
    epochs = [r for r in read_jsonl(run / METRICS_FILE) if "epoch" in r]
    assert [r["epoch"] for r in epochs] == [1, 2]
    ckpt = load_checkpoint(run / CHECKPOINT_FILE)
    assert ckpt["epoch"] == 2
    both_parts = sum(r["epoch_time_s"] for r in epochs)
    stored = read_jsonl(run / METRICS_FILE)[-1]
    assert stored["event"] == "summary" and stored["train_time_s"] >= both_parts
    assert ckpt["train_time_s"] >= both_parts
    assert load_run(run).config.train.log_every == 1


def test_a_checkpoint_without_train_time_still_resumes_and_counts_earlier_epochs(
    interrupted: Path, tmp_path: Path
) -> None:
    root = _copy(interrupted, tmp_path)
    ckpt_path = root / "r" / CHECKPOINT_FILE
    state = load_checkpoint(ckpt_path)
    state.pop("train_time_s", None)  # as written before the key existed
    save_checkpoint(state, ckpt_path)
    assert pretrain_main(_args(root, "--resume")) == 0
    records = read_jsonl(root / "r" / METRICS_FILE)
    both_parts = sum(r["epoch_time_s"] for r in records if "epoch" in r)
    assert records[-1]["train_time_s"] >= both_parts


def test_resuming_a_finished_run_is_a_no_op(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy(finished, tmp_path)
    before = _snapshot(root)
    code, out, err = _cli(capsys, *_args(root), "--resume")
    assert code == 0 and err == ""
    assert "already complete" in out and "2 of 2 epochs" in out and "nan" not in out.lower()
    assert _snapshot(root) == before


def test_a_resume_with_more_epochs_is_refused_naming_train_epochs(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy(finished, tmp_path)
    before = _snapshot(root)
    code, _, err = _cli(capsys, *_args(root, "train.epochs=3"), "--resume")
    assert code == 2 and "\n" not in err
    assert "train.epochs" in err and "schedule" in err
    assert _snapshot(root) == before


@pytest.mark.parametrize(
    ("override", "key", "valid"),
    [
        ("model.head=mlpp", "model.head", ["linear", "mlp", "none"]),
        ("model.encoder=resnet19", "model.encoder", ["resnet18", "small_cnn", "timm:<name>"]),
        ("optim.name=larss", "optim.name", ["adamw", "lars", "sgd"]),
        ("data.name=digitz", "data.name", ["cifar10", "digits", "imagefolder:<path>"]),
    ],
)
def test_a_typo_in_a_registered_name_fails_before_anything_is_read_or_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    override: str, key: str, valid: list[str],
) -> None:
    def no_dataset(*args: object, **kwargs: object) -> None:
        raise AssertionError("the dataset was read before the config's names were checked")

    monkeypatch.setattr(train_module, "load_dataset", no_dataset)
    code, _, err = _cli(capsys, *_args(tmp_path, override))
    assert code == 2 and "\n" not in err
    assert err.startswith(f"error: {key}: unknown ")
    for name in valid:
        assert name in err
    assert not (tmp_path / "r").exists() and list(tmp_path.iterdir()) == []


def test_every_key_a_resume_may_change_exists() -> None:
    from pretrain.run.resume import RESUME_MAY_CHANGE

    keys = {f"{section.name}.{f.name}"
            for section in dataclasses.fields(PretrainConfig)
            for f in dataclasses.fields(section.type if isinstance(section.type, type)
                                        else getattr(PretrainConfig(), section.name))}
    assert RESUME_MAY_CHANGE <= keys
    assert not {"model.head", "optim.lr", "train.epochs", "train.seed"} & RESUME_MAY_CHANGE
