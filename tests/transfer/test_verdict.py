"""The head-ablation verdict: computed from the table's cells (means and the same paired bootstrap
as --compare), every ordering reported with its outcome, refused on tables of another shape; and
the ten-minute suite runs end to end at CPU scale (--smoke) and prints the verdicts its tables
support."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pretrain.config_io import read_yaml
from pretrain.errors import UserError
from transfer.cli import main as transfer_main
from transfer.stats import DEFAULT_RESAMPLES, compare_paired
from transfer.tables import Cell, Table
from transfer.verdict import head_claims, head_verdict

ROOT = Path(__file__).resolve().parents[2]
TEN_MINUTES = ROOT / "configs" / "suites" / "cifar10_heads_10min.yaml"


def table(values: dict[tuple[str, str], list[float]]) -> Table:
    """A head x tap table whose cell (head, tap) holds one value per seed 0, 1, ..."""
    rows = list(dict.fromkeys((h,) for h, _ in values))
    cols = list(dict.fromkeys((t,) for _, t in values))
    cells = {((h,), (t,)): Cell("knn/top1", {seed: v for seed, v in enumerate(vs)})
             for (h, t), vs in values.items()}
    return Table(("head",), ("tap",), rows, cols, cells)


PAPER_LIKE = {  # the paper's ordering, clearly: mlp > linear > none at h, h > z for trained heads
    ("none", "h"): [60.0, 61.0, 59.5], ("none", "z"): [60.0, 61.0, 59.5],
    ("linear", "h"): [70.0, 71.0, 70.5], ("linear", "z"): [65.0, 66.5, 64.0],
    ("mlp-2", "h"): [73.0, 74.5, 73.5], ("mlp-2", "head.0"): [68.0, 69.0, 67.0],
    ("mlp-2", "z"): [55.0, 57.0, 54.0],
}


def test_the_paper_ordering_holds_with_intervals_apart() -> None:
    claims = head_claims(table(PAPER_LIKE))
    assert [(c.better, c.worse, c.where) for c in claims] == [
        ("mlp-2", "linear", "at h"), ("linear", "none", "at h"), ("h", "z", "for linear"),
        ("h", "z", "for mlp-2")]
    assert all(c.outcome == "holds, apart" for c in claims)
    # the same paired bootstrap as --compare mlp-2,linear
    ref = compare_paired(dict(enumerate(PAPER_LIKE[("mlp-2", "h")])),
                         dict(enumerate(PAPER_LIKE[("linear", "h")])), ("mlp-2", "linear", "h"),
                         DEFAULT_RESAMPLES, 0)
    assert (claims[0].diff, claims[0].lo, claims[0].hi) == (ref.diff, ref.lo, ref.hi)
    assert claims[0].diff == pytest.approx((73.0 + 74.5 + 73.5) / 3 - (70.0 + 71.0 + 70.5) / 3)
    line = head_verdict(table(PAPER_LIKE), "knn/top1@k200")
    assert line.startswith("verdict (knn/top1@k200, SimCLR Sec. 4.2 / Fig. 8; n=3): "
                           "mlp-2 > linear at h: +3.17 [")
    assert line.endswith("-- 4 of 4 hold, 4 with intervals apart (95% paired bootstrap)")


def test_reversed_tied_and_unresolved_orderings_are_said_so() -> None:
    values = dict(PAPER_LIKE)
    values[("linear", "h")] = [74.0, 75.0, 74.5]  # linear beats mlp-2 at h
    values[("none", "h")] = values[("none", "z")] = [74.0, 75.0, 74.5]  # none ties linear
    values[("linear", "z")] = [73.0, 76.0, 73.9]  # h > z for linear by a noisy margin
    by_pair = {(c.better, c.worse, c.where): c for c in head_claims(table(values))}
    assert by_pair[("mlp-2", "linear", "at h")].outcome == "reversed"
    assert by_pair[("linear", "none", "at h")].outcome == "tied"
    noisy = by_pair[("h", "z", "for linear")]
    assert noisy.diff > 0 and noisy.lo is not None and noisy.lo <= 0 and noisy.outcome == "holds"
    assert head_verdict(table(values), "m").endswith("-- 2 of 4 hold, 1 with intervals apart "
                                                     "(95% paired bootstrap)")


def test_missing_cells_and_one_seed() -> None:
    only_h = {k: v[:1] for k, v in PAPER_LIKE.items() if k[1] == "h"}
    claims = head_claims(table(only_h))
    assert [c.where for c in claims] == ["at h", "at h"]  # no z column: no h > z claims
    assert all(c.lo is None for c in claims)
    assert head_verdict(table(only_h), "m").endswith("-- 2 of 2 hold (1 seed: no intervals)")
    wrong = Table(("tap",), ("head",), [("h",)], [("none",)], {})
    with pytest.raises(UserError, match="needs rows=head and cols=tap"):
        head_claims(wrong)


def md_means(block: str) -> dict[tuple[str, str], float]:
    """(head, tap) -> mean of a Markdown table the suite printed."""
    lines = [x for x in block.splitlines() if x.startswith("|")]
    taps = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    out = {}
    for row in lines[2:]:
        head, *cells = [c.strip() for c in row.strip("|").split("|")]
        for tap, cell in zip(taps, cells, strict=True):
            number = re.search(r"-?\d+\.\d+", cell.replace("*", ""))
            if number:
                out[(head, tap)] = float(number.group())
    return out


def test_ten_minute_suite_smoke_prints_tables_and_verdicts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], shared_data: Path,
        data_cache: Path) -> None:
    """--smoke: 256 CIFAR-10 images, one epoch, one seed, 3 heads, k-NN and linear at every tap
    on the CPU (about 40 s here); the verdicts' differences are those of the printed tables."""
    smoke = read_yaml(TEN_MINUTES)["smoke"]["overrides"]
    capsys.readouterr()
    code = transfer_main(["suite", str(TEN_MINUTES), f"output_dir={tmp_path}",
                          f"smoke.overrides=[{', '.join([*smoke, f'data.cache_dir={data_cache}'])}]",
                          "--smoke"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "suite cifar10_heads_10min-smoke: 3 runs pretrained, 6 evaluations" in out
    assert (tmp_path / "cifar10_heads_10min-smoke" / "mlp-2_s0" / "summary.json").is_file()
    blocks = out.split("**Table.**")[1:]
    assert len(blocks) == 2
    for block, metric in zip(blocks, ("knn/top1@k200", "linear/top1"), strict=True):
        means = md_means(block)
        assert {h for h, _ in means} == {"none", "linear", "mlp-2"}
        assert ("mlp-2", "head.0") in means and ("none", "head.0") not in means
        (verdict,) = [x for x in block.splitlines() if x.startswith("verdict (")]
        assert verdict.startswith(f"verdict ({metric}, SimCLR Sec. 4.2 / Fig. 8; n=1): ")
        expected = {"mlp-2 > linear at h": means[("mlp-2", "h")] - means[("linear", "h")],
                    "linear > none at h": means[("linear", "h")] - means[("none", "h")],
                    "h > z for linear": means[("linear", "h")] - means[("linear", "z")],
                    "h > z for mlp-2": means[("mlp-2", "h")] - means[("mlp-2", "z")]}
        for claim, diff in expected.items():
            assert f"{claim}: {diff:+.2f} " in verdict, (claim, verdict)
        assert "(1 seed: no intervals)" in verdict
    assert "(compare mlp-2,linear left out: the suite has 1 seed, pairing needs 2)" in out


def test_ten_minute_suite_plans_its_full_grid(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """The GPU-scale suite checks (configs build, evaluator lines parse, tables are valid)."""
    capsys.readouterr()
    code = transfer_main(["suite", str(TEN_MINUTES), f"output_dir={tmp_path}", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and out.count("[todo]") == 3 * 3 * 3  # heads x seeds x (pretrain + 2)
    assert "[todo] mlp-2/s2/linear --tap all --wd-grid 1e-6:1e5:12" in out
    suite = read_yaml(TEN_MINUTES)
    assert "train.epochs=15" in suite["overrides"] and suite["seeds"] == [0, 1, 2]


def test_smoke_needs_a_smoke_section(capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code = transfer_main(["suite", str(ROOT / "configs" / "suites" / "quickstart.yaml"), "--smoke"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.endswith("suite quickstart has no smoke: section, so --smoke cannot run it")


def test_a_verdict_on_other_axes_is_refused_before_anything_runs(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code = transfer_main(["suite", str(TEN_MINUTES), f"output_dir={tmp_path}",
                          "tables=[{rows: head, cols: metric, verdict: true}]"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.endswith("tables[0]: a head verdict needs rows=head and cols=tap; "
                                      "this table has rows=head and cols=metric")
    assert not list(tmp_path.iterdir())  # refused before any pretraining
