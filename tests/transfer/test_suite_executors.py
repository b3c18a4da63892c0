"""Suites through submitit: local (--parallel 2) and debug executors give the sequential run's
tables, a pretraining job signalled mid-run is requeued and ends bit-identical, a crashed
driver's rerun waits for the running job instead of submitting it again, failed cells are
reported and retried only when asked, the SLURM path writes the sbatch scripts and dependencies
it would submit (fake sbatch/srun on PATH, no cluster), and --status reads the grid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import transfer.suite_driver as suite_driver
from pretrain.checkpoint import load_checkpoint
from pretrain.config_io import to_dict
from pretrain.jsonl import read_jsonl
from transfer.cli import main as transfer_main
from transfer.suite import load_suite, plan, suite_dir
from transfer.suite_driver import cpu_count, grid_status
from transfer.suite_jobs import CellJob, Resources, cell_executor, slurm_parameters
from transfer.suite_ledger import EVENTS_FILE, JOBS_DIR, cell_folder, log_paths, record_event

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "configs" / "suites" / "quickstart.yaml"
KNN = "knn --tap all --k 5,10 --limit 200"
LINEAR = "linear --tap h,z --limit 200 --wd-grid 1e-4:1e2:5"


def small(out: Path, cache: Path, epochs: int = 1, *extra: str, limit: int = 128) -> list[str]:
    """The quickstart suite shrunk to 2 variants x 1 seed x 2 cheap evaluators."""
    return [
        "variants={none: [model.head=none], mlp-2: [model.head=mlp, model.num_layers=2]}",
        f"overrides=[train.epochs={epochs}, data.limit={limit}, train.batch_size=32, "
        f"train.progress=false, model.hidden_dim=32, model.out_dim=16, data.cache_dir={cache}]",
        f"evaluators=['{KNN}', '{LINEAR}']",
        "tables=[{rows: head, cols: tap, metric: knn/top1@k10}, "
        "{rows: head, cols: tap, metric: linear/top1}]",
        f"output_dir={out}", *extra,
    ]


def suite_run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = transfer_main(["suite", str(QUICKSTART), *args])
    out, err = capsys.readouterr()
    return code, out, err


def tables(out: str) -> str:
    return out[out.index("**Table.**"):]


def events(folder: Path) -> list[dict]:
    return read_jsonl(folder / JOBS_DIR / EVENTS_FILE)


@pytest.fixture
def one_thread() -> object:
    """Sequential runs in this process at the thread count of each local worker (cores / 2):
    torch's CPU kernels round differently at other thread counts."""
    before = torch.get_num_threads()
    threads = max(1, cpu_count() // 2)
    torch.set_num_threads(threads)
    yield threads
    torch.set_num_threads(before)


def test_local_parallel_and_debug_executors_give_the_sequential_tables(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], one_thread: int,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    code, seq, _ = suite_run(capsys, *small(tmp_path / "seq", cache))
    assert code == 0
    monkeypatch.setattr(suite_driver, "visible_gpus", lambda: 2)  # as on a 2-GPU machine
    # (CUDA_VISIBLE_DEVICES=0 or 1 changes nothing for torch without CUDA)
    code, par, err = suite_run(capsys, *small(tmp_path / "par", cache), "--executor", "local",
                               "--parallel", "2")
    assert code == 0, err
    assert "2 runs pretrained, 4 evaluations" in par and "(local executor)" in par
    assert tables(par) == tables(seq)
    folder = tmp_path / "par" / "quickstart"
    by_cell: dict[str, list[str]] = {}
    for e in events(folder):
        by_cell.setdefault(e["cell"], []).append(e["event"])
    assert len(by_cell) == 6 and all(v == ["submitted", "started", "finished"]
                                     for v in by_cell.values()), by_cell
    # one GPU per running cell (CUDA_VISIBLE_DEVICES): the two pretraining cells, which run at
    # once, on different GPUs; the cores divided among the 2 cells
    started = {e["cell"]: e for e in events(folder) if e["event"] == "started"}
    assert {e["cuda_visible_devices"] for e in started.values()} <= {"0", "1"}
    assert {started[f"{v}/s0/pretrain"]["cuda_visible_devices"] for v in ("none", "mlp-2")} == {
        "0", "1"}
    assert all(e["threads"] == one_thread for e in started.values())
    for e in started.values():
        assert f"{e['cell']} (GPU {e['cuda_visible_devices']})" in par
    # every cell has its own log folder with submitit's logs of its job
    for e in events(folder):
        if e["event"] == "finished":
            out_log, err_log = log_paths(folder, e["cell"], e["job_id"])
            assert out_log.is_file() and err_log.is_file()
    # two cells at once: both pretraining jobs were submitted before either finished
    order = [(e["cell"], e["event"]) for e in events(folder)]
    starts = [order.index((f"{v}/s0/pretrain", "submitted")) for v in ("none", "mlp-2")]
    ends = [order.index((f"{v}/s0/pretrain", "finished")) for v in ("none", "mlp-2")]
    assert max(starts) < min(ends), order

    code, dbg, err = suite_run(capsys, *small(tmp_path / "dbg", cache), "--executor", "debug",
                               "--threads", str(one_thread))
    assert code == 0, err
    assert tables(dbg) == tables(seq)

    code, again, _ = suite_run(capsys, *small(tmp_path / "par", cache), "--executor", "local",
                               "--parallel", "2")
    assert code == 0 and "0 runs pretrained, 0 evaluations, 6 cells already done" in again


def _wait_for(predicate, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run / "checkpoint.pt")
    return {f"{part}.{k}": v for part in ("encoder", "head") for k, v in state[part].items()}


def _epochs(run: Path) -> list[int]:
    return [e["epoch"] for e in read_jsonl(run / "metrics.jsonl")
            if "epoch" in e and "event" not in e]


def test_a_signalled_pretraining_job_is_requeued_and_ends_bit_identical(tmp_path: Path) -> None:
    """SIGUSR2 (what SLURM sends before preemption or the time limit, and what submitit's local
    controller sends near its timeout) in epoch 2 or later: submitit calls CellJob.checkpoint,
    requeues the job, and the new task resumes from the last checkpoint."""
    cache = tmp_path / "cache"
    suites = {name: load_suite(QUICKSTART, small(tmp_path / name, cache, 8,
                                                 "variants={mlp-2: [model.head=mlp]}", limit=512))
              for name in ("straight", "cut")}  # 16 steps per epoch: seconds of training
    jobs = {}
    for name, suite in suites.items():
        (cell,) = plan(suite)
        executor = cell_executor("local", suite_dir(suite), cell.key, Resources())
        jobs[name] = (cell, executor.submit(CellJob(to_dict(suite), cell.key, os.getcwd(), 1)))
    cell, job = jobs["cut"]
    run = cell.run_dir
    _wait_for(lambda: len(_epochs(run)) >= 1, what="the first epoch")
    (started,) = [e for e in events(suite_dir(suites["cut"])) if e["event"] == "started"]
    assert len(_epochs(run)) < 8  # still training
    os.kill(started["pid"], signal.SIGUSR2)
    for _, j in jobs.values():
        j.result()  # raises if the job failed
    kinds = [e["event"] for e in events(suite_dir(suites["cut"]))]
    assert kinds == ["started", "requeued", "started", "finished"], kinds  # submitted: driver's
    lines = read_jsonl(run / "metrics.jsonl")
    assert any(line.get("event") == "resume" for line in lines)
    assert _epochs(run)[-1] == 8
    a, b = _weights(jobs["straight"][0].run_dir), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_crashed_driver_is_rerun_without_resubmitting_its_running_job(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*small(tmp_path / "out", tmp_path / "cache", 4, "variants={mlp-2: [model.head=mlp]}"),
            "--executor", "local"]
    driver = subprocess.Popen([sys.executable, "-m", "transfer.cli", "suite", str(QUICKSTART),
                               *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    folder = tmp_path / "out" / "quickstart"
    key = "mlp-2/s0/pretrain"
    try:
        _wait_for(lambda: any(e["event"] == "started" and e["cell"] == key
                              for e in events(folder)), what="the pretraining job")
    finally:
        driver.kill()  # the driver dies; its submitit job goes on
        driver.wait()
    status = {s.key: s for s in grid_status(load_suite(QUICKSTART, args[:-2]),
                                            plan(load_suite(QUICKSTART, args[:-2])))}
    assert status[key].state in ("running", "done")
    code, out, err = suite_run(capsys, *args)
    assert code == 0, err
    submitted = [e for e in events(folder) if e["event"] == "submitted" and e["cell"] == key]
    assert len(submitted) == 1  # waited for, not submitted again
    assert "2 evaluations" in out


def test_a_failed_cell_is_reported_with_its_log_and_retried_only_when_asked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [*small(tmp_path / "out", tmp_path / "cache", 1, "variants={none: [model.head=none]}",
                   "evaluators=['knn --tap z --k 5 --limit 100', 'knn --tap q --k 5']"),
            "--executor", "local", "--parallel", "2"]
    code, out, err = suite_run(capsys, *args)
    assert code == 2
    assert err.strip().splitlines() == [
        "error: 1 cells failed (listed above with their logs); rerun with --retry-failed to "
        "submit them again"]
    (line,) = [x for x in out.splitlines() if x.startswith("[suite] failed:")]
    assert "none/s0/knn --tap q --k 5" in line and "unknown tap 'q'" in line
    log = Path(line.split("log: ")[1])
    assert log.is_file() and "unknown tap 'q'" in log.read_text()  # the job's stderr
    code, out, _ = suite_run(capsys, *args)
    assert code == 2 and "0 evaluations" in out  # not submitted again
    n_submitted = sum(e["event"] == "submitted" for e in events(tmp_path / "out" / "quickstart"))
    code, out, _ = suite_run(capsys, *args, "--retry-failed")
    assert code == 2  # fails again, but was submitted again
    assert sum(e["event"] == "submitted"
               for e in events(tmp_path / "out" / "quickstart")) == n_submitted + 1
    # the debug executor: the same failure in this process, run once, reported the same way
    debug = [*args[:-4], "output_dir=" + str(tmp_path / "dbg"), "--executor", "debug"]
    code, out, err = suite_run(capsys, *debug)
    assert code == 2 and "1 cells failed" in err
    assert [e["event"] for e in events(tmp_path / "dbg" / "quickstart")
            if e["cell"] == "none/s0/knn --tap q --k 5"] == ["submitted", "started", "failed"]


FAKE_SBATCH = """#!/usr/bin/env python3
import pathlib, sys
counter = pathlib.Path(__file__).with_name("next_id")
job = int(counter.read_text()) if counter.exists() else 4100
counter.write_text(str(job + 1))
with open(pathlib.Path(__file__).with_name("sbatch_calls"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\\n")
print(f"Submitted batch job {job}")
"""


def test_slurm_writes_the_sbatch_scripts_and_dependencies_it_submits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """No cluster: sbatch and srun are fakes on PATH (sbatch answers as SLURM does); the
    scripts are submitit's own, checked for the resources asked for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    args = [*small(tmp_path / "out", tmp_path / "cache", 1,
                   "slurm={constraint: volta32gb, qos: high}"),
            "--executor", "slurm", "--no-wait", "--gpus-per-node", "8", "--nodes", "2",
            "--partition", "learnfair", "--account", "ssl", "--timeout", "600"]
    code, out, err = suite_run(capsys, *args)
    assert code == 0, err
    assert "2 runs submitted, 4 evaluations" in out
    folder = tmp_path / "out" / "quickstart"
    submitted = {e["cell"]: e for e in events(folder) if e["event"] == "submitted"}
    assert len(submitted) == 6
    for variant in ("none", "mlp-2"):
        pre = submitted[f"{variant}/s0/pretrain"]
        script = (cell_folder(folder, pre["cell"]) / f"{pre['job_id']}_submission.sh").read_text()
        for line in ("#SBATCH --nodes=2", "#SBATCH --gpus-per-node=8",
                     "#SBATCH --ntasks-per-node=8", "#SBATCH --partition=learnfair",
                     "#SBATCH --account=ssl", "#SBATCH --time=600",
                     "#SBATCH --constraint=volta32gb", "#SBATCH --qos=high",
                     "#SBATCH --signal=USR2@120"):
            assert line in script.splitlines(), (line, script)
        assert "--dependency" not in script
        for evaluator in (KNN, LINEAR):
            ev = submitted[f"{variant}/s0/{evaluator}"]
            assert ev["dependency"] == pre["job_id"]
            script = (cell_folder(folder, ev["cell"]) / f"{ev['job_id']}_submission.sh").read_text()
            for line in (f"#SBATCH --dependency=afterok:{pre['job_id']}", "#SBATCH --nodes=1",
                         "#SBATCH --gpus-per-node=1", "#SBATCH --ntasks-per-node=1",
                         "#SBATCH --partition=learnfair", "#SBATCH --constraint=volta32gb"):
                assert line in script.splitlines(), (line, script)
    calls = (bin_dir / "sbatch_calls").read_text().splitlines()
    assert len(calls) == 6
    # a rerun finds every job submitted (no sacct here: the ledger is trusted) and submits none
    code, out, _ = suite_run(capsys, *args)
    assert code == 0 and len((bin_dir / "sbatch_calls").read_text().splitlines()) == 6
    code, out, _ = suite_run(capsys, *small(tmp_path / "out", tmp_path / "cache", 1), "--status")
    assert code == 0 and "6 cells: 6 waiting" in out
    assert f"[waiting] none/s0/pretrain  job {submitted['none/s0/pretrain']['job_id']}" in out


def test_slurm_parameters_of_pretraining_and_evaluation_jobs() -> None:
    r = Resources(timeout_min=90, gpus_per_node=4, nodes=3, partition="p", extra={"mem": "64G"})
    pre = slurm_parameters(r, pretraining=True)
    assert (pre["nodes"], pre["gpus_per_node"], pre["ntasks_per_node"], pre["time"]) == (3, 4, 4, 90)
    ev = slurm_parameters(r, pretraining=False, dependency="77")
    assert (ev["nodes"], ev["gpus_per_node"], ev["ntasks_per_node"]) == (1, 1, 1)
    assert ev["dependency"] == "afterok:77" and ev["additional_parameters"] == {"mem": "64G"}
    cpu = slurm_parameters(Resources(), pretraining=True)
    assert "gpus_per_node" not in cpu and cpu["ntasks_per_node"] == 1


def test_status_of_a_half_finished_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    knn = "evaluators=['knn --tap h --k 5 --limit 100']"
    args = small(tmp_path / "out", tmp_path / "cache", 1, knn,
                 "tables=[{rows: head, cols: tap, metric: knn/top1@k5}]")
    code, _, err = suite_run(capsys, *args, "variants={none: [model.head=none]}")
    assert code == 0, err  # the none cells are done; mlp-2 has not started
    folder = tmp_path / "out" / "quickstart"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record_event(folder, "mlp-2/s0/pretrain", "submitted", job_id=str(os.getpid()),
                 executor="local")  # a live job: this process stands in for its controller

    def status() -> list[str]:
        code, out, _ = suite_run(capsys, *args, "--status")
        assert code == 0
        return out.splitlines()

    lines = status()
    assert lines[0] == "[done] none/s0/pretrain"
    assert lines[1] == "[done] none/s0/knn --tap h --k 5 --limit 100"
    assert lines[2].startswith(f"[waiting] mlp-2/s0/pretrain  job {os.getpid()} submitted")
    assert lines[3] == ("[waiting] mlp-2/s0/knn --tap h --k 5 --limit 100  for mlp-2/s0/pretrain "
                        "(waiting)")
    assert lines[-1] == "4 cells: 2 done, 2 waiting"
    # the job's process is gone without finishing: failed, with its log
    record_event(folder, "mlp-2/s0/pretrain", "started", job_id=str(dead.pid), executor="local")
    lines = status()
    assert lines[2].startswith(f"[failed] mlp-2/s0/pretrain  job {dead.pid} ended without finishing")
    assert f"log: {log_paths(folder, 'mlp-2/s0/pretrain', str(dead.pid))[1]}" in lines[2]
    assert lines[-1] == "4 cells: 2 done, 1 waiting, 1 failed"
    record_event(folder, "mlp-2/s0/pretrain", "failed", job_id="9", executor="slurm",
                 error="NonFiniteLossError: epoch 1 step 3")
    assert status()[2].startswith("[failed] mlp-2/s0/pretrain  NonFiniteLossError: epoch 1 step 3"
                                  "  log: ")
    assert not (folder / "mlp-2_s0").exists()  # --status ran nothing


def test_executor_option_mistakes_are_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    args = small(tmp_path / "out", tmp_path / "cache")
    for extra, needle in ((["--parallel", "2"], "--parallel 2 needs --executor local"),
                          (["--executor", "local", "--parallel", "0"], "--parallel must be >= 1"),
                          (["--partition", "p"], "--partition: SLURM options; add --executor slurm")):
        code, _, err = suite_run(capsys, *args, *extra)
        assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err, err
    code, _, err = suite_run(capsys, *args, "--executor", "slurm")
    assert code == 2 and "needs SLURM's" in err and "on PATH" in err
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "submitit", None)  # as if not installed
        code, _, err = suite_run(capsys, *args, "--executor", "local")
    assert code == 2 and err.strip() == ("error: --executor local|debug|slurm needs submitit, "
                                         "which is not installed: pip install submitit")
    assert not (tmp_path / "out").exists()
