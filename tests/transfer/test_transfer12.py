"""The transfer benchmark suite: datasets by name in one suite, absent ones skipped, and its
dataset x head table with a mean column (SimCLR Table 8's layout, ssl-transfer's average)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pretrain.errors import ConfigError, UserError
from probes.commands import FewshotOptions, KnnOptions, LinearOptions, fewshot, knn, linear
from transfer.cli import main as transfer_main
from transfer.finetune.command import FinetuneOptions, finetune
from transfer.records import load_records
from transfer.suite import check_suite, load_suite
from transfer.tables import MEAN_LABEL, TableRequest, make_table

ROOT = Path(__file__).resolve().parents[2]
TRANSFER12 = ROOT / "configs" / "suites" / "transfer12.yaml"
KORNBLITH_ORDER = ["food101", "cifar10", "cifar100", "birdsnap", "sun397", "cars", "aircraft",
                   "voc2007", "dtd", "pets", "caltech101", "flowers102"]


def write_split_folder(root: Path, splits: dict[str, int], classes: int, seed: int) -> Path:
    """``root/<split>/<class>/*.png``: ``splits[split]`` images per class, each class a colour
    (so frozen features of an untrained network still separate them) plus noise."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (classes, 3))
    for split, per_class in splits.items():
        for c in range(classes):
            folder = root / split / f"class_{c}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(palette[c] + rng.normal(0, 25, (20, 20, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


def test_the_transfer12_suite_lists_the_12_datasets_and_checks() -> None:
    suite = load_suite(TRANSFER12)
    assert suite.datasets == KORNBLITH_ORDER
    check_suite(suite)  # every line parses for every dataset, the table names known fields
    lines = suite.evaluator_lines()
    assert [d for _, d in lines] == KORNBLITH_ORDER
    assert lines[7] == ("linear --tap h,z --dataset voc2007", "voc2007")
    assert suite.tables[0].mean_column and suite.tables[0].cols == "dataset"


def test_dataset_slot_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match="lists no datasets"):
        load_suite(TRANSFER12, ["datasets=[]"])
    with pytest.raises(ConfigError, match="no evaluator line has"):
        load_suite(TRANSFER12, ["evaluators=['knn --tap h']"])


def test_suite_on_two_tiny_datasets_skips_the_absent_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two datasets read end to end (a pre-split Caltech-101-style copy, scored by mean
    per-class accuracy, and a train/val image folder, scored by top-1), one absent dataset
    (food101: skipped with one line), one table of both with its mean column."""
    monkeypatch.setenv("SIMCLR_DATA_DIR", str(tmp_path / "empty"))
    cal = write_split_folder(tmp_path / "cal", {"train": 10, "test": 6}, classes=3, seed=0)
    tiny = write_split_folder(tmp_path / "tiny", {"train": 10, "val": 6}, classes=4, seed=1)
    overrides = [
        f"base_config={ROOT / 'configs' / 'quickstart.yaml'}",
        "variants={none: [model.head=none], mlp-2: [model.head=mlp, model.num_layers=2]}",
        "seeds=[0]",
        "overrides=[train.epochs=1, data.limit=128, train.batch_size=32, train.progress=false, "
        f"model.hidden_dim=32, model.out_dim=16, data.cache_dir={tmp_path / 'cache'}]",
        f"datasets=[food101, 'caltech101:{cal}', 'imagefolder:{tiny}']",
        "evaluators=['linear --tap h,z --wd-grid 1e-3:1e1:3 --dataset {dataset}', "
        "'knn --tap h --k 3,5 --dataset {dataset}']",
        "tables=[{rows: 'head, tap', cols: dataset, metric: transfer/score, "
        "filter: [evaluator=linear], mean_column: true}]",
        f"output_dir={tmp_path / 'runs'}",
    ]
    code = transfer_main(["suite", str(TRANSFER12), *overrides])
    out = capsys.readouterr().out
    assert code == 0
    skips = [line for line in out.splitlines() if "skipping food101" in line]
    assert len(skips) == 1 and "food-101" in skips[0]  # once, saying what was looked for
    assert "4 cells of absent datasets skipped" in out  # 2 variants x 2 lines

    records = load_records([tmp_path / "runs"])
    by = {(r.fields["dataset"], r.fields["evaluator"], r.fields["tap"], r.fields["head"]): r
          for r in records}
    assert len(by) == 2 * 2 * 2 + 2 * 2  # linear at h, z and knn at h, per dataset and head
    cal_rec = by[("caltech101:cal", "linear", "h", "mlp-2")]
    assert cal_rec.fields["settings.score"] == "mean_per_class"
    assert cal_rec.metrics["transfer/score"] == cal_rec.metrics["linear/mean_per_class"]
    assert cal_rec.fields["settings.val"] == "holdout"  # no val split: a 20% hold-out of train
    tiny_rec = by[("imagefolder:tiny", "knn", "h", "none")]
    assert tiny_rec.metrics["transfer/score"] == tiny_rec.metrics["knn/top1@k5"]
    assert tiny_rec.fields["settings.test_split"] == "val"

    table_text = out[out.index("| head"):]
    header = table_text.splitlines()[0]
    assert "caltech101:cal" in header and "imagefolder:tiny" in header
    assert header.rstrip(" |").endswith(MEAN_LABEL)
    assert "food101" not in table_text.split("\n\n")[0]


def flat(dataset: str, head: str, seed: int, score: float) -> dict[str, Any]:
    return {"evaluator": "linear", "tap": "h", "dataset": dataset, "splits": {"test": 10},
            "metrics": {"transfer/score": score}, "settings": {}, "seed": 0,
            "setup": {"head": head, "run_dir": f"/runs/{head}_s{seed}", "pretrain_seed": seed},
            "time": "2026-01-01T00:00:00+00:00", "wall_s": 1.0, "device": "cpu",
            "hardware": "cpu", "code_version": "0"}


def test_mean_column_averages_each_seed_over_the_datasets(tmp_path: Path) -> None:
    rows = [flat("a", "mlp-2", 0, 80.0), flat("b", "mlp-2", 0, 60.0),
            flat("a", "mlp-2", 1, 90.0), flat("b", "mlp-2", 1, 70.0),
            flat("a", "none", 0, 50.0)]  # none lacks dataset b: no comparable mean
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    table, _ = make_table(load_records([path]), TableRequest(
        rows=["head"], cols=["dataset"], metrics=["transfer/score"], mean_column=True))
    assert table.cols[-1] == (MEAN_LABEL,)
    mean = table.cell(("mlp-2",), (MEAN_LABEL,))
    assert mean is not None
    assert sorted(mean.values.values()) == [70.0, 80.0]  # per seed: (80+60)/2, (90+70)/2
    m, sd, n = mean.stats
    assert (m, n) == (75.0, 2) and math.isclose(sd, math.sqrt(50.0))
    assert table.cell(("none",), (MEAN_LABEL,)) is None
    assert "none for none" in table.caption


def write_voc(root: Path, seed: int = 0) -> Path:
    """A VOC2007 tree (``VOCdevkit/VOC2007``) whose images show their classes: dog adds red,
    cat green, car blue; one difficult-only object per split."""
    rng = np.random.default_rng(seed)
    home = root / "VOCdevkit" / "VOC2007"
    colour = {"dog": (120, 0, 0), "cat": (0, 120, 0), "car": (0, 0, 120)}
    number = 0
    for split, count in {"train": 16, "val": 8, "test": 10}.items():
        ids = []
        for i in range(count):
            number += 1
            image_id = f"{number:06d}"
            ids.append(image_id)
            present = [c for c in colour if rng.random() < 0.5] or ["dog"]
            objects = "".join(f"<object><name>{c}</name><difficult>0</difficult></object>"
                              for c in present)
            if i == 0:
                objects += "<object><name>person</name><difficult>1</difficult></object>"
            (home / "Annotations").mkdir(parents=True, exist_ok=True)
            (home / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><filename>{image_id}.jpg</filename>{objects}</annotation>")
            pixels = sum(np.array(colour[c], float) for c in present) + rng.normal(60, 10, (16, 16, 3))
            (home / "JPEGImages").mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                home / "JPEGImages" / f"{image_id}.jpg")
        (home / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (home / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


def test_voc2007_probes_report_11_point_map_and_other_evaluators_refuse_it(
    tiny_run_dir: Path, tmp_path: Path
) -> None:
    root = str(write_voc(tmp_path / "voc"))
    common = {"run": str(tiny_run_dir), "dataset": "voc2007", "data_root": root, "tap": "h",
              "cache_dir": str(tmp_path / "cache"), "json": True}
    got = linear(LinearOptions(**common, wd_grid=[1e-2, 1.0, 100.0]))
    assert 0 < got["h:linear/map11"] <= 100 and got["h:transfer/score"] == got["h:linear/map11"]
    got = knn(KnnOptions(**common, k=[3, 5]))
    assert got["h:transfer/score"] == got["h:knn/map11@k5"]
    records = [json.loads(line) for line in (tiny_run_dir / "results.jsonl").open()]
    lin = next(r for r in records if r["evaluator"] == "linear")
    assert lin["settings"]["score"] == "map11" and lin["settings"]["select"] == "map11"
    assert lin["settings"]["val"] == "val"  # VOC's official val split, not a hold-out
    assert lin["splits"] == {"train": 16, "val": 8, "test": 10}
    with pytest.raises(UserError, match="multi-label"):
        fewshot(FewshotOptions(**common))
    with pytest.raises(UserError, match="multi-label"):
        finetune(FinetuneOptions(**common, steps=1))


def test_benchmark_datasets_sort_in_the_papers_order() -> None:
    from transfer.tables import sort_key

    names = ["imagefolder:tiny", "flowers102", "caltech101:cal", "food101", "cifar10", "dtd"]
    ordered = sorted(names, key=lambda v: sort_key("dataset", v))
    assert ordered == ["food101", "cifar10", "dtd", "caltech101:cal", "flowers102",
                       "imagefolder:tiny"]


def test_split_and_metric_rules_on_the_real_subsets(
    tiny_run_dir: Path, tmp_path: Path, shared_data: Path
) -> None:
    """The shared Caltech-101 subset (train/test, read as caltech101:) and Tiny-ImageNet subset
    (train/val, read as imagefolder:): which split is tested once, which selects, which metric."""
    from pretrain.data import stratified_holdout
    from probes.session import ProbeOptions, ProbeSession

    def session(dataset: str) -> ProbeSession:
        return ProbeSession.open(ProbeOptions(run=str(tiny_run_dir), dataset=dataset,
                                              cache_dir=str(tmp_path / "cache")))

    cal = session(f"caltech101:{shared_data / 'cls_caltech101_subset.tar.xz'}")
    assert cal.test_split() == "test" and cal.val_split("auto", "test") == "holdout"
    assert cal.info("test").metric == "mean_per_class"
    assert cal.display_name == "caltech101:cls_caltech101_subset"
    train = cal.dataset("train")
    assert train is not None and len(train.classes) == 101 and len(train) == 1515
    _, val_idx = stratified_holdout(train.targets, 0.2, seed=0)
    assert np.bincount(np.asarray(train.targets)[val_idx]).tolist() == [3] * 101  # 20% of 15

    tiny = session(f"imagefolder:{shared_data / 'cls_tinyimagenet200_subset.tar.xz'}")
    assert tiny.test_split() == "val"  # no test split: the official val is tested once
    assert tiny.val_split("auto", "val") == "holdout"  # so selection holds out 20% of train
    assert tiny.info("val").metric == "top1" and not tiny.info("val").multilabel
    train, test = tiny.dataset("train"), tiny.dataset("val")
    assert train is not None and test is not None
    assert (len(train), len(test), len(train.classes)) == (18000, 10000, 200)
    assert not set(train.files or []) & set(test.files or [])


def test_absence_looks_where_the_line_points(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             tiny_run_dir: Path) -> None:
    """A dataset found only under a line's --data-root is present for that line."""
    from benchmark_trees import build_pets

    from transfer.suite import absence, line_data_location

    monkeypatch.setenv("SIMCLR_DATA_DIR", str(tmp_path / "empty"))
    build_pets(tmp_path / "data")
    line = f"linear --tap h --dataset pets --data-root {tmp_path / 'data'}"
    where = line_data_location(line, tiny_run_dir, str(tmp_path / "cache"))
    assert where == (str(tmp_path / "data"), str(tmp_path / "cache"))
    assert absence("pets", *where) == ""
    missing = absence("pets", "", str(tmp_path / "cache"))
    assert missing.startswith("pets not found") and "oxford-iiit-pet" in missing
    assert absence(f"imagefolder:{tmp_path / 'nope'}", "", "") == f"{tmp_path / 'nope'} does not exist"


def test_finetuning_selects_on_and_reports_the_datasets_metric(
    tiny_run_dir: Path, tmp_path: Path
) -> None:
    """On a Caltech-101-style copy (protocol metric: mean per-class accuracy) fine-tuning picks
    its learning rate by that metric on val and writes it as transfer/score."""
    cal = write_split_folder(tmp_path / "cal", {"train": 10, "test": 6}, classes=3, seed=2)
    finetune(FinetuneOptions(run=str(tiny_run_dir), dataset=f"caltech101:{cal}",
                             output_dir=str(tmp_path / "out"), protocol="transfer",
                             label_fraction=[1.0], tap="h", lr_grid=[1e-3, 1e-2], wd_grid=[0.0],
                             steps=2, progress=False, json=True, device="cpu",
                             cache_dir=str(tmp_path / "cache")))
    (rec,) = [json.loads(line) for line in (tmp_path / "out" / "results.jsonl").open()]
    assert rec["settings"]["select"] == "mean_per_class" and rec["settings"]["score"] == "mean_per_class"
    assert rec["metrics"]["transfer/score"] == rec["metrics"]["finetune/mean_per_class"]
    curve = rec["settings"]["train"]["val_curve"]
    assert len(curve) == 2 and all({"lr", "mean_per_class"} <= set(c) for c in curve)
