"""Figures are valid PNGs (or cleanly skipped) and place heads where their records say, resumed
logs keep the last line per epoch, runs are named from setup.json, and the HTML report's links
all resolve inside the report folder."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from matplotlib.figure import Figure

from pretrain.config import PretrainConfig
from pretrain.config_io import to_dict, write_yaml
from pretrain.heads import HeadShape, describe_head
from pretrain.run import CONFIG_FILE, METRICS_FILE, SETUP_FILE, RunSetup, write_setup
from transfer.cli import main
from transfer.plots import (
    plot_depth,
    plot_knn_k,
    plot_pretraining,
    plot_rankme,
    plot_taps,
    write_figures,
)
from transfer.records import epoch_series, find_runs, load_records, run_labels
from transfer.report import write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HEADS = [("none", 2), ("linear", 2), ("mlp", 2), ("mlp", 3)]


def run_setup(kind: str, layers: int, seed: int, **changes: Any) -> RunSetup:
    """The setup.json of a small_cnn digits run with a ``kind`` head of ``layers`` layers;
    ``changes`` replace fields."""
    identity = describe_head(kind, HeadShape(num_layers=layers))
    taps = ["h"] + [f"head.{i}" for i in range(identity.depth - 1 if kind == "mlp" else 0)] + ["z"]
    fields: dict[str, Any] = dict(
        encoder="small_cnn", cifar_stem=False, head=identity.label, head_kind=identity.kind,
        head_depth=identity.depth, num_layers=layers, hidden_dim=64, out_dim=32, bn=True,
        taps=tuple(taps), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), image_size=8,
        pretrain_dataset="digits", epochs=4, batch_size=64, seed=seed, temperature=0.5,
        optimizer="lars")
    return RunSetup(**{**fields, **changes})


def make_run(run: Path, setup: RunSetup, config_head: str = "") -> Path:
    """A run directory: config.yaml (model.head = ``config_head`` or the setup's kind),
    setup.json and an interrupted-then-resumed metrics.jsonl."""
    run.mkdir(parents=True)
    cfg = PretrainConfig()
    cfg.model.head, cfg.model.num_layers = config_head or setup.head_kind, setup.num_layers
    cfg.train.seed = setup.seed
    write_yaml(to_dict(cfg), run / CONFIG_FILE)
    write_setup(setup, run / SETUP_FILE)
    (run / METRICS_FILE).write_text("".join(json.dumps(x) + "\n" for x in metrics_lines(4, setup.seed)))
    return run


def metrics_lines(epochs: int, seed: int) -> list[dict[str, Any]]:
    """An interrupted run: epochs 1-2, a resume from epoch 1, epochs 2..N, a summary."""
    def line(e: int, loss: float) -> dict[str, Any]:
        return {"epoch": e, "step": 10 * e, "loss": loss, "lr": 0.1 * e, "pairs_per_s": 100.0,
                "epoch_time_s": 1.0}
    lines = [line(1, 5.0 + seed), line(2, 999.0), {"event": "resume", "from_epoch": 1}]
    lines += [line(e, 5.0 - 0.5 * e + 0.1 * seed) for e in range(2, epochs + 1)]
    return lines + [{"event": "summary", "epochs": epochs}]


def make_store(root: Path, seeds: int = 2) -> Path:
    """runs/<head><L>_s<seed>/ with config.yaml, setup.json, metrics.jsonl and knn/linear/quality
    records whose setup block is the run's (as probes.records.setup_block writes it)."""
    for head, layers in HEADS:
        for seed in range(seeds):
            run_set = run_setup(head, layers, seed)
            run = make_run(root / "runs" / f"{head}{layers}_s{seed}", run_set)
            depth = run_set.head_depth
            setup = {"run_dir": str(run.resolve()), "checkpoint": str(run / "checkpoint.pt"),
                     "source": "run", "checkpoint_epoch": 4, **run_set.record_fields()}
            recs = []
            for i, tap in enumerate(run_set.taps):
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


def drawn_figures(monkeypatch: pytest.MonkeyPatch) -> list[Figure]:
    """The figures saved from now on (``Figure.savefig`` still writes each file)."""
    saved: list[Figure] = []
    real = Figure.savefig

    def spy(fig: Figure, *args: Any, **kwargs: Any) -> None:
        saved.append(fig)
        real(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return saved


def test_depth_plot_places_heads_at_their_recorded_depth(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """x = the records' head_depth, tick = the label(s) found there; no depth, no point."""
    heads = {"none": 0, "linear": 1, "mlp-2": 2, "toy2": 2, "toy": 5, "random": None}
    lines = []
    for label, depth in heads.items():
        setup = {"head": label, "head_kind": "toy", "head_depth": depth, "pretrain_seed": 0}
        for tap in ("h", "z"):
            value = 10.0 * (depth or 0) + (tap == "z")
            lines.append({"evaluator": "knn", "tap": tap, "dataset": "digits", "seed": 0,
                          "setup": setup, "metrics": {"knn/top1@k200": value}})
    store = tmp_path / "results.jsonl"
    store.write_text("".join(json.dumps(x) + "\n" for x in lines))
    saved = drawn_figures(monkeypatch)
    assert_png(plot_depth(load_records([store]), tmp_path / "depth.png", "knn/top1@k200"))
    (ax,) = saved[0].axes
    assert list(ax.get_xticks()) == [0, 1, 2, 5]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["none", "linear", "mlp-2/toy2", "toy"]
    curves = {c.get_label(): c.lines[0] for c in ax.containers}  # one errorbar per tap
    assert set(curves) == {"tap h", "tap z"}
    for tap, curve in curves.items():
        assert list(curve.get_xdata()) == [0, 1, 2, 2, 5]  # "random" has no depth: left out
        assert list(curve.get_ydata()) == [v + (tap == "tap z") for v in (0.0, 10.0, 20.0, 20.0, 50.0)]


def test_run_labels_come_from_setup_json(tmp_path: Path) -> None:
    # config.yaml says mlp: the label must still be the one setup.json records
    toy = make_run(tmp_path / "toy_run", run_setup("mlp", 2, 0, head="toy", head_depth=7), "mlp")
    mlp3 = make_run(tmp_path / "mlp3_run", run_setup("mlp", 3, 0))
    none = make_run(tmp_path / "none_run", run_setup("none", 2, 0))
    bare = make_run(tmp_path / "old_run", run_setup("linear", 2, 0))
    (bare / SETUP_FILE).unlink()
    labels, skipped = run_labels([toy, bare, mlp3, none])
    assert list(labels.items()) == [(none, "none"), (mlp3, "mlp-3"), (toy, "toy")]  # by depth
    (line,) = skipped
    assert str(bare) in line and "setup" in line
    # setups that differ beyond the head are told apart by a prefix
    other = make_run(tmp_path / "cifar_run", run_setup("mlp", 3, 0, pretrain_dataset="cifar10"))
    labels, _ = run_labels([mlp3, other])
    assert labels == {other: "cifar10 mlp-3", mlp3: "digits mlp-3"}
    # the pretraining figure leaves the run without setup.json out, and says so
    written, skipped = write_figures([], [toy, bare], tmp_path / "fig")
    assert [p.name for _, p in written] == ["pretraining.png"]
    assert len(skipped) == 1 and str(bare) in skipped[0]


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
    assert "<b>" in page and "not tabulated" not in page
    assert "<tr><td>mlp3_s1</td><td>mlp-3</td>" in page  # runs named from their setup.json
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


def test_pretraining_curves_gain_the_knn_monitor_and_rankme_panels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    figures = drawn_figures(monkeypatch)
    plot_pretraining([("mlp-2", metrics_lines(3, 0))], tmp_path / "plain.png")
    watched = [{**line, "monitor/knn_top1/h": 50.0 + line["epoch"], "monitor/split": "holdout",
                "quality/rankme/h": 7.0} if "epoch" in line and "event" not in line else line
               for s in range(2) for line in metrics_lines(3, s)]
    plot_pretraining([("mlp-2", watched[: len(watched) // 2]), ("mlp-2", watched[len(watched) // 2:])],
                     tmp_path / "watched.png")
    plain, monitored = figures
    assert [ax.get_ylabel() for ax in plain.axes] == ["NT-Xent loss", "learning rate"]
    labels = [ax.get_ylabel() for ax in monitored.axes]
    assert labels == ["NT-Xent loss", "learning rate", "online k-NN top-1 at h (%)", "RankMe at h"]
    (curve,) = monitored.axes[2].get_lines()
    assert list(curve.get_ydata()) == [51.0, 52.0, 53.0]  # the mean of the two seeds per epoch
