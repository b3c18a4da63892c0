"""Figures are valid PNGs (or cleanly skipped), resumed logs keep the last line per epoch, and the
HTML report's links all resolve inside the report folder."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import transfer.tools  # noqa: F401,I001  (registers table/plot/report until transfer.commands does)
from pretrain.config import PretrainConfig
from pretrain.config_io import to_dict, write_yaml
from transfer.cli import main
from transfer.plots import (
    epoch_series,
    find_runs,
    plot_depth,
    plot_knn_k,
    plot_pretraining,
    plot_rankme,
    plot_taps,
    write_figures,
)
from transfer.report import write_report
from transfer.tables import load_records

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADS = [("none", 2), ("linear", 2), ("mlp", 2), ("mlp", 3)]


def taps_of(head: str, layers: int) -> list[str]:
    return ["h", "z"] if head != "mlp" else ["h"] + [f"head.{i}" for i in range(layers - 1)] + ["z"]


def metrics_lines(epochs: int, seed: int) -> list[dict[str, Any]]:
    """An interrupted run: epochs 1-2, a resume from epoch 1, epochs 2..N, a summary."""
    def line(e: int, loss: float) -> dict[str, Any]:
        return {"epoch": e, "step": 10 * e, "loss": loss, "lr": 0.1 * e, "pairs_per_s": 100.0,
                "epoch_time_s": 1.0}
    lines = [line(1, 5.0 + seed), line(2, 999.0), {"event": "resume", "from_epoch": 1}]
    lines += [line(e, 5.0 - 0.5 * e + 0.1 * seed) for e in range(2, epochs + 1)]
    return lines + [{"event": "summary", "epochs": epochs}]


def make_store(root: Path, seeds: int = 2) -> Path:
    """runs/<head><L>_s<seed>/ with config.yaml, metrics.jsonl and knn/linear/quality records."""
    for head, layers in HEADS:
        for seed in range(seeds):
            run = root / "runs" / f"{head}{layers}_s{seed}"
            run.mkdir(parents=True)
            cfg = PretrainConfig()
            cfg.model.head, cfg.model.num_layers, cfg.train.seed = head, layers, seed
            write_yaml(to_dict(cfg), run / "config.yaml")
            (run / "metrics.jsonl").write_text(
                "".join(json.dumps(x) + "\n" for x in metrics_lines(4, seed)))
            depth = {"none": 0, "linear": 1}.get(head, layers)
            setup = {"run_dir": str(run), "encoder": "small_cnn", "head": head, "num_layers": layers,
                     "epochs": 4, "batch_size": 64, "pretrain_dataset": "digits", "seed": seed}
            recs = []
            for i, tap in enumerate(taps_of(head, layers)):
                base = 80.0 + 2 * depth - 3 * i + seed
                recs.append({"evaluator": "knn", "tap": tap, "metrics": {
                    f"knn/top1@k{k}": base + j for j, k in enumerate((10, 20, 200))}})
                recs.append({"evaluator": "quality", "tap": tap,
                             "metrics": {"quality/rankme": 50.0 - 5 * i + seed,
                                         "quality/alignment": 0.5}})
            recs.append({"evaluator": "linear", "tap": "h", "metrics": {"linear/top1": 85.0 + depth}})
            with open(run / "results.jsonl", "w") as f:
                for r in recs:
                    r.update(dataset="digits", settings={}, setup=setup, seed=seed, wall_s=1.0,
                             hardware="test CPU", time="2024-01-01T00:00:00")
                    f.write(json.dumps(r) + "\n")
    return root / "runs"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return make_store(tmp_path)


def assert_png(path: Path | None) -> None:
    assert path is not None and path.is_file()
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 5_000


def test_epoch_series_keeps_the_last_line_per_epoch() -> None:
    series = epoch_series(metrics_lines(4, 0))
    assert list(series) == [1, 2, 3, 4]
    assert series[2]["loss"] == pytest.approx(4.0)  # the pre-resume 999.0 was replaced
    assert epoch_series([{"event": "resume"}]) == {}


def test_each_figure_is_a_png(store: Path, tmp_path: Path) -> None:
    records = load_records([store])
    out = tmp_path / "fig"
    assert_png(plot_depth(records, out / "depth.png", "knn/top1@k200"))
    assert_png(plot_taps(records, out / "taps.png", "knn/top1@k200"))
    assert_png(plot_knn_k(records, out / "knn.png"))
    assert_png(plot_rankme(records, out / "rankme.png"))
    runs = find_runs([store])
    assert len(runs) == 8
    assert_png(plot_pretraining([("mlp-2", metrics_lines(4, s)) for s in range(3)], out / "pre.png"))


def test_figures_without_data_are_skipped(store: Path, tmp_path: Path) -> None:
    linear_only = [r for r in load_records([store]) if r.fields["evaluator"] == "linear"]
    assert plot_knn_k(linear_only, tmp_path / "a.png") is None
    assert plot_rankme(linear_only, tmp_path / "b.png") is None
    assert plot_depth(linear_only, tmp_path / "c.png", "knn/top1@k200") is None
    assert plot_pretraining([("none", [{"event": "summary"}])], tmp_path / "d.png") is None
    assert not list(tmp_path.glob("*.png"))


def test_write_figures_makes_every_kind(store: Path, tmp_path: Path) -> None:
    records = load_records([store])
    written, skipped = write_figures(records, find_runs([store], records), tmp_path / "f")
    names = {p.name for _, p in written}
    assert {"depth_knn-top1-k200.png", "taps_knn-top1-k200.png", "depth_linear-top1.png",
            "knn_k_h.png", "rankme.png", "pretraining.png"} <= names
    assert "taps_linear-top1.png" not in names  # linear was run at one tap only
    assert skipped == []
    for _, p in written:
        assert_png(p)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [v for k, v in attrs if k in ("href", "src") and v]


def test_report_links_resolve(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    index = write_report([store], out, load_records([store]))
    parser = _Links()
    parser.feed(index.read_text())
    assert any(link.endswith(".png") for link in parser.links)
    configs = [link for link in parser.links if link.startswith("configs/")]
    assert len(configs) == 8
    for link in parser.links:
        assert not link.startswith(("/", "http")), link  # everything lives in the report folder
        assert (out / link).is_file(), link
    copied = (out / "configs" / "mlp3_s1.yaml").read_text()
    assert copied == (store / "mlp3_s1" / "config.yaml").read_text()
    page = index.read_text()
    assert "<b>" in page and "mlp-3" in page and "not tabulated" not in page
    assert (out / "tables").is_dir() and list((out / "tables").glob("*.tex"))


def test_cli_plot_and_report(store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    figs = tmp_path / "figs"
    assert main(["plot", str(store), "-o", str(figs), "--filter", "evaluator=knn",
                 "--filter", "tap=h"]) == 0
    assert {p.name for p in figs.iterdir()} == {"depth_knn-top1-k200.png", "knn_k_h.png",
                                                "pretraining.png"}  # the filters held
    assert main(["report", str(store), "-o", str(tmp_path / "rep"), "--filter", "evaluator=linear"]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "linear/top1" in page and "knn/top1" not in page
    assert main(["plot", str(tmp_path / "nothing-here")]) == 2
    assert "results not found" in capsys.readouterr().err
