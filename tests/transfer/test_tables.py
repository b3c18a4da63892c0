"""Tables from a hand-made results store: flattening, aggregation, bold, formats, filters, CLI."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from pretrain.errors import UserError
from pretrain.heads import HeadShape, describe_head
from pretrain.run import RunSetup
from probes.records import make_record, random_init_setup, setup_block
from transfer.cli import main
from transfer.records import Filter, flatten_record, load_records
from transfer.report import write_report
from transfer.stats import Comparison, compare_paired, mean_std, paired_bootstrap
from transfer.table_formats import (
    TABLE_FORMATS,
    latex_escape,
    register_format,
    render,
    render_csv,
    render_latex,
    render_markdown,
)
from transfer.tables import Table, TableRequest, build_table, compare_rows, make_table

# (head label) -> per-seed values of knn/top1@k200 and knn/top1@k20 at tap h
K200 = {"none": [80.0, 82.0, 84.0], "linear": [85.0, 86.0, 87.0], "mlp-2": [88.0, 90.0, 92.0]}
K20 = {"none": [70.0, 70.0, 70.0], "linear": [60.0, 61.0, 62.0], "mlp-2": [65.0, 65.0, 65.0]}


def run_setup(head: str, seed: int) -> RunSetup:
    """The RunSetup of a ResNet-18 CIFAR-10 run whose head is labelled ``head`` (``mlp-3``)."""
    kind, layers = (head, 2) if head in ("none", "linear") else ("mlp", int(head[4:]))
    identity = describe_head(kind, HeadShape(num_layers=layers))
    taps = ("h", *[f"head.{i}" for i in range(identity.depth - 1)], "z") if kind == "mlp" else ("h", "z")
    return RunSetup(encoder="resnet18", cifar_stem=True, head=identity.label, head_kind=identity.kind,
                    head_depth=identity.depth, num_layers=layers, hidden_dim=512, out_dim=128, bn=True,
                    taps=taps, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), image_size=32,
                    pretrain_dataset="cifar10", epochs=100, batch_size=256, seed=seed,
                    temperature=0.5, optimizer="lars")


def record(head: str, seed: int, metrics: dict[str, Any], tap: str = "h", evaluator: str = "knn",
           dataset: str = "cifar10", eval_seed: int = 0, setup: dict[str, Any] | None = None,
           **extra: Any) -> dict[str, Any]:
    """A probe record in the shape of ``probes.records.make_record`` for a run directory;
    ``seed`` is the pretraining seed, ``setup`` overrides keys of the setup block."""
    run = f"/runs/{head}_s{seed}"
    rec = {
        "evaluator": evaluator, "tap": tap, "dataset": dataset,
        "splits": {"train": 50000, "test": 10000}, "metrics": metrics,
        "settings": {"k": [20, 200], "temperature": 0.07} if evaluator == "knn" else {"epochs": 90},
        "setup": {"checkpoint": f"{run}/checkpoint.pt", "checkpoint_hash": f"{head}{seed}",
                  "source": "run", "checkpoint_epoch": 100, "run_dir": run,
                  **run_setup(head, seed).record_fields(), **(setup or {})},
        "seed": eval_seed, "time": f"2024-01-01T00:00:{seed:02d}+00:00", "wall_s": 10.0,
        "device": "cpu", "hardware": "test CPU", "code_version": "0.1.0",
    }
    rec.update(extra)
    return rec


def write_store(path: Path, records: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


def knn_store() -> list[dict[str, Any]]:
    return [record(h, s, {"knn/top1@k200": K200[h][s], "knn/top1@k20": K20[h][s]})
            for h in K200 for s in range(3)]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return write_store(tmp_path / "results.jsonl", knn_store())


# ---- flattening the record format ---------------------------------------------------------------

def test_flatten_record_fields() -> None:
    flat = flatten_record(record("mlp-3", 1, {"knn/top1@k200": 1.0, "knn/note": "x"}, eval_seed=7))
    f = flat.fields
    assert (f["head"], f["head_kind"], f["head_depth"]) == ("mlp-3", "mlp", 3)
    assert f["taps"] == "h,head.0,head.1,z" and f["mean"] == "0.49,0.48,0.45"
    assert f["seed"] == 7 and f["pretrain_seed"] == 1 and f["run_dir"] == "/runs/mlp-3_s1"
    assert f["settings.k"] == "20,200" and f["splits.test"] == 10000
    assert flat.seed_key == (1, 7) and flat.metrics == {"knn/top1@k200": 1.0}
    # a setup key that clashes with a top-level one is kept apart, not overwritten
    clash = flatten_record(record("none", 0, {"a": 1.0}, setup={"dataset": "imagenet"}))
    assert clash.fields["dataset"] == "cifar10" and clash.fields["setup.dataset"] == "imagenet"


def test_flatten_takes_head_labels_verbatim() -> None:
    """No label is derived: random-init and external-file records keep what the writer wrote."""
    det = {"evaluator": "detection", "tap": "h", "dataset": "voc", "metrics": {"det/AP50": 60.0},
           "settings": {"preset": "voc", "train": {"final_loss": 0.3}},
           "setup": random_init_setup("resnet18"), "seed": 1}
    flat = flatten_record(det)
    assert flat.fields["head"] == "random" and "head_depth" not in flat.fields
    assert flat.seed_key == (None, 1) and flat.fields["settings.train.final_loss"] == 0.3
    external = {**det, "setup": {"encoder": "resnet18", "init": "supervised_r18",
                                 "head": "supervised_r18", "head_kind": None, "head_depth": None}}
    fields = flatten_record(external).fields
    assert fields["head"] == "supervised_r18" and "head_kind" not in fields
    # a made-up head kind is shown as its recorded label, with its recorded depth
    toy = flatten_record(record("mlp-2", 0, {"a": 1.0},
                                setup={"head": "toy", "head_kind": "toy", "head_depth": 5}))
    assert (toy.fields["head"], toy.fields["head_kind"], toy.fields["head_depth"]) == ("toy", "toy", 5)


def test_flatten_reads_the_probes_record_format() -> None:
    """Guards against drift between probes.records (setup_block, make_record) and flatten_record."""
    setup = run_setup("mlp-2", 3)
    run = SimpleNamespace(dir=Path("/runs/r"), setup=setup)  # a loaded run, as setup_block reads it
    loaded = SimpleNamespace(checkpoint=Path("/runs/r/checkpoint.pt"), checkpoint_hash="abc",
                             source="run", epoch=100, run=run)
    rec = json.loads(json.dumps(make_record("knn", "head.0", "cifar10", {"knn/top1@k20": 50.0},
                                            {"k": [20]}, setup_block(loaded),
                                            {"train": 10, "test": 5}, 0, 1.0, "cpu")))
    flat = flatten_record(rec)
    assert flat.metrics == {"knn/top1@k20": 50.0}
    got = tuple(flat.fields[k] for k in ("evaluator", "tap", "head", "head_kind", "head_depth"))
    assert got == ("knn", "head.0", "mlp-2", "mlp", 2)
    assert flat.seed_key == (3, 0) and flat.fields["dataset"] == "cifar10"
    assert flat.fields["run_dir"] == str(Path("/runs/r").resolve())


# ---- tables -------------------------------------------------------------------------------------

def test_means_stds_n_and_bold(store: Path) -> None:
    table = build_table(load_records([store]), rows=["head"], cols=["metric"])
    assert [r[0] for r in table.rows] == ["none", "linear", "mlp-2"]  # by head depth
    assert [c[0] for c in table.cols] == ["knn/top1@k200", "knn/top1@k20"]  # recorded order
    for head in K200:
        mean, std, n = table.cell((head,), ("knn/top1@k200",)).stats
        assert mean == pytest.approx(np.mean(K200[head]))
        assert std == pytest.approx(np.std(K200[head], ddof=1))  # sample std
        assert n == 3
    best = {c[0]: [r[0] for r in table.rows if table.cell(r, c).best] for c in table.cols}
    assert best == {"knn/top1@k200": ["mlp-2"], "knn/top1@k20": ["none"]}
    assert "ddof=1" in table.caption


def test_transposed_table_bolds_the_best_of_each_row(store: Path) -> None:
    table = build_table(load_records([store]), rows=["metric"], cols=["head"])
    best = {r[0]: [c[0] for c in table.cols if table.cell(r, c).best] for r in table.rows}
    assert best == {"knn/top1@k200": ["mlp-2"], "knn/top1@k20": ["none"]}
    assert "best per row" in table.caption


def test_lower_is_better_metrics_bold_the_minimum(tmp_path: Path) -> None:
    recs = [record(h, s, {"quality/alignment": a}, evaluator="quality")
            for h, a in (("none", 0.5), ("mlp-2", 0.3)) for s in range(2)]
    table = build_table(load_records([write_store(tmp_path / "r.jsonl", recs)]))
    assert table.cell(("mlp-2",), ("quality/alignment",)).best
    assert not table.cell(("none",), ("quality/alignment",)).best
    # a user-chosen substring flips a metric the defaults treat as higher-is-better
    recs = [record(h, 0, {"knn/top1@k200": v}) for h, v in (("none", 1.0), ("mlp-2", 2.0))]
    table = build_table(load_records([write_store(tmp_path / "s.jsonl", recs)]),
                        lower_is_better=["top1"])
    assert table.cell(("none",), ("knn/top1@k200",)).best


def test_ties_are_all_bold_unless_the_whole_column_ties(tmp_path: Path) -> None:
    recs = [record(h, 0, {"a/top1": v, "b/top1": 5.0})
            for h, v in (("none", 1.0), ("linear", 2.0), ("mlp-2", 2.0))]
    table = build_table(load_records([write_store(tmp_path / "r.jsonl", recs)]))
    assert [table.cell(r, ("a/top1",)).best for r in table.rows] == [False, True, True]
    assert not any(table.cell(r, ("b/top1",)).best for r in table.rows)


def test_filters_and_pivot_by_tap(tmp_path: Path) -> None:
    recs = knn_store()
    recs += [record(h, s, {"knn/top1@k200": K200[h][s] - 10}, tap="z") for h in K200 for s in range(3)]
    recs += [record("mlp-2", s, {"knn/top1@k200": 95.0}, tap="head.0") for s in range(3)]
    recs += [record(h, s, {"linear/top1": 99.0}, evaluator="linear") for h in K200 for s in range(3)]
    records = load_records([write_store(tmp_path / "r.jsonl", recs)])
    table = build_table(records, rows=["head"], cols=["tap"], metrics=["knn/top1@k200"],
                        filters=["evaluator=knn"])
    assert [c[0] for c in table.cols] == ["h", "head.0", "z"]  # shallow to deep
    assert table.cell(("mlp-2",), ("z",)).stats[0] == pytest.approx(80.0)
    assert table.cell(("none",), ("head.0",)) is None  # no such tap: empty cell
    assert "– |" in render_markdown(table)
    assert not table.cell(("mlp-2",), ("head.0",)).best  # alone in its column: nothing to beat
    assert table.cell(("mlp-2",), ("z",)).best
    only_z = build_table(records, cols=["metric"], metrics=["knn/*"], filters=["tap=z"])
    assert only_z.cell(("none",), ("knn/top1@k200",)).stats[0] == pytest.approx(72.0)
    no_none = build_table(records, metrics=["linear/top1"], filters=[Filter.parse("head!=none")])
    assert [r[0] for r in no_none.rows] == ["linear", "mlp-2"]
    two = build_table(records, metrics=["knn/top1@k200"], filters=["tap=h,z"], cols=["tap"])
    assert [c[0] for c in two.cols] == ["h", "z"]


def test_cells_never_mix_setups(tmp_path: Path) -> None:
    recs = knn_store() + [record(h, s, {"knn/top1@k200": 1.0}, tap="z") for h in K200 for s in range(3)]
    records = load_records([write_store(tmp_path / "r.jsonl", recs)])
    with pytest.raises(UserError, match=r"differ in tap .*--filter tap=VALUE"):
        build_table(records, metrics=["knn/top1@k200"])
    with pytest.raises(UserError, match="choose one with --metric"):
        build_table(records, cols=["tap"])


def test_identical_rerun_keeps_newest_record(tmp_path: Path) -> None:
    rerun = record("mlp-2", 0, {"knn/top1@k200": 99.0}, time="2024-02-01T00:00:00", wall_s=3.0)
    records = load_records([write_store(tmp_path / "r.jsonl", knn_store() + [rerun])])
    table = build_table(records, metrics=["knn/top1@k200"])
    cell = table.cell(("mlp-2",), ("knn/top1@k200",))
    assert cell.stats[2] == 3 and sorted(cell.values.values()) == [90.0, 92.0, 99.0]
    assert "replaced by newer re-runs" in table.caption


def test_user_errors_name_the_valid_choices(store: Path, tmp_path: Path) -> None:
    records = load_records([store])
    with pytest.raises(UserError, match=r"unknown rows field 'haed'; valid: .*head"):
        build_table(records, rows=["haed"])
    with pytest.raises(UserError, match=r"values of tap: h"):
        build_table(records, filters=["tap=z"])
    with pytest.raises(UserError, match=r"available: knn/top1@k200, knn/top1@k20"):
        build_table(records, metrics=["linear/*"])
    with pytest.raises(UserError, match="FIELD=VALUE"):
        Filter.parse("tap")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no results.jsonl under"):
        load_records([tmp_path / "empty"])
    with pytest.raises(UserError, match="results not found"):
        load_records([tmp_path / "missing.jsonl"])


def test_caption_states_the_setup(store: Path) -> None:
    caption = build_table(load_records([store])).caption
    for part in ("dataset=cifar10", "evaluator=knn", "tap=h", "encoder=resnet18", "epochs=100",
                 "batch_size=256", "k=20,200", "temperature=0.07", "Hardware: test CPU",
                 "90 s over 9 records"):
        assert part in caption, part


def test_records_found_recursively_and_deduplicated(tmp_path: Path) -> None:
    write_store(tmp_path / "runs" / "a" / "results.jsonl", knn_store()[:3])
    write_store(tmp_path / "runs" / "b" / "results.jsonl", knn_store()[3:])
    both = load_records([tmp_path / "runs", tmp_path / "runs" / "a"])  # a reached twice: read once
    assert len(both) == 9


def test_head_rows_follow_the_recorded_depth_not_the_label(tmp_path: Path) -> None:
    # label -> head_depth as the writer recorded it; "mlp-7" at depth 1 shows that no label is parsed
    depths = {"toy": 5, "none": 0, "a-deep": 9, "mlp-3": 3, "mlp-7": 1, "supervised_r18": None,
              "random": None}

    def table_rows(depth_of: dict[str, int | None], name: str) -> list[str]:
        recs = [record("mlp-2", s, {"knn/top1@k200": 50.0 + s}, setup={
            "head": label, "head_kind": None if d is None else "toy", "head_depth": d,
            "run_dir": f"/runs/{label}_s{s}", "checkpoint_hash": f"{label}{s}"})
            for label, d in depth_of.items() for s in range(2)]
        records = load_records([write_store(tmp_path / name, recs)])
        rows = [r[0] for r in build_table(records, rows=["head"], cols=["metric"]).rows]
        cols = build_table(records, rows=["metric"], cols=["head"]).cols
        assert [c[0] for c in cols] == rows  # one order on either axis
        return rows

    # by depth; labels without a depth after them, alphabetically
    assert table_rows(depths, "a.jsonl") == ["none", "mlp-7", "mlp-3", "toy", "a-deep", "random",
                                             "supervised_r18"]
    flipped = {"toy": 0, "none": 5}
    assert table_rows(flipped, "b.jsonl") == ["toy", "none"]


def test_make_table_builds_the_request_and_its_comparisons(store: Path) -> None:
    records = load_records([store])
    request = TableRequest(rows=["head"], cols=["metric"], metrics=["knn/top1@k200"],
                           filters=[Filter.parse("head!=none")], compare=[("mlp-2", "linear")],
                           bootstrap=500, bootstrap_seed=1)
    table, comparisons = make_table(records, request)
    assert [r[0] for r in table.rows] == ["linear", "mlp-2"] and len(table.cols) == 1
    (c,) = comparisons
    assert (c.a, c.b, c.column, c.resamples) == ("mlp-2", "linear", "knn/top1@k200", 500)
    assert c.diff == pytest.approx(4.0) and c.excludes_zero
    assert comparisons == compare_rows(table, "mlp-2", "linear", 500, 1)  # same bootstrap seed
    with pytest.raises(UserError, match="no row 'mlp-9'"):
        make_table(records, TableRequest(compare=[("mlp-9", "none")]))


# ---- table formats ------------------------------------------------------------------------------

def render_toy(table: Table, comparisons: Sequence[Comparison] = (), digits: int = 2) -> str:
    return "".join(f"TOY {Table.label(r)}\n" for r in table.rows)


@contextmanager
def toy_format() -> Iterator[None]:
    """Table format ``toy`` (``.toy`` files, caption not carried) registered for the ``with``
    body only: it goes into a copy of the registry's entries, dropped on exit."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TABLE_FORMATS, "_entries", dict(TABLE_FORMATS._entries))
        register_format("toy", "toy", carries_caption=False, description="row labels")(render_toy)
        yield


