"""Probes under torchrun: sharded feature extraction gathers exactly the single-process features."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from subprocesses import child_env, torchrun

from pretrain.jsonl import read_jsonl
from transfer.cli import main as transfer_main


def test_two_rank_knn_equals_one_process(tiny_run_dir: Path, tmp_path: Path) -> None:
    # 151 images: the two shards differ in length, so padding and trimming are exercised
    common = ["knn", str(tiny_run_dir), "--tap", "h,z", "--k", "5,10", "--limit", "151",
              "--no-cache", "--device", "cpu", "--json"]
    proc = subprocess.run(
        torchrun(2, "-m", "transfer.cli", *common, "--output-dir", str(tmp_path / "two")),
        env=child_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert transfer_main([*common, "--output-dir", str(tmp_path / "one")]) == 0
    two = read_jsonl(tmp_path / "two" / "results.jsonl")
    one = read_jsonl(tmp_path / "one" / "results.jsonl")
    assert len(two) == len(one) == 2  # one record per tap, written by rank 0 only
    for a, b in zip(two, one, strict=True):
        assert a["tap"] == b["tap"] and a["splits"] == b["splits"]
        assert a["metrics"] == pytest.approx(b["metrics"], abs=1e-6)
