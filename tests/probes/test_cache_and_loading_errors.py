"""Nothing stale, nothing lost: the feature cache follows the images, and a bad file or path is
one line naming it.

* Images edited in place (same names, same sizes) or an archive replaced under the same name
  must not be served from the feature cache.
* A checkpoint that ``torch.load(weights_only=True)`` refuses, or that is no torch file at all,
  is one ``error:`` line naming the file, from ``simclr-transfer knn|linear`` and from
  ``simclr-pretrain --resume``, with no warning and no advice to turn ``weights_only`` off.
* ``--dataset imagefolder:<missing>`` says the path does not exist; a checkpoint that does not
  fit its model names the missing and unexpected keys.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tarfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import sklearn
import torch
from PIL import Image

from pretrain.cli import main as pretrain_main
from pretrain.data import load_dataset
from pretrain.errors import CheckpointError
from pretrain.model import build_model
from pretrain.run import load_run_config
from transfer.cli import main as transfer_main

TOP1 = "h:knn/top1@k3"


def run_cli(main: Callable[[list[str]], int], args: list[object],
            capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str, list[str]]:
    """(exit code, stdout, stderr, warnings raised while it ran)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err, [f"{w.category.__name__}: {w.message}" for w in caught]


def write_two_classes(root: Path, swap_test: bool = False,
                      splits: tuple[str, ...] = ("train", "test")) -> None:
    """``root/{train,test}/{dark,bright}/<i>.bmp``: 16x16 images, 6 per class and split.

    BMP files of one size all have the same length, so ``swap_test`` (bright test images under
    ``dark/`` and the other way round) changes the content and keeps every name and size.
    """
    rng = np.random.default_rng(0)
    for split in splits:
        for name, level in (("dark", 30), ("bright", 220)):
            if split == "test" and swap_test:
                level = 250 - level
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(6):
                pixels = np.full((16, 16, 3), level, np.uint8) + rng.integers(0, 5, (16, 16, 3),
                                                                              dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.bmp")


def snapshot(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_size for p in sorted(root.rglob("*.bmp"))}


def knn_args(run: Path, dataset: str, cache: Path) -> list[object]:
    return ["knn", run, "--dataset", dataset, "--cache-dir", cache, "--k", "3", "--tap", "h",
            "--json"]


# -- 6: the feature cache follows the data ----------------------------------------------------
def test_images_edited_in_place_are_not_served_from_the_cache(run_factory, tmp_path, capsys):
    run = run_factory(tmp_path / "run")
    data, cache = tmp_path / "images", tmp_path / "cache"
    write_two_classes(data)
    args = knn_args(run, f"imagefolder:{data}", cache)
    rc, out, err, _ = run_cli(transfer_main, args, capsys)
    assert rc == 0, err
    assert json.loads(out)[TOP1] == 100.0
    before = snapshot(data)
    cached = {p.parent.name.split("-")[-2]: p.read_bytes() for p in cache.rglob("*.pt")}
    assert sorted(cached) == ["test", "train"]

    write_two_classes(data, swap_test=True, splits=("test",))  # same names and sizes
    for path in (data / "test").rglob("*.bmp"):  # a later edit: a later mtime, whatever the clock
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert snapshot(data) == before
    rc, out, err, _ = run_cli(transfer_main, args, capsys)
    assert rc == 0, err
    assert json.loads(out)[TOP1] == 0.0  # what the images now say, as without a cache
    rc, fresh, err, _ = run_cli(transfer_main, [*args, "--no-cache"], capsys)
    assert json.loads(fresh)[TOP1] == 0.0
    now = {p.parent.name.split("-")[-2]: p.read_bytes() for p in cache.rglob("*.pt")}
    assert sorted(now) == ["test", "train"]  # the stale file was replaced, not added to
    assert now["train"] == cached["train"] and now["test"] != cached["test"]  # train still valid


def test_an_archive_replaced_under_the_same_name_is_extracted_again(run_factory, tmp_path,
                                                                    capsys):
    run = run_factory(tmp_path / "run")
    archive, cache = tmp_path / "images.tar", tmp_path / "cache"
    for swap in (False, True):
        shutil.rmtree(tmp_path / "src", ignore_errors=True)
        write_two_classes(tmp_path / "src" / "images", swap_test=swap)
        with tarfile.open(archive, "w") as tar:
            tar.add(tmp_path / "src" / "images", arcname="images")
        if swap:
            st = archive.stat()
            os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        rc, out, err, _ = run_cli(transfer_main, knn_args(run, f"imagefolder:{archive}", cache),
                                  capsys)
        assert rc == 0, err
        assert json.loads(out)[TOP1] == (0.0 if swap else 100.0)


def test_digits_fingerprint_names_the_sklearn_release(monkeypatch):
    from pretrain.data import dataset_fingerprint

    ds = load_dataset("digits", "test")
    key = dataset_fingerprint(ds)
    assert dataset_fingerprint(load_dataset("digits", "test")) == key  # stable across loads
    monkeypatch.setattr(sklearn, "__version__", "0.0.0")
    assert dataset_fingerprint(load_dataset("digits", "test")) != key


# -- 11: a checkpoint torch refuses, or no torch file at all ------------------------------------
class Hyperparameters:  # a class a Lightning checkpoint might pickle
    lr = 0.1


def _bad_files(folder: Path, good: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "pickled-class": lambda p: torch.save({"state_dict": {"w": torch.zeros(2)},
                                               "hparams": Hyperparameters()}, p),
        "legacy-pickled-class": lambda p: torch.save({"hparams": Hyperparameters()}, p,
                                                     _use_new_zipfile_serialization=False),
        "plain-pickle": lambda p: p.write_bytes(pickle.dumps({"a": Hyperparameters()}, 4)),
        "random-bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(1000)),
        "text": lambda p: p.write_text("hello\nthis is not a checkpoint\n"),
        "empty": lambda p: p.write_bytes(b""),
        "truncated-zip": lambda p: p.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
    }
    out = {}
    for name, write in files.items():
        path = folder / f"{name}.pt"
        write(path)
        out[name] = path
    return out


BAD = ["pickled-class", "legacy-pickled-class", "plain-pickle", "random-bytes", "text", "empty",
       "truncated-zip"]


def assert_our_one_line(rc: int, err: str, caught: list[str], path: Path) -> None:
    assert rc == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err  # one line, no warning lines
    assert str(path) in err
    for torch_words in ("weights_only=False", "Weights only load failed", "Re-running", "\x1b",
                        "Traceback"):
        assert torch_words not in err
    assert caught == []


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("probe", ["knn", "linear"])
def test_a_bad_weights_file_is_one_line_naming_it(kind, probe, digits_run, tmp_path, capsys):
    path = _bad_files(tmp_path / "bad", digits_run / "checkpoint.pt")[kind]
    rc, _, err, caught = run_cli(transfer_main, [probe, path, "--dataset", "digits"], capsys)
    assert_our_one_line(rc, err, caught, path)


def test_bad_files_are_told_apart(digits_run, tmp_path, capsys):
    files = _bad_files(tmp_path / "bad", digits_run / "checkpoint.pt")
    said = {}
    for kind, path in files.items():
        _, _, err, _ = run_cli(transfer_main, ["knn", path, "--dataset", "digits"], capsys)
        said[kind] = err
    assert f"{__name__}.Hyperparameters" in said["pickled-class"]
    assert f"{__name__}.Hyperparameters" in said["legacy-pickled-class"]
    assert "is empty" in said["empty"]
    assert "truncated or damaged" in said["truncated-zip"]
    for kind in ("random-bytes", "text", "plain-pickle"):
        assert "not a PyTorch checkpoint" in said[kind], said[kind]


@pytest.mark.parametrize("kind", BAD)
def test_resume_from_a_bad_checkpoint_is_one_line_naming_it(kind, run_factory, tmp_path, capsys):
    run = run_factory(tmp_path / "run")
    ckpt = run / "checkpoint.pt"
    shutil.copy(_bad_files(tmp_path / "bad", ckpt)[kind], ckpt)
    rc, _, err, caught = run_cli(pretrain_main, ["--config", run / "config.yaml", "--resume"],
                                 capsys)
    assert_our_one_line(rc, err, caught, ckpt)


def test_a_bad_safetensors_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(b"\xff" * 64)
    rc, _, err, caught = run_cli(transfer_main, ["knn", path, "--dataset", "digits"], capsys)
    assert_our_one_line(rc, err, caught, path)


def test_the_feature_cache_reads_through_the_one_loader(digits_run, tmp_path, capsys, caplog):
    args = ["knn", digits_run, "--tap", "h", "--cache-dir", tmp_path, "--k", "3", "--json"]
    rc, first, err, _ = run_cli(transfer_main, args, capsys)
    assert rc == 0, err
    for path in tmp_path.rglob("h.pt"):
        path.write_bytes(pickle.dumps({"a": Hyperparameters()}, 4))
    with caplog.at_level("WARNING", logger="simclr_transfer.probes"):
        rc, second, err, caught = run_cli(transfer_main, args, capsys)
    assert rc == 0 and json.loads(second) == json.loads(first)
    assert caplog.text.count("corrupt feature cache") == 2 and caught == []


# -- 12: a missing dataset path, a state dict that does not fit ---------------------------------
def test_a_missing_imagefolder_path_says_so(digits_run, tmp_path, capsys):
    missing = tmp_path / "no_such_images"
    rc, _, err, _ = run_cli(transfer_main, ["knn", digits_run, "--dataset",
                                            f"imagefolder:{missing}"], capsys)
    assert rc == 2
    assert err == f"error: dataset path not found: {missing}\n"


def test_a_state_dict_mismatch_names_missing_and_unexpected_keys(run_factory, tmp_path):
    from pretrain.checkpoint import load_state_strict

    two = load_run_config(run_factory(tmp_path / "two", num_layers=2))
    three = load_run_config(run_factory(tmp_path / "three", num_layers=3))
    head2, head3 = build_model(two.model).head, build_model(three.model).head
    with pytest.raises(CheckpointError) as info:
        load_state_strict(head2, head3.state_dict(), "x.pt does not match its config (head)")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("x.pt does not match its config (head): ")
    assert "unexpected keys" in msg and "layers.2.0.weight" in msg
    wide = {k: torch.zeros(*v.shape[:-1], v.shape[-1] + 1) if v.dim() == 2 else v
            for k, v in head2.state_dict().items()}
    del wide["layers.0.1.running_mean"]
    wide["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        load_state_strict(head2, wide, "x")
    msg = str(info.value)
    assert "1 missing key (layers.0.1.running_mean)" in msg
    assert "1 unexpected key (extra.weight)" in msg
    assert "2 shape mismatches (layers.0.0.weight (64, 257) in the file vs (64, 256) in the model, "\
        "layers.1.0.weight (32, 65) in the file vs (32, 64) in the model)" in msg
    many = {f"k{i}": torch.zeros(1) for i in range(30)}
    with pytest.raises(CheckpointError) as info:
        load_state_strict(head2, many, "x")
    assert "30 unexpected keys (k0, k1, k10, k11, k12, ...)" in str(info.value)
    load_state_strict(head2, head2.state_dict(), "x")  # a fit loads


def test_a_run_whose_checkpoint_does_not_fit_names_the_keys(run_factory, tmp_path, capsys):
    run = run_factory(tmp_path / "run", num_layers=2)
    other = run_factory(tmp_path / "other", num_layers=3)
    shutil.copy(other / "checkpoint.pt", run / "checkpoint.pt")
    rc, _, err, _ = run_cli(transfer_main, ["knn", run, "--k", "3"], capsys)
    assert rc == 2 and err.count("\n") == 1
    assert "unexpected keys" in err and "layers.2.0.weight" in err