def test_built_in_formats_and_unknown_names(store: Path) -> None:
    exts = {name: TABLE_FORMATS.get(name).extension for name in TABLE_FORMATS}
    assert exts == {"csv": "csv", "html": "html", "latex": "tex", "md": "md"}
    assert [n for n in TABLE_FORMATS if not TABLE_FORMATS.get(n).carries_caption] == ["csv"]
    table = build_table(load_records([store]))
    assert render(table, "md") == render_markdown(table)
    assert "<td class=\"num\"><b>90.00 ± 2.00</b> <small>(n=3)</small></td>" in render(table, "html")
    with pytest.raises(UserError, match=r"unknown table format 'docx'; valid: csv, html, latex, md"):
        render(table, "docx")
    with toy_format(), pytest.raises(KeyError, match="already writes .md files"):
        register_format("markdown2", "md")(render_toy)


def test_a_registered_format_reaches_the_table_tool_and_the_report(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["table", str(store), "--metric", "knn/top1@k200", "--format", "toy"]
    assert main(args) == 2  # argparse refuses a format nobody registered, in one line
    assert "invalid choice: 'toy'" in capsys.readouterr().err
    with toy_format():
        out = tmp_path / "t.toy"
        assert main([*args, "-o", str(out), "--compare", "mlp-2,linear"]) == 0
        assert out.read_text() == "TOY none\nTOY linear\nTOY mlp-2\n"
        err = capsys.readouterr().err  # a format without the caption gets it on stderr
        assert "Results by head / metric. Mean ± sample std" in err and "mlp-2 − linear" in err
        index = write_report([store], tmp_path / "rep", load_records([store]))
        toys = sorted((tmp_path / "rep" / "tables").glob("*.toy"))
        assert toys and all(t.read_text().startswith("TOY ") for t in toys)
        page = index.read_text()
        assert all(f'href="tables/{t.name}"' in page for t in toys)
        for ext in ("md", "tex", "csv", "html"):  # and every built-in format beside it
            assert len(list((tmp_path / "rep" / "tables").glob(f"*.{ext}"))) == len(toys)
    assert "toy" not in TABLE_FORMATS
    assert main(args) == 2


def test_markdown_shows_mean_std_n_and_bold(store: Path) -> None:
    md = render_markdown(build_table(load_records([store])))
    assert "| mlp-2 | **90.00 ± 2.00** (n=3) | 65.00 ± 0.00 (n=3) |" in md
    assert "| none | 82.00 ± 2.00 (n=3) | **70.00 ± 0.00** (n=3) |" in md


def test_single_seed_cell_has_no_std(tmp_path: Path) -> None:
    recs = [record("none", 0, {"knn/top1@k200": 80.0}), record("linear", 0, {"knn/top1@k200": 85.0}),
            record("linear", 1, {"knn/top1@k200": 87.0})]
    table = build_table(load_records([write_store(tmp_path / "r.jsonl", recs)]))
    mean, std, n = table.cell(("none",), ("knn/top1@k200",)).stats
    assert (mean, n) == (80.0, 1) and math.isnan(std)
    md = render_markdown(table)
    assert "| none | 80.00 (n=1) |" in md and "| linear | **86.00 ± 1.41** (n=2) |" in md
    rows = list(csv.DictReader(io.StringIO(render_csv(table))))
    assert rows[0]["std"] == "" and rows[1]["std"] != ""


def test_latex_escapes_names_and_uses_booktabs(tmp_path: Path) -> None:
    assert latex_escape("mlp_2 & 50% #1 $x {y} ~^\\") == (
        r"mlp\_2 \& 50\% \#1 \$x \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{}")
    recs = [record("mlp-2", s, {"knn/top1@k200": 50.0 + s}, dataset="cifar_10 & 50%") for s in range(2)]
    recs += [record("mlp-2", s, {"knn/top1@k200": 40.0 + s}, dataset="stl_10") for s in range(2)]
    tex = render_latex(build_table(load_records([write_store(tmp_path / "r.jsonl", recs)]),
                                   rows=["dataset"], cols=["head"]))
    assert r"cifar\_10 \& 50\% &" in tex and r"stl\_10 &" in tex
    assert all(s in tex for s in (r"\toprule", r"\midrule", r"\bottomrule", r"\caption{"))
    assert r"\textbf{50.50 $\pm$ 0.71} {\scriptsize (n=2)}" in tex
    assert "cifar_10" not in tex and "±" not in tex  # nothing unescaped, the caption included


def test_csv_parses_back(store: Path) -> None:
    table = build_table(load_records([store]))
    rows = list(csv.DictReader(io.StringIO(render_csv(table))))
    assert len(rows) == 6 and set(rows[0]) == {"head", "metric", "mean", "std", "n", "best"}
    got = {(r["head"], r["metric"]): r for r in rows}
    r = got[("mlp-2", "knn/top1@k200")]
    assert float(r["mean"]) == pytest.approx(90.0) and float(r["std"]) == pytest.approx(2.0)
    assert int(r["n"]) == 3 and r["best"] == "1" and got[("linear", "knn/top1@k200")]["best"] == "0"


# ---- paired bootstrap --------------------------------------------------------------------------

def test_bootstrap_identical_rows_give_zero() -> None:
    a = [80.0, 82.5, 79.0, 85.0]
    diff, lo, hi = paired_bootstrap(a, a, n=2000, seed=0)
    assert diff == 0.0 and lo <= 0.0 <= hi


def test_bootstrap_constant_shift_excludes_zero() -> None:
    a = [80.0, 82.5, 79.0, 85.0]
    diff, lo, hi = paired_bootstrap([x + 1.5 for x in a], a, n=2000, seed=0)
    assert diff == pytest.approx(1.5) and lo == pytest.approx(1.5) and hi == pytest.approx(1.5)


def test_bootstrap_is_seeded_and_bounded() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 1.0, 5), rng.normal(0.0, 1.0, 5)
    first = paired_bootstrap(a, b, n=5000, seed=3)
    assert first == paired_bootstrap(a, b, n=5000, seed=3)
    assert first != paired_bootstrap(a, b, n=5000, seed=4)
    d = a - b
    assert first[0] == pytest.approx(d.mean())
    assert d.min() <= first[1] < first[0] < first[2] <= d.max()
    with pytest.raises(UserError, match="at least 2"):
        paired_bootstrap([1.0], [0.0])


