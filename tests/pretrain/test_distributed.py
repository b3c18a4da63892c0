"""Two gloo processes under torchrun are equivalent to one process with the global batch.

* One step: loss and every gradient match (none, linear, mlp heads; with synchronised BN against
  one BN over the whole batch, without it against per-rank BN statistics).
* A 2-rank run killed with SIGKILL and resumed ends with the weights of an uninterrupted run.
* Sharding: the ranks' samples in one epoch are the dataset, repeats only for padding.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from ddp_step_worker import HEADS, PER_RANK_BATCH, make_inputs, make_model
from subprocesses import child_env, torchrun

from pretrain.augment import resolve_recipe
from pretrain.checkpoint import load_checkpoint
from pretrain.data import load_dataset
from pretrain.jsonl import read_jsonl
from pretrain.loss import nt_xent
from pretrain.quality import quality_metrics
from pretrain.run import load_run
from pretrain.train import CPUTwoViewBatches

WORLD = 2


def _torchrun(*args: str, **kwargs) -> subprocess.Popen:
    """``torchrun`` with WORLD ranks; the workers import ddp_step_worker from this folder."""
    return subprocess.Popen(torchrun(WORLD, *args), env=child_env(Path(__file__).parent),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def _reference(head: str, sync_bn: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One process: the same model and global batch; BN over everything or per rank."""
    model = make_model(head)
    x1_all, x2_all = make_inputs(WORLD)
    if sync_bn:
        z1, z2 = model(torch.cat([x1_all, x2_all])).chunk(2)
    else:
        parts = [
            model(
                torch.cat(
                    [
                        x1_all[r * PER_RANK_BATCH : (r + 1) * PER_RANK_BATCH],
                        x2_all[r * PER_RANK_BATCH : (r + 1) * PER_RANK_BATCH],
                    ]
                )
            ).chunk(2)
            for r in range(WORLD)
        ]
        z1 = torch.cat([p[0] for p in parts])
        z2 = torch.cat([p[1] for p in parts])
    loss = nt_xent(z1, z2, 0.5)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_one_step_matches_one_process_with_the_global_batch(tmp_path: Path) -> None:
    proc = _torchrun(str(Path(__file__).parent / "ddp_step_worker.py"), str(tmp_path))
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output.decode()[-2000:]
    worst = 0.0
    for head in HEADS:
        for sync_bn in (False, True):
            got = torch.load(tmp_path / f"{head}_sync{int(sync_bn)}.pt", weights_only=True)
            ref_loss, ref_grads = _reference(head, sync_bn)
            torch.testing.assert_close(got["loss"], ref_loss, rtol=1e-5, atol=1e-6)
            assert set(got["grads"]) == set(ref_grads)
            for name, g in ref_grads.items():
                torch.testing.assert_close(got["grads"][name], g, rtol=1e-4, atol=2e-5, msg=name)
                worst = max(worst, (got["grads"][name] - g).abs().max().item())
    print(
        f"\nmax |grad difference| 2 ranks x {PER_RANK_BATCH} vs 1 process x "
        f"{WORLD * PER_RANK_BATCH}: {worst:.3g}"
    )
    # The comparison has teeth: a gather without gradients gives different gradients.
    naive = torch.load(tmp_path / "mlp_naive.pt", weights_only=True)
    _, ref_grads = _reference("mlp", True)
    diffs = [(naive["grads"][n] - g).abs().max().item() for n, g in ref_grads.items()]
    assert max(diffs) > 1e-3


def test_sharding_covers_the_dataset_once_per_epoch() -> None:
    from pretrain.augment import resolve_recipe
    from pretrain.config import AugmentConfig

    ds = load_dataset("digits", "train", limit=101)  # odd size: one padded repeat for 2 ranks
    recipe = resolve_recipe(AugmentConfig(), ds.info)
    seen: list[int] = []
    for rank in range(WORLD):
        source = CPUTwoViewBatches(ds, recipe, 10, 0, torch.device("cpu"), rank, WORLD)
        source.set_epoch(seed=3, epoch=5, rank=rank, world_size=WORLD)
        seen += list(source.sampler)
        assert len(source) == 51 // 10  # full batches only
    assert set(seen) == set(range(101))
    assert len(seen) == 102  # 101 images + 1 padding repeat
    other = CPUTwoViewBatches(ds, recipe, 10, 0, torch.device("cpu"), 0, WORLD)
    other.set_epoch(seed=3, epoch=6, rank=0, world_size=WORLD)
    assert list(other.sampler) != seen[:51]  # a new permutation each epoch


