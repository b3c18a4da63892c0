"""The detection train step on CUDA (bf16 autocast by default), through the real command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from detection_helpers import FAST, bccd_root, make_voc, voc_overrides

from transfer.cli import main

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_detection_fine_tunes_on_cuda_in_bf16(tmp_path: Path, shared_data: Path,
                                              data_cache: Path) -> None:
    root = bccd_root(shared_data, data_cache)
    ids = (root / "VOCdevkit/BCCD/ImageSets/Main/train.txt").read_text().split()
    folder = make_voc(tmp_path / "Cells", root, {"train": ids[:8], "test": ids[8:12]})
    out = tmp_path / "out"
    assert main(["detection", "--config", "bccd_r18_fpn", "--output-dir", str(out), "random",
                 "model.encoder=resnet18", *FAST, *voc_overrides(folder, data_cache),
                 "train.device=cuda", "train.max_iter=4"]) == 0
    record = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
    assert record["device"] == "cuda" and record["settings"]["bf16"] is True
    assert np.isfinite(record["metrics"]["det/voc07_AP"])
    assert np.isfinite(record["settings"]["train"]["final_loss"])
