"""A results.jsonl with a garbage line or a torn line still gives every good record to tables,
suites and the ``simclr-transfer table`` command, with a warning naming the file and line."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from subprocesses import child_env

from pretrain.jsonl import append_jsonl
from transfer.records import load_records
from transfer.suite import finished_cells


def knn_record(head: str, seed: int, top1: float, cell: str = "") -> dict[str, Any]:
    """A minimal k-NN record of a run whose head is labelled ``head``."""
    return {"evaluator": "knn", "tap": "h", "dataset": "cifar10", "seed": 0,
            "metrics": {"knn/top1@k200": top1}, "setup": {"head": head, "pretrain_seed": seed},
            "tags": {"cell": cell} if cell else {}}


def store_with_garbage(run_dir: Path) -> Path:
    """results.jsonl: two records, a garbage line, two more records."""
    run_dir.mkdir(parents=True)
    recs = [knn_record("linear", 0, 80.0, "a"), knn_record("linear", 1, 82.0, "b"),
            knn_record("mlp-2", 0, 90.0, "c"), knn_record("mlp-2", 1, 92.0, "d")]
    lines = [json.dumps(r) for r in recs]
    path = run_dir / "results.jsonl"
    path.write_text("\n".join([*lines[:2], "}garbage{", *lines[2:]]) + "\n")
    return path


def test_garbage_line_in_the_middle_keeps_the_other_records(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = store_with_garbage(tmp_path / "run")
    records = load_records([tmp_path])
    assert [r.metrics["knn/top1@k200"] for r in records] == [80.0, 82.0, 90.0, 92.0]
    assert finished_cells(path.parent) == {"a", "b", "c", "d"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all(w == f"warning: {path}: line 3 is not a JSON object; skipped"
                            for w in warnings)


def test_record_appended_after_a_torn_line_reaches_the_table(tmp_path: Path) -> None:
    path = tmp_path / "run" / "results.jsonl"
    path.parent.mkdir()
    path.write_text(json.dumps(knn_record("linear", 0, 80.0)) + '\n{"evaluator": "kn')  # killed
    append_jsonl(path, knn_record("mlp-2", 0, 90.0))
    assert [r.fields["head"] for r in load_records([path])] == ["linear", "mlp-2"]


def test_cli_table_skips_a_garbage_line_with_a_warning(tmp_path: Path) -> None:
    """``simclr-transfer table <folder>`` in its own process: the table of the good records on
    stdout, one warning on stderr, exit 0."""
    path = store_with_garbage(tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "transfer.cli", "table", str(tmp_path)],
                          capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| linear | 81.00 ± 1.41 (n=2) |" in proc.stdout
    assert "| mlp-2 | **91.00 ± 1.41** (n=2) |" in proc.stdout
    assert proc.stderr == f"warning: {path}: line 3 is not a JSON object; skipped\n"