ARGS = [
    "data.limit=128",
    "model.hidden_dim=32",
    "model.out_dim=16",
    "train.batch_size=32",
    "optim.name=sgd",
    "optim.lr=0.1",
    "optim.warmup_epochs=1",
    "train.progress=false",
    "train.epochs=3",
    "train.device=cpu",
]  # train.sync_bn is left at its default: global BN because there are two ranks


def test_two_rank_run_killed_and_resumed_matches_uninterrupted(tmp_path: Path) -> None:
    common = ["-m", "pretrain.cli", *ARGS, f"train.run_dir={tmp_path}"]
    full = _torchrun(*common, "train.name=full")
    out, _ = full.communicate(timeout=300)
    assert full.returncode == 0, out.decode()[-2000:]

    killed = _torchrun(*common, "train.name=killed", start_new_session=True)
    metrics = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and killed.poll() is None:
        if metrics.is_file() and '"epoch"' in metrics.read_text():
            os.killpg(killed.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    killed.wait()
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["epoch"] < 3

    resumed = _torchrun(*common, "train.name=killed", "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out.decode()[-2000:]
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 3
    for part in ("encoder", "head"):
        for key, value in a[part].items():
            torch.testing.assert_close(b[part][key], value, rtol=0, atol=0, msg=key)


def test_a_failing_rank_stops_the_job_with_its_error(tmp_path: Path) -> None:
    proc = _torchrun(
        "-m", "pretrain.cli", *ARGS, f"train.run_dir={tmp_path}", "data.name=imagefolder:/no/such/folder"
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "error: dataset path not found: /no/such/folder" in out.decode()


def _two_rank_pretraining(run: Path, *overrides: str) -> list[dict]:
    """Pretrain 2 epochs on WORLD ranks into ``run``; returns all of its metrics.jsonl lines
    after checking that it succeeded and logged exactly one line per epoch (rank 0 alone)."""
    proc = _torchrun("-m", "pretrain.cli", *ARGS, "train.epochs=2", *overrides,
                     f"train.run_dir={run.parent}", f"train.name={run.name}")
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out.decode()[-2000:]
    lines = read_jsonl(run / "metrics.jsonl")
    assert [e["epoch"] for e in _epoch_lines(lines)] == [1, 2]
    return lines


def _epoch_lines(lines: list[dict]) -> list[dict]:
    return [line for line in lines if "epoch" in line and "event" not in line]


def test_quality_logging_under_two_ranks_finishes_with_single_process_numbers(tmp_path: Path) -> None:
    """``train.quality_every`` used to hang under torchrun: rank 0 alone ran a sharded
    extraction whose collectives the other rank, already training, never joined."""
    lines = _two_rank_pretraining(tmp_path / "q", "train.quality_every=1",
                                  "train.quality_samples=64")
    epochs = _epoch_lines(lines)
    assert all("quality/rankme/h" in e for e in epochs)
    summary = lines[-1]
    assert summary["world_size"] == 2 and summary["global_bn"] is True
    run = load_run(tmp_path / "q")  # the final weights: what epoch 2 was measured with
    dataset = load_dataset("digits", "train", limit=128)
    recipe = resolve_recipe(run.config.augment, dataset.info)
    alone = quality_metrics(run.model, dataset, recipe, num_samples=64)
    assert epochs[-1]["quality/rankme/h"] == pytest.approx(alone["quality/rankme/h"], rel=1e-4)
    assert epochs[-1]["quality/alignment/z"] == pytest.approx(alone["quality/alignment/z"], rel=1e-4)


def test_knn_monitor_under_two_ranks_shards_the_extraction_and_rank_zero_writes(
    tmp_path: Path,
) -> None:
    """Every rank joins the monitor's sharded extraction (a rank that skipped it would hang the
    gather); the one record per epoch equals the single-process monitor on the final weights.
    With TensorBoard on, rank 0 alone writes events (one event file)."""
    from pretrain.monitor import build_monitor, monitor_key

    epochs = _epoch_lines(_two_rank_pretraining(tmp_path / "m", "train.monitor_every=1",
                                                "train.monitor_k=50", "train.tensorboard=true"))
    assert len(list((tmp_path / "m" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    run = load_run(tmp_path / "m")
    dataset = load_dataset("digits", "train", limit=128)
    monitor = build_monitor(dataset, resolve_recipe(run.config.augment, dataset.info), "holdout",
                            ("h",), 50, 0.1, seed=0, load_test=list)
    alone = monitor(run.model, torch.device("cpu"))
    assert epochs[-1][monitor_key("h")] == pytest.approx(alone[monitor_key("h")], abs=1e-9)