def test_compare_pairs_by_seed_not_by_position() -> None:
    a = {(0, 0): 10.0, (1, 1): 20.0, (2, 2): 30.0}
    b = {(2, 2): 26.0, (0, 0): 6.0, (1, 1): 16.0, (3, 3): 0.0}  # other order, one extra seed
    c = compare_paired(a, b, ("mlp-2", "linear", "knn/top1"), n=1000)
    assert (c.diff, c.lo, c.hi, c.n, c.unpaired) == (4.0, 4.0, 4.0, 3, 1)
    assert c.excludes_zero and "excludes 0" in c.describe()


def test_compare_rows_of_a_table(tmp_path: Path) -> None:
    recs = list(reversed(knn_store()))  # written newest seed first
    table = build_table(load_records([write_store(tmp_path / "r.jsonl", recs)]),
                        metrics=["knn/top1@k200"])
    (c,) = compare_rows(table, "mlp-2", "linear", 2000, 0)
    assert c.diff == pytest.approx(4.0) and c.excludes_zero  # diffs 3, 4, 5
    assert mean_std([3.0, 4.0, 5.0]) == (4.0, 1.0, 3)
    with pytest.raises(UserError, match="rows: none, linear, mlp-2"):
        compare_rows(table, "mlp-4", "linear")


