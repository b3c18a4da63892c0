"""The probe session evaluates with the run's own input pipeline (RunSetup), unless told not to."""

from __future__ import annotations

from pathlib import Path

import torch

from pretrain.cli import main as pretrain_main
from pretrain.jsonl import read_jsonl
from probes.commands import KnnOptions, knn
from probes.session import ProbeOptions, ProbeSession

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def _cached_transforms(cache: Path) -> set[str]:
    return {torch.load(p, weights_only=True)["meta"]["transform"] for p in cache.rglob("h.pt")}


def test_a_run_pretrained_at_24_px_is_probed_at_24_px(tmp_path: Path, capsys) -> None:
    rc = pretrain_main(["--config", str(CONFIG), "augment.image_size=24", "data.limit=128",
                        "train.epochs=1", "train.batch_size=64", f"train.run_dir={tmp_path}",
                        "train.name=r24", "train.device=cpu", "train.progress=false"])
    assert rc == 0, capsys.readouterr().err
    run = tmp_path / "r24"
    session = ProbeSession.open(ProbeOptions(run=str(run)))
    recipe = session.recipe("test")
    assert (recipe.image_size, recipe.mean) == (24, (0.5, 0.5, 0.5))  # digits default: 16 px

    knn(KnnOptions(run=str(run), tap="h", k=[5], limit=60, cache_dir=str(tmp_path / "c24"),
                   json=True))
    (transform,) = _cached_transforms(tmp_path / "c24")  # what the features were made with
    assert "CenterCrop(size=(24, 24))" in transform and "mean=(0.5, 0.5, 0.5)" in transform
    assert "image_size" not in read_jsonl(run / "results.jsonl")[-1]["settings"]

    knn(KnnOptions(run=str(run), tap="h", k=[5], limit=60, cache_dir=str(tmp_path / "c16"),
                   image_size=16, normalize="imagenet", json=True))
    (transform,) = _cached_transforms(tmp_path / "c16")
    assert "CenterCrop(size=(16, 16))" in transform and "mean=(0.485, 0.456, 0.406)" in transform
    settings = read_jsonl(run / "results.jsonl")[-1]["settings"]
    assert settings["image_size"] == 16 and settings["normalize"] == "imagenet"


def test_an_external_checkpoint_uses_the_datasets_pipeline(tmp_path: Path) -> None:
    from pretrain.encoders import build_encoder

    path = tmp_path / "cnn.pth"
    torch.save(build_encoder("small_cnn").state_dict(), path)
    session = ProbeSession.open(ProbeOptions(run=str(path), encoder="small_cnn", dataset="digits"))
    recipe = session.recipe("test")
    assert (recipe.image_size, recipe.mean) == (16, (0.5, 0.5, 0.5))
