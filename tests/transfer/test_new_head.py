"""Adding a head is one registration: a toy head registered here is pretrained, probed, named in
records, ordered in a table and placed on the depth plot with no edit anywhere else."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure
from torch import nn

from pretrain.cli import main as pretrain_main
from pretrain.heads import HEADS, HeadShape, register_head
from pretrain.jsonl import read_jsonl
from pretrain.run import read_setup
from transfer.cli import main
from transfer.plots import plot_depth
from transfer.records import load_records
from transfer.tables import build_table

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
FAST = ["data.limit=128", "train.epochs=1", "train.batch_size=64", "train.device=cpu",
        "train.progress=false", "model.hidden_dim=32", "model.out_dim=16"]


@pytest.fixture
def toy_head(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A 4-layer head called "deep-toy", registered for this test only."""
    monkeypatch.setattr(HEADS, "_entries", dict(HEADS._entries))

    @register_head("toy", label=lambda shape: "deep-toy", depth=lambda shape: 4)
    def toy(in_dim: int, shape: HeadShape) -> list[nn.Module]:
        widths = [in_dim, 24, 24, 24, shape.out_dim]
        return [nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in itertools.pairwise(widths)]

    yield "toy"


def test_a_registered_head_reaches_records_tables_and_the_depth_plot(
    toy_head: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    for head in (toy_head, "none", "linear"):
        assert pretrain_main(["--config", str(CONFIG), f"model.head={head}", *FAST,
                              f"train.run_dir={tmp_path / 'runs'}"]) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["digits_small_cnn_deep-toy_s0", "digits_small_cnn_linear_s0",
                                      "digits_small_cnn_none_s0"]
    toy_run = runs[0]
    assert read_setup(toy_run / "setup.json").taps == ("h", "head.0", "head.1", "head.2", "z")
    for run in runs:
        assert main(["knn", str(run), "--tap", "all", "--k", "5", "--limit", "120",
                     "--cache-dir", str(tmp_path / "cache"), "--json"]) == 0
    setup = read_jsonl(toy_run / "results.jsonl")[0]["setup"]
    assert (setup["head"], setup["head_kind"], setup["head_depth"]) == ("deep-toy", "toy", 4)

    records = load_records([tmp_path / "runs"])
    table = build_table(records, rows=["head"], cols=["tap"], metrics=["knn/top1@k5"])
    assert [r[0] for r in table.rows] == ["none", "linear", "deep-toy"]  # by depth 0, 1, 4
    assert [c[0] for c in table.cols] == ["h", "head.0", "head.1", "head.2", "z"]
    capsys.readouterr()
    assert main(["table", str(tmp_path / "runs"), "--rows", "head", "--cols", "tap",
                 "--metric", "knn/top1@k5"]) == 0
    assert "| deep-toy |" in capsys.readouterr().out

    saved: list[Figure] = []
    real = Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **k: (saved.append(fig), real(fig, *a, **k)))
    assert plot_depth(records, tmp_path / "depth.png", "knn/top1@k5") is not None
    (ax,) = saved[0].axes
    ticks = dict(zip(ax.get_xticks(), [t.get_text() for t in ax.get_xticklabels()], strict=True))
    assert ticks == {0: "none", 1: "linear", 4: "deep-toy"}