# ---- CLI ---------------------------------------------------------------------------------------

def test_cli_table_prints_markdown(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["table", str(store.parent), "--rows", "head", "--cols", "metric",
               "--filter", "evaluator=knn", "--compare", "mlp-2,linear"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| mlp-2 | **90.00 ± 2.00** (n=3) |" in out
    assert "mlp-2 − linear, knn/top1@k200: +4.00" in out and "excludes 0" in out


def test_cli_table_latex_and_csv_to_file(store: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", str(store), "--format", "latex", "--metric", "knn/top1@k20"]) == 0
    assert r"\begin{tabular}{lc}" in capsys.readouterr().out
    out = tmp_path / "t" / "table.csv"
    assert main(["table", str(store), "--rows", "head", "--cols", "tap", "--metric",
                 "knn/top1@k200", "--format", "csv", "-o", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert {r["head"]: float(r["mean"]) for r in rows} == {"none": 82.0, "linear": 86.0, "mlp-2": 90.0}
    assert "knn/top1@k200 by head / tap." in capsys.readouterr().err  # CSV: caption on stderr


def test_cli_bad_field_exits_2_with_one_line(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["table", str(store), "--rows", "haed"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown rows field 'haed'" in err
    assert "head" in err and "tap" in err and "evaluator" in err
    assert main(["table", str(store), "--filter", "bogus=1"]) == 2
    assert "unknown filter field 'bogus'" in capsys.readouterr().err
