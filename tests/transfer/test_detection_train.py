"""Fine-tuning: end-to-end runs on BCCD through the CLI, exact resume, schedules, guard rails."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_run_dir
from detection_helpers import FAST, bccd_root, make_voc, single_thread, voc_overrides  # noqa: F401
from torch import nn

from pretrain.errors import NonFiniteLossError
from transfer.cli import main
from transfer.detection.command import aggregate
from transfer.detection.config import DataConfig, DatasetSpec, ModelConfig, TrainConfig
from transfer.detection.datasets import load_detection_data
from transfer.detection.model import make_detector
from transfer.detection.schedule import warmup_step_schedule
from transfer.detection.structures import DetectionDataset
from transfer.detection.train import train_detector
from transfer.detection.weights import load_backbone_source
from transfer.streams import batch_indices


@pytest.fixture(scope="module")
def bccd(shared_data: Path, data_cache: Path) -> Path:
    return bccd_root(shared_data, data_cache)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_finetune_from_a_run_directory_records_ap(tmp_path: Path, bccd: Path, data_cache: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    run = make_run_dir(tmp_path / "run", encoder="resnet18")
    args = ["detection", "--config", "bccd_r18_fpn", str(run), *FAST,
            f"data.cache_dir={data_cache}", "data.train=[{root: " + str(bccd) + ", split: train}]",
            "data.test={root: " + str(bccd) + ", split: test}", "model.norm=bn",
            "eval.precise_bn_iters=2", "train.tensorboard=true", "train.log_every=1"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert "loaded 120 tensors; missing: none" in out.out
    assert "dropped 1 invalid boxes" in out.err  # BloodImage_00343 is in train
    (record,) = _records(run / "results.jsonl")
    assert record["evaluator"] == "detection" and record["tap"] == "h"
    expected = {"source": "run", "encoder": "resnet18", "head": "mlp-2", "head_depth": 2,
                "epochs": 1, "pretrain_seed": 0, "batch_size": 256}
    assert {k: record["setup"][k] for k in expected} == expected
    m = record["metrics"]
    for key in ("det/coco_AP", "det/coco_AP50", "det/coco_AP75", "det/voc07_AP", "det/voc07_AP50",
                "det/voc07_AP75", "det/voc_AP50", "det/voc07_AP50/RBC", "det/voc_AP50/Platelets"):
        assert math.isfinite(m[key]) and 0.0 <= m[key] <= 100.0
    assert record["dataset"] == "voc:det_bccd_voc:test"
    assert record["splits"] == {"train": 8, "test": 4}
    assert record["settings"]["train"]["iterations"] == 2
    assert record["settings"]["dropped_train"] == 1
    assert record["settings"]["precise_bn_batches"] == 2  # trained BNs re-estimated before eval
    work = run / "detection" / "bccd_r18_fpn_s0"
    log = _records(work / "train_log.jsonl")
    assert log[-1]["iter"] == 2 and all(math.isfinite(r["loss"]) for r in log)
    # TensorBoard (train.tensorboard): the logged losses per iteration, the test AP at the end
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(work / "tensorboard"))
    board.Reload()
    series = {tag: [(e.step, e.value) for e in board.Scalars(tag)]
              for tag in board.Tags()["scalars"]}
    for key in ("loss", "lr", "loss_classifier", "loss_box_reg", "loss_objectness",
                "loss_rpn_box_reg"):
        assert series[f"detection/{key}"] == [(r["iter"], pytest.approx(r[key], rel=1e-6))
                                              for r in log], key
    for key in ("det/voc07_AP50", "det/coco_AP", "det/voc07_AP50/RBC"):
        assert series[key] == [(2, pytest.approx(m[key], rel=1e-6))]


def test_random_init_with_two_seeds_reports_mean_and_std(tmp_path: Path, bccd: Path,
                                                          data_cache: Path) -> None:
    voc = make_voc(tmp_path / "Cells", bccd, {
        "train": ["BloodImage_00001", "BloodImage_00003"], "test": ["BloodImage_00007"]})
    out = tmp_path / "out"
    args = ["detection", "--config", "bccd_r18_fpn", "--seeds", "2", "--output-dir", str(out),
            "--json", "random", "model.encoder=resnet18", *FAST, "train.max_iter=1",
            *voc_overrides(voc, data_cache)]
    assert main(args) == 0
    records = _records(out / "results.jsonl")
    assert [r["seed"] for r in records] == [0, 1]
    assert records[0]["setup"]["init"] == "random"
    # seeds differ in their seed, work folder and training stats only: one table cell
    same = [{k: v for k, v in r["settings"].items() if k not in ("work_dir", "train")}
            for r in records]
    assert same[0] == same[1] and records[0]["setup"] == records[1]["setup"]
    assert (out / "bccd_r18_fpn_resnet18-random_s1" / "checkpoint.pt").is_file()
    assert main(args) == 2  # the work folders hold checkpoints: --resume or another folder


def test_aggregate_mean_and_sample_std() -> None:
    out = aggregate([{"det/voc07_AP50": 10.0, "det/coco_APs": 1.0},
                     {"det/voc07_AP50": 20.0, "det/coco_APs": 3.0}])
    assert out["det/voc07_AP50"] == 15.0 and out["det/voc07_AP50_std"] == pytest.approx(7.0710678)
    assert out["det/coco_APs"] == 2.0 and "det/coco_APs_std" not in out and out["det/n_seeds"] == 2.0


def _tiny_setup(bccd: Path, data_cache: Path) -> tuple[DetectionDataset, ModelConfig]:
    root = str(bccd)
    data = DataConfig(train=[DatasetSpec(root=root, split="train")],
                      test=DatasetSpec(root=root, split="test"), cache_dir=str(data_cache),
                      limit_train=6)
    train, _, _ = load_detection_data(data)
    model_cfg = ModelConfig(min_size_train=[64, 80], min_size_test=80, max_size=112,
                            roi_batch_size=8, norm="bn", trainable_stages=4)
    return train, model_cfg


def _fresh(model_cfg: ModelConfig, num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    return make_detector(model_cfg, load_backbone_source("random", "resnet18"), num_classes)[0]


class Interrupt(Exception):
    pass


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path: Path, bccd: Path,
                                                                data_cache: Path) -> None:
    """3 iterations straight vs 2, a crash, then resume for the last one: identical weights.

    Uses trainable BatchNorm (running statistics), multi-scale and flips, so the RNG state
    and the image order must both be restored exactly.
    """
    train, model_cfg = _tiny_setup(bccd, data_cache)
    cfg = TrainConfig(max_iter=3, batch_size=2, lr=0.01, warmup_iters=2, steps=[2],
                      checkpoint_every=2, progress=False, seed=3)
    cpu = torch.device("cpu")
    straight = _fresh(model_cfg, 3)
    train_detector(straight, train, cfg, tmp_path / "a", cpu)

    def crash(done: int, terms: dict) -> None:
        if done == 2:
            raise Interrupt

    first = _fresh(model_cfg, 3)
    with pytest.raises(Interrupt):
        train_detector(first, train, cfg, tmp_path / "b", cpu, on_step=crash)
    resumed = _fresh(model_cfg, 3)
    stats = train_detector(resumed, train, cfg, tmp_path / "b", cpu, resume=True)
    assert stats["resumed_from"] == 2
    a, b = straight.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], first.state_dict()[k])]
    assert changed  # the last iteration did change weights
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_schedule_warmup_and_steps() -> None:
    lrs = warmup_step_schedule(0.02, 10, steps=[6, 8], gamma=0.1, warmup_iters=4,
                               warmup_factor=0.001)
    assert len(lrs) == 10
    assert lrs[0] == pytest.approx(0.02 * 0.001)
    assert lrs[2] == pytest.approx(0.02 * (0.001 + 0.999 * 2 / 4))
    assert lrs[4] == lrs[5] == pytest.approx(0.02)
    assert lrs[6] == pytest.approx(0.002) and lrs[9] == pytest.approx(0.0002)


def test_batches_cover_each_epoch_and_split_over_ranks() -> None:
    n, b = 10, 4
    stream = [i for it in range(5) for i in batch_indices(n, b, it, seed=1)]
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert batch_indices(n, b, 3, seed=1) == batch_indices(n, b, 3, seed=1)
    assert batch_indices(n, b, 3, seed=1) != batch_indices(n, b, 3, seed=2)
    ranks = [batch_indices(n, b, 2, seed=1, rank=r, world_size=2) for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted(batch_indices(n, b, 2, seed=1))


class NaNDetector(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, images: list, targets: list) -> dict[str, torch.Tensor]:
        return {"loss_classifier": self.w * float("nan"), "loss_box_reg": self.w}


def test_non_finite_loss_names_the_iteration(tmp_path: Path, bccd: Path, data_cache: Path) -> None:
    train, _ = _tiny_setup(bccd, data_cache)
    cfg = TrainConfig(max_iter=3, batch_size=1, progress=False)
    with pytest.raises(NonFiniteLossError, match="iteration 1: .*loss_classifier"):
        train_detector(NaNDetector(), train, cfg, tmp_path, torch.device("cpu"))
