"""User mistakes through ``transfer.cli.main``: one line on stderr, exit status 2."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from detection_helpers import FAST, bccd_root, make_voc, single_thread, voc_overrides  # noqa: F401

from transfer.cli import main

IDS = {"train": ["BloodImage_00001"], "test": ["BloodImage_00003"]}


@pytest.fixture
def voc(tmp_path: Path, shared_data: Path, data_cache: Path) -> Path:
    return make_voc(tmp_path / "Cells", bccd_root(shared_data, data_cache), IDS)


def _run(voc: Path, cache: Path, *extra: str) -> int:
    return main(["detection", "--config", "bccd_r18_fpn", "--output-dir", str(voc.parent / "out"),
                 "random", "model.encoder=resnet18", *FAST, *voc_overrides(voc, cache), *extra])


def _one_line_error(capsys: pytest.CaptureFixture, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    for needle in needles:
        assert needle in err, err
    return err


def test_bad_box(voc: Path, data_cache: Path, capsys: pytest.CaptureFixture) -> None:
    xml = voc / "Annotations" / "BloodImage_00003.xml"
    xml.write_text(xml.read_text().replace("<ymax>", "<ymax>12.5.3", 1))
    assert _run(voc, data_cache) == 2
    _one_line_error(capsys, "BloodImage_00003.xml", "bad box", "ymax")


def test_missing_image_file(voc: Path, data_cache: Path, capsys: pytest.CaptureFixture) -> None:
    (voc / "JPEGImages" / "BloodImage_00001.jpg").unlink()
    assert _run(voc, data_cache) == 2
    _one_line_error(capsys, "image file not found", "BloodImage_00001.jpg")


def test_unreadable_image_inside_a_worker(voc: Path, data_cache: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    (voc / "JPEGImages" / "BloodImage_00001.jpg").write_bytes(b"not a jpeg")
    assert _run(voc, data_cache, "data.num_workers=1") == 2
    _one_line_error(capsys, "cannot read image", "BloodImage_00001.jpg")


def test_unknown_config_key(voc: Path, data_cache: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(voc, data_cache, "model.depth=50") == 2
    _one_line_error(capsys, "unknown config key model.depth", "valid keys", "trainable_stages")


def test_bad_values_and_sources(voc: Path, data_cache: Path, capsys: pytest.CaptureFixture) -> None:
    assert _run(voc, data_cache, "model.norm=syncgn") == 2
    _one_line_error(capsys, "model.norm must be one of frozen_bn, bn, syncbn, gn")
    assert main(["detection", "--config", "no_such_preset", "random"]) == 2
    _one_line_error(capsys, "presets:", "bccd_r18_fpn")
    assert main(["detection", "--config", "bccd_r18_fpn", str(voc / "none")]) == 2
    _one_line_error(capsys, "backbone source not found")


def test_detectron2_engine_without_detectron2(capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine without detectron2, even where this session can import it."""
    import transfer.detection

    monkeypatch.setitem(sys.modules, "detectron2", None)  # import detectron2 -> ImportError
    monkeypatch.delitem(sys.modules, "transfer.detection.detectron2_engine", raising=False)
    monkeypatch.delattr(transfer.detection, "detectron2_engine", raising=False)
    args = ["detection", "--config", "bccd_r18_fpn", "--engine", "detectron2", "random",
            "model.encoder=resnet18"]
    assert main(args) == 2
    _one_line_error(capsys, "needs detectron2, but detectron2 is not installed", "pip install",
                    "github.com/facebookresearch/detectron2")


def test_tensorboard_without_the_package(tmp_path: Path, capsys: pytest.CaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    out = tmp_path / "out"
    args = ["detection", "--config", "bccd_r18_fpn", "--output-dir", str(out), "random",
            "model.encoder=resnet18", "train.tensorboard=true"]
    assert main(args) == 2
    _one_line_error(capsys, "train.tensorboard=true needs the tensorboard package",
                    "simclr-transfer[tensorboard]")
    assert not out.exists()


def test_list_shows_detection_and_export(capsys: pytest.CaptureFixture) -> None:
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "detection" in out and "export" in out
