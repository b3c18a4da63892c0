"""``bench/gpu_check.py`` on the CPU: the whole script at smoke size, and its stage runner (a
failing stage is reported in its row and the next one still runs; a spent budget skips)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from subprocesses import REPO, child_env

SCRIPT = REPO / "bench" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_runs_every_stage_and_prints_one_table(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--smoke", "--json",
                           str(out), "--cache-dir", str(tmp_path / "cache")],
                          cwd=tmp_path, env=child_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["header"][0].startswith("command: python bench/gpu_check.py --device cpu")
    assert result["header"][1].startswith("device: cpu; torch ")
    stages = [r["stage"] for r in result["rows"] if r["stage"]]
    assert stages == ["1 pytest -m gpu", "2 throughput", "3 linear probe", "4 time to accuracy"]
    assert not [r for r in result["rows"] if r["result"] in ("FAILED", "skipped")], result["rows"]
    details = {r["result"]: r["detail"] for r in result["rows"]}
    assert "tests collected" in details["ok"]
    assert details["(b) device pipeline"].endswith("pairs/s") and "b/a" in details["ratios"]
    assert "sklearn/ours" in details["ratio"] and "k-NN" not in details["ratio"]
    assert "after" in details["k-NN top-1"]
    assert "| stage | result | detail | s |" in proc.stdout  # the Markdown table


def test_a_failing_stage_is_a_row_and_the_next_still_runs() -> None:
    gpu_check = _module()
    stages = gpu_check.Stages(budget_s=100.0)

    def broken(left: float) -> list:
        raise RuntimeError("CUDA error: out of memory\nmore text")

    stages.run("first", broken, min_s=1)
    stages.run("second", lambda left: [("ok", f"{left:.0f} s were left")], min_s=1)
    stages.run("third", lambda left: [("ok", "never")], min_s=1e6)
    rows = stages.rows
    assert rows[0]["stage"] == "first" and rows[0]["result"] == "FAILED"
    assert rows[0]["detail"] == "RuntimeError: CUDA error: out of memory"
    assert rows[1]["stage"] == "second" and rows[1]["result"] == "ok"
    assert rows[2]["stage"] == "third" and rows[2]["result"] == "skipped"
    assert "budget spent" in rows[2]["detail"]
    assert stages.table().splitlines()[2].startswith("| first | FAILED | RuntimeError")
