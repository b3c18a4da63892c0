"""Suites: every cell runs once, a stopped suite reruns only the missing cells, tables print."""

from __future__ import annotations

from pathlib import Path

import pytest

import transfer.suite as suite_module
from pretrain.errors import ConfigError
from transfer.cli import main as transfer_main
from transfer.suite import evaluator_argv, load_suite, run_suite

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "suites" / "quickstart.yaml"
def small(tmp_path: Path) -> list[str]:
    """The quickstart suite, shrunk: 2 variants, 1 short epoch, two cheap evaluators; every
    run, record and feature cache under ``tmp_path``."""
    return [
        "variants={none: [model.head=none], mlp-2: [model.head=mlp, model.num_layers=2]}",
        "overrides=[train.epochs=1, data.limit=128, train.batch_size=32, train.progress=false, "
        f"model.hidden_dim=32, model.out_dim=16, data.cache_dir={tmp_path / 'cache'}]",
        "evaluators=['knn --tap all --k 5,10 --limit 200', 'linear --tap h,z --limit 200 "
        "--wd-grid 1e-4:1e2:5']",
        "tables=[{rows: head, cols: tap, metric: knn/top1@k10}]",
        f"output_dir={tmp_path}",
    ]


class Stop(Exception):
    pass


def test_a_stopped_suite_runs_only_the_missing_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = load_suite(QUICKSTART, small(tmp_path))
    real = suite_module.run_evaluator_line
    calls = {"n": 0}

    def stop_at_the_third(line: str, run_dir: Path, tags: dict[str, str]):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Stop  # the suite is killed while evaluating mlp-2's first cell
        return real(line, run_dir, tags)

    monkeypatch.setattr(suite_module, "run_evaluator_line", stop_at_the_third)
    with pytest.raises(Stop):
        run_suite(suite, progress=False)
    monkeypatch.setattr(suite_module, "run_evaluator_line", real)

    second = run_suite(suite, progress=False)
    assert second.pretrained == []  # both runs finished before the stop
    assert second.skipped == ["none/s0/pretrain", "none/s0/knn --tap all --k 5,10 --limit 200",
                              "none/s0/linear --tap h,z --limit 200 --wd-grid 1e-4:1e2:5",
                              "mlp-2/s0/pretrain"]
    assert len(second.evaluated) == 2 and all(k.startswith("mlp-2/") for k in second.evaluated)

    third = run_suite(suite, progress=False)
    assert third.pretrained == [] and third.evaluated == [] and len(third.skipped) == 6

    capsys.readouterr()
    code = transfer_main(["suite", str(QUICKSTART), *small(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "0 evaluations, 6 cells already done" in out
    table = out[out.index("| head"):]
    for label in ("none", "mlp-2", "| h", "head.0", "| z"):
        assert label in table
    assert "n=1" in table or "(n" in table or "1)" in table


def test_dry_run_and_bad_suites(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = transfer_main(["suite", str(QUICKSTART), f"output_dir={tmp_path}", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0 and out.count("[todo]") == 9  # 3 variants x (pretrain + 2 evaluators)
    code = transfer_main(["suite", str(QUICKSTART), "seed=[1]"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown config key seed; valid keys: name" in err
    with pytest.raises(ConfigError, match="at least one entry under variants"):
        load_suite(QUICKSTART, ["variants={}"])
    typo = load_suite(QUICKSTART, [*small(tmp_path), "evaluators=['knn --tap h', 'knnn --tap h']"])
    with pytest.raises(ConfigError, match="unknown evaluator 'knnn'; valid: detection, export"):
        run_suite(typo, progress=False)
    assert not list(tmp_path.rglob("checkpoint.pt"))  # refused before any pretraining


def test_evaluator_argv_places_the_run_and_tags() -> None:
    tags = {"suite": "s", "cell": "c"}
    assert evaluator_argv("knn --tap h", Path("r"), tags) == [
        "knn", "--tag", "suite=s", "--tag", "cell=c", "r", "--tap", "h"]
    assert evaluator_argv("detection --config x {run} train.max_iter=5", Path("r"), {}) == [
        "detection", "--config", "x", "r", "train.max_iter=5"]


@pytest.mark.slow
def test_quickstart_suite_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = transfer_main(["suite", str(QUICKSTART), f"output_dir={tmp_path}",
                          f"overrides=[data.cache_dir={tmp_path / 'cache'}]"])
    out = capsys.readouterr().out
    assert code == 0
    for label in ("none", "linear", "mlp-2", "head.0"):
        assert label in out
