"""DDP under torchrun on the CPU (gloo): two processes, one record, predictions gathered."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from detection_helpers import FAST, bccd_root, make_voc, voc_overrides
from subprocesses import child_env, torchrun


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path: Path, shared_data: Path, data_cache: Path) -> None:
    voc = make_voc(tmp_path / "Cells", bccd_root(shared_data, data_cache), {
        "train": ["BloodImage_00001", "BloodImage_00003"],
        "test": ["BloodImage_00007", "BloodImage_00008", "BloodImage_00009"]})
    out = tmp_path / "out"
    cmd = torchrun(2, "-m", "transfer.cli", "detection", "--config", "bccd_r18_fpn",
                   "--output-dir", str(out), "random", "model.encoder=resnet18", *FAST,
                   "train.device=cpu", *voc_overrides(voc, data_cache))
    done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 1  # only rank 0 writes
    record = records[0]
    assert record["settings"]["world_size"] == 2
    assert record["splits"]["test"] == 3
    assert record["settings"]["predicted_images"] == 3  # 2 + 1 on two ranks, all gathered
    assert math.isfinite(record["metrics"]["det/voc07_AP50"])
