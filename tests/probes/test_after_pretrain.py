"""Probes on a run directory written by a real (one-epoch) ``simclr-pretrain`` run."""

from __future__ import annotations

import json
from pathlib import Path

from pretrain.cli import main as pretrain_main
from pretrain.jsonl import read_jsonl
from transfer.cli import main

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def test_probes_read_a_freshly_pretrained_run(tmp_path, capsys):
    rc = pretrain_main(["--config", str(CONFIG), "data.limit=256", "train.epochs=1",
                        "train.batch_size=64", f"train.run_dir={tmp_path}", "train.name=r",
                        "train.device=cpu", "train.progress=false"])
    assert rc == 0, capsys.readouterr().err
    run = tmp_path / "r"
    capsys.readouterr()
    for argv in (["knn", "--k", "10,200"], ["linear", "--wd-grid", "1e-2:1e2:3"],
                 ["quality", "--samples", "64", "--rankme-samples", "256"]):
        assert main([argv[0], str(run), "--tap", "h,z", "--limit", "400", "--json",
                     "--cache-dir", str(tmp_path / "cache"), *argv[1:]]) == 0
        assert {k.split(":")[0] for k in json.loads(capsys.readouterr().out)} == {"h", "z"}
    records = read_jsonl(run / "results.jsonl")
    assert [r["evaluator"] for r in records] == ["knn"] * 2 + ["linear"] * 2 + ["quality"] * 2
    setup = records[0]["setup"]
    assert (setup["epochs"], setup["checkpoint_epoch"], setup["head"], setup["head_depth"]) == (
        1, 1, "mlp-2", 2)
    assert setup["pretrain_dataset"] == "digits" and setup["hidden_dim"] == 256
    assert setup["taps"] == ["h", "head.0", "z"] and setup["image_size"] == 16
    assert setup["mean"] == [0.5, 0.5, 0.5]  # the digits preset the run was trained with
