"""``--engine detectron2`` end to end, on detectron2's own code (the vendored sources in
``../shared/vendor/detectron2-src``, or an installed detectron2).

* The engine: six detectron2 cells in one child process (ResNet-18/50, FPN/C4, a second seed,
  the same seed twice), started as a user starts it but with tensorboard unimportable; their
  records, logs and weights reports are checked.
* The weights: our exported pickle through detectron2's ``DetectionCheckpointer`` gives
  detectron2 backbones whose stage outputs equal torchvision's bit for bit.
* The metrics: the same detectron2 ``Instances``, converted by the engine, scored by our
  metrics and by detectron2's ``COCOEvaluator`` (official pycocotools path).
* The options the engine cannot honour are refused with one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
import yaml
from conftest import make_run_dir
from detection_helpers import bccd_root, coco_root, make_voc, single_thread  # noqa: F401
from subprocesses import child_env

from transfer.cli import main
from transfer.detection.config import DataConfig, DatasetSpec
from transfer.detection.datasets import load_detection_data
from transfer.detection.weights import BackboneSource
from transfer.suite import finished_cells

TINY = [  # seconds per cell on a CPU: 128 px, 2 iterations, few ROIs and proposals
    "model.min_size_train=[128,160]", "model.min_size_test=128", "model.max_size=192",
    "model.roi_batch_size=16", "model.proposals_test=20", "train.batch_size=2",
    "train.max_iter=2", "train.warmup_iters=1", "train.steps=[1]", "train.log_every=1",
    "train.checkpoint_every=1000", "train.progress=false", "data.num_workers=0",
    "eval.batch_size=4",
]
CHILD = """
import json, sys
sys.modules["tensorboard"] = None  # as where tensorboard is not installed
from transfer.cli import main
cells = json.loads(open(sys.argv[1]).read())
json.dump({name: main(args) for name, args in cells.items()}, open(sys.argv[2], "w"))
"""


def _resnet_file(path: Path, arch: str, seed: int = 0) -> Path:
    """A torchvision ResNet state dict with random weights and random BN statistics (so a
    swapped or dropped norm changes every output)."""
    torch.manual_seed(seed)
    net = getattr(torchvision.models, arch)()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def cells(tmp_path_factory: pytest.TempPathFactory, shared_data: Path, data_cache: Path,
          detectron2_pythonpath: list[Path]) -> dict[str, Any]:
    """Run every cell in one child process; returns {name: (exit status, records, arguments,
    the child's output)}."""
    base = tmp_path_factory.mktemp("d2_engine")
    root = bccd_root(shared_data, data_cache)
    ids = {s: (root / "VOCdevkit/BCCD/ImageSets/Main" / f"{s}.txt").read_text().split()
           for s in ("train", "test")}
    voc = make_voc(base / "Cells", root, {"train": ids["train"][:8], "test": ids["test"][:6]})
    data = [f"data.train=[{{format: voc, root: '{voc}', split: train}}]",
            f"data.test={{format: voc, root: '{voc}', split: test}}",
            f"data.cache_dir={data_cache}", "data.classes=[RBC, WBC, Platelets]"]
    r18, r50 = _resnet_file(base / "r18.pth", "resnet18"), _resnet_file(base / "r50.pth", "resnet50")
    run = make_run_dir(base / "run", encoder="resnet18")  # a pretraining run as the source

    def cell(name: str, source: Path, *extra: str, seeds: int = 1) -> list[str]:
        return ["detection", "--config", "bccd_r18_fpn", "--engine", "detectron2", "--seeds",
                str(seeds), "--output-dir", str(base / name), "--tag", f"cell={name}",
                str(source), *TINY, *data, *extra]

    spec = {
        "r18_fpn": cell("r18_fpn", r18, seeds=2),  # seeds 0 and 1
        "r18_fpn_again": cell("r18_fpn_again", r18),  # seed 0 again, same process
        "r18_c4": cell("r18_c4", run, "model.arch=c4", "data.limit_train=6", "data.limit_test=4",
                       "eval.batch_size=2", "data.num_workers=2",
                       "model.pixel_mean=[0.5,0.4,0.3]", "model.pixel_std=[0.2,0.2,0.25]"),
        "r50_fpn": cell("r50_fpn", r50),
        "r50_c4": cell("r50_c4", r50, "model.arch=c4", "model.res5_extra_norm=true"),
    }
    (base / "cells.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, "-c", CHILD, str(base / "cells.json"),
                           str(base / "status.json")],
                          env=child_env(*detectron2_pythonpath, OMP_NUM_THREADS="2"),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    status = json.loads((base / "status.json").read_text())
    out = {}
    for name in spec:  # a run's records go into the run, a file's into --output-dir
        results = (run if name == "r18_c4" else base / name) / "results.jsonl"
        records = [json.loads(line) for line in results.read_text().splitlines()] \
            if results.is_file() else []
        out[name] = (status[name], records, spec[name], proc.stdout + proc.stderr)
    return out


def _metrics(record: dict) -> dict[str, float]:
    return {k: v for k, v in record["metrics"].items() if k.startswith("det/")}


@pytest.mark.parametrize("name", ["r18_fpn", "r18_c4", "r50_fpn", "r50_c4"])
def test_each_variant_trains_loads_every_backbone_key_and_records(cells: dict, name: str) -> None:
    status, records, _, log = cells[name]
    assert status == 0, log[-3000:]
    record = records[0]
    s = record["settings"]
    assert s["engine"] == "detectron2" and record["evaluator"] == "detection"
    assert record["tags"] == {"cell": name}
    assert s["missing_keys"] == [], s["missing_keys"][:5]
    assert s["loaded_tensors"] == {"r18": 100, "r50": 265}[name[:3]]  # convs + FrozenBN's 4 each
    dropped = [k for k in s["ignored_keys"] if not k.startswith("head.")]  # a run's head
    assert dropped == ([] if name == "r18_c4" else ["fc.bias", "fc.weight"])  # nothing else
    assert s["classes"] == ["RBC", "WBC", "Platelets"] and s["preset"] == "bccd_r18_fpn"
    assert s["headline"] == ["det/voc07_AP", "det/voc07_AP50", "det/voc07_AP75"]
    backbone = {"fpn": "build_resnet_fpn_backbone", "c4": "build_resnet_backbone"}[s["model"]["arch"]]
    assert s["detectron2_config"]["MODEL"]["BACKBONE"]["NAME"] == backbone
    for key in ("det/voc07_AP", "det/voc07_AP50", "det/voc07_AP75", "det/coco_AP", "det/voc_AP"):
        assert np.isfinite(record["metrics"][key]) and 0.0 <= record["metrics"][key] <= 100.0
    assert np.isfinite(s["train"]["final_loss"]) and s["train"]["iterations"] == 2
    log_txt = (Path(s["work_dir"]) / "log.txt").read_text()
    assert log_txt.count("Start inference on") == 1  # evaluated once, not by an EvalHook too
    lines = (Path(s["work_dir"]) / "metrics.json").read_text().splitlines()
    assert [json.loads(ln)["iteration"] for ln in lines] == [0, 1]  # train.log_every=1
    assert not list(Path(s["work_dir"]).glob("events.out.tfevents*"))  # no tensorboard here


def test_options_of_both_engines_are_honoured(cells: dict) -> None:
    status, records, _, log = cells["r18_c4"]
    assert status == 0, log[-3000:]
    record = records[0]
    s, d2 = record["settings"], record["settings"]["detectron2_config"]
    assert record["splits"] == {"train": 6, "test": 4}  # data.limit_train / limit_test
    assert s["predicted_images"] == 4
    assert d2["DATALOADER"]["NUM_WORKERS"] == 2
    assert d2["MODEL"]["PIXEL_MEAN"] == [127.5, 102.0, 76.5]  # model.pixel_mean x 255
    assert d2["MODEL"]["PIXEL_STD"] == [51.0, 51.0, 63.75]
    assert d2["MODEL"]["ROI_HEADS"]["NAME"] == "BasicRes5ROIHeads"
    log_txt = (Path(s["work_dir"]) / "log.txt").read_text()
    assert "Start inference on 2 batches" in log_txt  # eval.batch_size=2 over 4 images
    assert cells["r50_c4"][1][0]["settings"]["detectron2_config"]["MODEL"]["ROI_HEADS"]["NAME"] \
        == "Res5ROIHeadsExtraNorm"
    run = Path(record["setup"]["run_dir"]) if "run_dir" in record["setup"] else None
    assert run is not None and finished_cells(run) == {"r18_c4"}  # a suite sees the cell done


def test_same_seed_same_ap_and_seeds_differ_in_one_process(cells: dict) -> None:
    (s1, two, _, log), (s2, again, _, _) = cells["r18_fpn"], cells["r18_fpn_again"]
    assert s1 == 0 and s2 == 0, log[-3000:]
    assert [r["seed"] for r in two] == [0, 1] and again[0]["seed"] == 0  # --seeds 2
    loss = [r["settings"]["train"]["final_loss"] for r in (*two, *again)]
    assert _metrics(two[0]) == _metrics(again[0])  # a second cell in the same process, same AP
    assert loss[0] == loss[2]  # the same training, to the last bit
    assert loss[0] != loss[1]  # another seed: other initial heads, images, flips and ROIs


def test_a_work_folder_is_not_trained_twice(cells: dict, capsys: pytest.CaptureFixture,
                                            detectron2_importable: None) -> None:
    status, _, args, _ = cells["r18_fpn_again"]
    assert status == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert "already holds a detectron2 run" in err, err


@pytest.mark.parametrize(("extra", "needle"), [
    (["--resume"], "--resume is not supported by --engine detectron2"),
    (["train.hflip_prob=0.3"], "train.hflip_prob=0.3"),
    (["train.precision=bf16", "train.device=cpu"], "train.precision=bf16"),
])
def test_what_the_engine_cannot_honour_is_refused(extra: list[str], needle: str,
                                                  capsys: pytest.CaptureFixture,
                                                  detectron2_importable: None) -> None:
    options = [e for e in extra if e.startswith("--")]
    overrides = [e for e in extra if not e.startswith("--")]
    assert main(["detection", "--config", "bccd_r18_fpn", "--engine", "detectron2", *options,
                 "random", "model.encoder=resnet18", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and needle in err, err


@pytest.mark.parametrize(("arch", "encoder"), [("fpn", "resnet18"), ("c4", "resnet18"),
                                               ("fpn", "resnet50"), ("c4", "resnet50")])
def test_exported_weights_give_bit_identical_stage_outputs(arch: str, encoder: str, tmp_path: Path,
                                                           detectron2_importable: None) -> None:
    """Our pickle -> DetectionCheckpointer -> detectron2's ResNet equals torchvision's ResNet."""
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    from transfer.detection.config import DetectionConfig
    from transfer.detection.detectron2_engine import (
        KeyReportingCheckpointer,
        backbone_keys,
        build_config,
        register_custom_heads,
    )
    from transfer.detection.detectron2_weights import detectron2_backbone, write_detectron2_pickle

    net = getattr(torchvision.models, encoder)()
    net.load_state_dict(torch.load(_resnet_file(tmp_path / "w.pth", encoder), weights_only=True))
    net.eval()
    source = BackboneSource("file", str(tmp_path / "w.pth"), encoder,
                            state_dict=net.state_dict())
    arrays, _ = detectron2_backbone(source)
    write_detectron2_pickle(arrays, tmp_path / "w.pkl", author="test")
    cfg = DetectionConfig()
    cfg.model.arch = arch
    register_custom_heads()
    config = build_config(cfg, source, str(tmp_path / "w.pkl"), 3, "train", "test", tmp_path,
                          torch.device("cpu"))
    (tmp_path / "d2.yaml").write_text(yaml.safe_dump(config))
    d2cfg = get_cfg()
    d2cfg.merge_from_file(str(tmp_path / "d2.yaml"))
    model = build_model(d2cfg).eval()
    checkpointer = KeyReportingCheckpointer(model)
    checkpointer.load(str(tmp_path / "w.pkl"))
    assert not set(backbone_keys(model, arch)) & set(checkpointer.incompatible.missing_keys)
    assert checkpointer.unused_keys() == []
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        ours = {}
        h = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        for i in range(1, 5):
            h = getattr(net, f"layer{i}")(h)
            ours[f"res{i + 1}"] = h
        if arch == "fpn":
            theirs = model.backbone.bottom_up(x)
        else:
            theirs = model.backbone(x)  # res4
            theirs["res5"] = model.roi_heads.res5(theirs["res4"])
    for stage in ("res2", "res3", "res4", "res5"):
        if stage in theirs:
            assert torch.equal(theirs[stage], ours[stage]), stage
    assert "res5" in theirs and "res4" in theirs


def test_coco_metrics_equal_detectron2s_coco_evaluator(shared_data: Path, data_cache: Path,
                                                      tmp_path: Path,
                                                      detectron2_importable: None) -> None:
    """Jittered ground truth as detectron2 ``Instances`` on the coco_mini val2017 split: the
    engine's conversion + our metrics against ``COCOEvaluator`` (pycocotools, official)."""
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, Instances

    from transfer.detection.detectron2_engine import dataset_dicts, registered, to_prediction
    from transfer.detection.evaluate import detection_metrics

    root = coco_root(shared_data, data_cache)
    cfg = DataConfig(train=[DatasetSpec(format="coco", root=str(root), split="val2017")],
                     test=DatasetSpec(format="coco", root=str(root), split="val2017"),
                     cache_dir=str(data_cache))
    _, test, _ = load_detection_data(cfg)
    rng = np.random.default_rng(0)
    with registered(test, "test") as name:
        meta = MetadataCatalog.get(name)
        meta.set(json_file=str(root / "coco_mini/annotations/instances_val2017.json"),
                 thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(test.category_ids)})
        evaluator = COCOEvaluator(name, tasks=("bbox",), distributed=False,
                                  output_dir=str(tmp_path), use_fast_impl=False)
        evaluator.reset()
        ours = []
        for inputs in dataset_dicts(test):
            rec = test.records[inputs["index"]]
            n = len(rec.boxes) + 3
            boxes = np.concatenate([rec.boxes + rng.normal(0, 4.0, rec.boxes.shape),
                                    rng.uniform(0, 200, (3, 4)) + [0, 0, 40, 40]])
            boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
            labels = np.concatenate([rec.labels, rng.integers(1, len(test.classes) + 1, 3)])
            inst = Instances((rec.height, rec.width))
            inst.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
            inst.scores = torch.as_tensor(rng.uniform(0.05, 1.0, n), dtype=torch.float32)
            inst.pred_classes = torch.as_tensor(labels - 1)
            evaluator.process([inputs], [{"instances": inst}])
            ours.append(to_prediction(inputs, inst))
        theirs = evaluator.evaluate()["bbox"]
    mine = detection_metrics(test, ours)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        if np.isnan(theirs[key]):
            assert np.isnan(mine[f"det/coco_{key}"]), key
        else:
            assert mine[f"det/coco_{key}"] == pytest.approx(theirs[key], abs=1e-4), key
    assert 20.0 < mine["det/coco_AP"] < 90.0  # discriminating: neither perfect nor empty


def test_tensorboard_writer_only_when_asked_for(tmp_path: Path,
                                               detectron2_importable: None) -> None:
    from detectron2.utils.events import TensorboardXWriter

    from transfer.detection import detectron2_engine

    writers = detectron2_engine.event_writers(tmp_path, 10)
    assert [type(w).__name__ for w in writers] == ["CommonMetricPrinter", "JSONWriter"]
    for w in writers:
        w.close()
    writers = detectron2_engine.event_writers(tmp_path, 10, tensorboard=True)
    board = [w for w in writers if isinstance(w, TensorboardXWriter)]
    assert len(board) == 1 and Path(board[0]._writer_args["log_dir"]) == tmp_path / "tensorboard"
    for w in writers:
        w.close()


def test_ignored_boxes_and_labels_in_dataset_dicts(shared_data: Path, data_cache: Path,
                                                   detectron2_importable: None) -> None:
    """COCO crowd boxes become ``iscrowd`` (left out of training by DatasetMapper, as by the
    torchvision engine); labels become 0-based; boxes are unchanged."""
    from transfer.detection.detectron2_engine import dataset_dicts

    root = coco_root(shared_data, data_cache)
    cfg = DataConfig(train=[DatasetSpec(format="coco", root=str(root), split="val2017")],
                     test=DatasetSpec(format="coco", root=str(root), split="val2017"),
                     cache_dir=str(data_cache))
    train, _, _ = load_detection_data(cfg)
    dicts = dataset_dicts(train)
    crowd = sum(int(r.ignore.sum()) for r in train.records)
    assert crowd > 0 and sum(a["iscrowd"] for d in dicts for a in d["annotations"]) == crowd
    for rec, d in zip(train.records, dicts, strict=True):
        assert d["image_id"] == rec.image_id and (d["height"], d["width"]) == (rec.height, rec.width)
        np.testing.assert_array_equal([a["bbox"] for a in d["annotations"]] or np.zeros((0, 4)),
                                      rec.boxes.astype(np.float64))
        assert [a["category_id"] for a in d["annotations"]] == list(rec.labels - 1)
