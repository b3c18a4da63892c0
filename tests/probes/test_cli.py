"""``simclr-transfer linear|knn|retrieval|quality|fewshot`` end to end on a tiny digits run.

Every probe runs at taps h and z on a run directory in simclr-pretrain's format, on the CPU,
and must append one well-formed record per (tap, setting) to the run's results.jsonl.
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from pretrain.encoders import build_encoder
from pretrain.jsonl import read_jsonl
from probes.registry import EVALUATORS
from transfer.cli import main

SETUP_KEYS = {"checkpoint", "checkpoint_hash", "source", "encoder", "head", "head_kind",
              "head_depth", "num_layers", "taps", "mean", "std", "image_size", "epochs",
              "batch_size", "pretrain_seed", "pretrain_dataset", "checkpoint_epoch", "run_dir"}
RECORD_KEYS = {"evaluator", "tap", "dataset", "splits", "metrics", "settings", "setup", "seed",
               "time", "wall_s", "device", "hardware", "code_version"}  # + "tags" when tagged

PROBES = {
    "linear": (["--wd-grid", "1e-2:1e2:3"], ["linear/top1", "linear/top5",
                                              "linear/mean_per_class", "linear/wd"]),
    "knn": (["--k", "5,20,5000"], ["knn/top1@k5", "knn/top1@k20", "knn/top5@k1347"]),  # 5000 > train
    "retrieval": (["--mode", "within,class-disjoint"], ["retrieval/R@1", "retrieval/R@8",
                                                        "retrieval/P@1", "retrieval/mAP@R",
                                                        "retrieval/mAP"]),
    "quality": (["--samples", "64", "--rankme-samples", "300"],
                ["quality/rankme", "quality/alignment", "quality/uniformity"]),
    "fewshot": (["--episodes", "20", "--shots", "1,5"], ["fewshot/5w1s", "fewshot/5w5s_ci95"]),
}


def run_cli(args, capsys):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("probe", list(PROBES))
def test_probe_end_to_end_at_h_and_z(probe, digits_run, feature_cache, capsys):
    extra, metric_keys = PROBES[probe]
    before = len(read_jsonl(digits_run / "results.jsonl"))
    rc, out, err = run_cli([probe, digits_run, "--tap", "h,z", "--cache-dir", feature_cache,
                            "--json", *extra], capsys)
    assert rc == 0, err
    result = json.loads(out)
    records = read_jsonl(digits_run / "results.jsonl")[before:]
    settings_per_tap = 2 if probe == "retrieval" else 1
    assert [r["tap"] for r in records] == ["h"] * settings_per_tap + ["z"] * settings_per_tap
    for rec in records:
        assert set(rec) == RECORD_KEYS
        assert rec["evaluator"] == probe and rec["dataset"] == "digits"
        assert SETUP_KEYS <= set(rec["setup"])
        assert rec["setup"]["encoder"] == "small_cnn" and rec["setup"]["head"] == "mlp-2"
        assert rec["setup"]["checkpoint_epoch"] == 1 and rec["device"] == "cpu"
        for key in metric_keys:
            assert key in rec["metrics"], key
            assert f"{rec['tap']}:{key}" in result or any(k.startswith(f"{rec['tap']}:{key}@")
                                                          for k in result)
    if probe == "linear":  # honest split sizes: train + val = digits train, test separate
        splits = records[0]["splits"]
        assert splits["train"] + splits["val"] == 1347 and splits["test"] == 450
        assert records[0]["settings"]["val"] == "holdout"
    if probe == "knn":
        assert records[0]["settings"]["k_effective"] == [5, 20, 1347]


def test_python_api_needs_no_namespace_and_matches_the_cli(digits_run, feature_cache, capsys):
    from probes.commands import KnnOptions, knn

    got = knn(KnnOptions(run=str(digits_run), tap="h,z", k=[10], cache_dir=str(feature_cache),
                         json=True))
    rc, out, _ = run_cli(["knn", digits_run, "--tap", "h,z", "--k", "10", "--cache-dir",
                          feature_cache, "--json"], capsys)
    assert rc == 0 and got == json.loads(out)
    assert set(got) == {f"{t}:knn/{m}@k10" for t in ("h", "z")
                        for m in ("top1", "top5", "mean_per_class")} | {"h:transfer/score",
                                                                        "z:transfer/score"}
    assert got["h:transfer/score"] == got["h:knn/top1@k10"]  # digits' protocol metric: top-1
    assert KnnOptions(run="x").k == [10, 20, 100, 200]  # the CLI's defaults, declared once
    with pytest.raises(TypeError):
        KnnOptions(run="x", kk=[3])  # a mistyped option is an error, not ignored


def test_table_is_printed_without_json(digits_run, feature_cache, capsys):
    rc, out, _ = run_cli(["knn", digits_run, "--tap", "all", "--cache-dir", feature_cache,
                          "--k", "10", "--temperature", "0.07,0.1"], capsys)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "knn on digits"
    assert lines[1].split()[:4] == ["tap", "setting", "top1@k10", "top5@k10"]
    assert [ln.split()[:2] for ln in lines[2:8]] == [
        [t, s] for t in ("h", "head.0", "z") for s in ("t0.07", "t0.1")]


def test_corrupt_cache_is_rebuilt_through_the_cli(digits_run, feature_cache, capsys, caplog):
    args = ["knn", digits_run, "--tap", "h", "--cache-dir", feature_cache, "--k", "10", "--json"]
    rc, first, _ = run_cli(args, capsys)
    assert rc == 0
    for path in feature_cache.rglob("h.pt"):
        path.write_bytes(b"\0" * 100)
    with caplog.at_level("WARNING", logger="simclr_transfer.probes"):
        rc, second, _ = run_cli(args, capsys)
    assert rc == 0
    assert caplog.text.count("corrupt feature cache") == 2  # train and test files
    assert json.loads(second) == json.loads(first)


def test_sgd_protocol_trains_a_linear_layer_on_a_frozen_encoder(digits_run, tmp_path, capsys):
    before = (digits_run / "checkpoint.pt").read_bytes()
    rc, out, err = run_cli(["linear", digits_run, "--protocol", "sgd", "--epochs", "1",
                            "--limit", "128", "--sgd-batch-size", "32", "--tap", "h,z",
                            "--cache-dir", tmp_path, "--json"], capsys)
    assert rc == 0, err
    result = json.loads(out)
    assert {"h:linear/top1", "z:linear/top1", "z:linear/mean_per_class"} <= set(result)
    rec = read_jsonl(digits_run / "results.jsonl")[-1]
    assert rec["settings"]["protocol"] == "sgd" and rec["splits"] == {"train": 128, "test": 128}
    assert (digits_run / "checkpoint.pt").read_bytes() == before


def test_tags_are_stored_in_every_record(digits_run, feature_cache, capsys):
    rc, _, err = run_cli(["knn", "--tag", "suite=quick", "--tag", "cell=mlp/s0/knn",
                          digits_run, "--tap", "h,z", "--cache-dir", feature_cache, "--k", "10"],
                         capsys)
    assert rc == 0, err
    records = read_jsonl(digits_run / "results.jsonl")[-2:]
    assert [r["tags"] for r in records] == [{"suite": "quick", "cell": "mlp/s0/knn"}] * 2
    rc, _, err = run_cli(["knn", digits_run, "--tag", "novalue"], capsys)
    assert rc == 2 and "KEY=VALUE" in err


def test_unknown_tap_lists_the_valid_ones(digits_run, capsys):
    rc, _, err = run_cli(["knn", digits_run, "--tap", "h,head.7"], capsys)
    assert rc == 2
    assert err.strip() == "error: unknown tap 'head.7'; valid taps: h, head.0, z, all"


@pytest.mark.parametrize("probe", list(PROBES))
def test_missing_run_dir_is_a_one_line_error(probe, tmp_path, capsys):
    rc, _, err = run_cli([probe, tmp_path / "no_such_run"], capsys)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "no_such_run" in err


def test_external_state_dict_writes_records_beside_it(tmp_path, feature_cache, capsys, caplog):
    torch.manual_seed(0)
    net = build_encoder("small_cnn")
    state = {f"module.{k}": v for k, v in net.state_dict().items()}  # a DataParallel save
    state["fc.weight"] = torch.zeros(10, 256)
    path = tmp_path / "encoder.pth"
    torch.save(state, path)
    rc, _, err = run_cli(["knn", path, "--encoder", "small_cnn", "--k", "10"], capsys)
    assert rc == 2 and "--dataset" in err
    with caplog.at_level("WARNING", logger="simclr_transfer.probes"):
        rc, _, err = run_cli(["knn", path, "--encoder", "small_cnn", "--dataset", "digits",
                              "--cache-dir", feature_cache, "--k", "10", "--tap", "all"], capsys)
    assert "1 checkpoint keys were not used: fc.weight" in caplog.text
    assert rc == 0, err
    records = read_jsonl(tmp_path / "encoder_results" / "results.jsonl")
    assert [r["tap"] for r in records] == ["h"]
    assert records[0]["setup"]["source"] == "torchvision"
    assert records[0]["setup"]["unused_keys"] == 1


PLUGIN = '''
from probes.options import from_args
from probes.registry import Evaluator
from probes.session import ProbeOptions, ProbeSession, add_common_arguments


def add_arguments(parser):
    add_common_arguments(parser)
    parser.add_argument("--split", default="test")


def run(args):
    session = ProbeSession.open(from_args(ProbeOptions, args))
    data = session.features(args.split)
    for tap in session.taps:
        norm = float(data.feats[tap].norm(dim=1).mean())
        session.record("featnorm", tap, {"featnorm/mean": norm}, {"split": args.split},
                       {args.split: len(data)}, wall_s=0.0)
    return session.finish()


EVALUATOR = Evaluator("featnorm", "mean L2 norm of the features (demo plugin)",
                      add_arguments, run)
'''


def test_third_party_evaluator_via_entry_point(digits_run, feature_cache, tmp_path, capsys,
                                               monkeypatch):
    site = tmp_path / "site"
    dist = site / "simclr_featnorm-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: simclr-featnorm\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""\
        [simclr_transfer.evaluators]
        featnorm = simclr_featnorm:EVALUATOR
        """))
    (site / "simclr_featnorm.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(EVALUATORS, "_entries", dict(EVALUATORS._entries))  # undone afterwards
    monkeypatch.delitem(__import__("sys").modules, "simclr_featnorm", raising=False)

    rc, out, _ = run_cli(["list"], capsys)
    assert rc == 0
    assert any(ln.split()[:2] == ["featnorm", "evaluator"] for ln in out.splitlines())
    rc, out, err = run_cli(["featnorm", digits_run, "--tap", "h,z", "--cache-dir",
                            feature_cache, "--json"], capsys)
    assert rc == 0, err
    result = json.loads(out)
    assert set(result) == {"h:featnorm/mean", "z:featnorm/mean"}
    rec = read_jsonl(digits_run / "results.jsonl")[-1]
    assert rec["evaluator"] == "featnorm" and rec["tap"] == "z" and rec["splits"] == {"test": 450}
