"""A suite's grid as submitit jobs: N cells at a time on this machine, or every cell on SLURM;
and the grid's state without running anything (``--status``).

* ``local``: up to ``--parallel N`` cells at once, each a submitit ``LocalExecutor`` job (its
  own process). An evaluation cell starts once its run's pretraining is done. With GPUs, the
  cells take them in turn, each pinned to one by ``CUDA_VISIBLE_DEVICES``; the CPU cores are
  divided among the N workers (``torch.set_num_threads``).
* ``debug``: submitit's ``DebugExecutor``: the same jobs, one at a time, in this process (pdb on
  an error): for debugging a cell as the other executors would run it.
* ``slurm``: every cell is submitted at once: a pretraining cell as one job (``--nodes`` x
  ``--gpus-per-node`` GPUs, one task per GPU), each evaluation cell as a one-GPU job that
  starts after its pretraining job (``--dependency=afterok:<id>``). The driver then waits
  (``--no-wait``: it returns after submitting) and prints the tables when nothing runs.

A rerun (after the driver crashed, or to collect results) is idempotent: done cells are found
from their outputs, as in a sequential suite; cells whose job still runs (their ids are in the
suite's ``jobs/events.jsonl``) are waited for, not submitted again; failed cells are reported with
their log and submitted again only with ``--retry-failed`` (their evaluation cells wait).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from pretrain.config_io import to_dict
from pretrain.errors import ConfigError
from transfer.suite import (
    Cell,
    DatasetAvailability,
    EvalCell,
    PretrainCell,
    SuiteConfig,
    SuiteReport,
    all_cells,
    eval_cells,
    finished_cells,
    suite_dir,
)
from transfer.suite_jobs import CellJob, Resources, cell_executor
from transfer.suite_ledger import STATES, CellStatus, cell_status, last_events, record_event

SLURM_POLL_S = 30.0


@dataclass
class ExecutorOptions:
    kind: str = "sequential"  # sequential | debug | local | slurm
    parallel: int = 1  # local: cells at once
    threads: int = 0  # torch CPU threads per cell; 0 = local: cores // parallel
    retry_failed: bool = False
    wait: bool = True  # slurm: wait for the jobs and print the tables
    poll_s: float = 0.5  # local: seconds between looks at the running jobs
    resources: Resources = field(default_factory=Resources)


def grid_status(suite: SuiteConfig, cells: list[PretrainCell]) -> list[CellStatus]:
    """The state of every cell, in grid order (see :mod:`transfer.suite_ledger`); an
    evaluation cell that was never submitted waits while its run is not pretrained, and a cell
    of a dataset with no local copy is ``absent``."""
    folder = suite_dir(suite)
    events = last_events(folder)
    availability = DatasetAvailability()
    out = []
    for cell in cells:
        pre = cell_status(folder, cell.key, cell.done(), events.get(cell.key))
        out.append(pre)
        finished = finished_cells(cell.run_dir)
        for ev in eval_cells(suite, cell):
            done = ev.key in finished
            if not done and availability.check(ev.line, ev.dataset, cell)[0]:
                out.append(CellStatus(ev.key, "absent", "its dataset has no local copy"))
                continue
            status = cell_status(folder, ev.key, done, events.get(ev.key))
            if status.state == "todo" and pre.state != "done":
                status = CellStatus(ev.key, "waiting", f"for {cell.key} ({pre.state})")
            out.append(status)
    return out


def plan_lines(statuses: list[CellStatus]) -> list[str]:
    """``--dry-run``: one line per cell, ``[done]``, ``[absent]`` (its dataset has no local
    copy) or ``[todo]`` (anything else: --dry-run reads the outputs, not the jobs)."""
    return [f"[{st.state if st.state in ('done', 'absent') else 'todo'}] {st.key}"
            for st in statuses]


def status_lines(statuses: list[CellStatus]) -> list[str]:
    """One line per cell, then the counts per state."""
    counts = {s: sum(st.state == s for st in statuses) for s in STATES}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    return [st.line() for st in statuses] + [f"{len(statuses)} cells: {summary}"]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class _Failures:
    """Failed cells: reported once each, with their log; cells after them are blocked."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.keys: set[str] = set()

    def add(self, status: CellStatus) -> None:
        if status.key not in self.keys:
            self.keys.add(status.key)
            self.lines.append(status.line())
            print(f"[suite] failed: {status.line()}", flush=True)


def _outcome(suite: SuiteConfig, cell: Cell) -> CellStatus:
    folder = suite_dir(suite)
    return cell_status(folder, cell.key, cell.done(), last_events(folder).get(cell.key))


def run_local(suite: SuiteConfig, cells: list[PretrainCell], options: ExecutorOptions) -> SuiteReport:
    """Run every unfinished cell as local (or debug) submitit jobs, ``options.parallel`` at a
    time; returns what ran, what was already done, what failed."""
    folder = suite_dir(suite)
    debug = options.kind == "debug"
    slots = 1 if debug else options.parallel
    gpus = 0 if debug else visible_gpus()
    threads = options.threads or (0 if debug else max(1, cpu_count() // slots))
    snapshot, cwd = to_dict(suite), os.getcwd()
    report, failures = SuiteReport(), _Failures()
    start = time.perf_counter()
    todo: list[Cell] = []
    watched: dict[str, Cell] = {}  # cells an earlier driver's jobs still run
    statuses = {st.key: st for st in grid_status(suite, cells)}
    for cell in all_cells(suite, cells):
        st = statuses[cell.key]
        if st.state == "done":
            report.skipped.append(cell.key)
        elif st.state == "absent":
            report.absent.append(cell.key)
        elif st.state == "failed" and not options.retry_failed:
            failures.add(st)
        elif st.live:
            watched[cell.key] = cell
        else:
            todo.append(cell)
    # pretraining first: the longest cells, and the ones the evaluations wait for (list
    # scheduling keeps every slot busy while evaluations of finished runs fill the gaps)
    todo.sort(key=lambda c: isinstance(c, EvalCell))
    running: dict[str, tuple[Cell, Any, int | None]] = {}
    while todo or running or watched:
        for key, (cell, job, _) in list(running.items()):
            if job.done():
                del running[key]
                _finish(suite, cell, report, failures)
        for key, cell in list(watched.items()):
            if _outcome(suite, cell).state not in ("running", "waiting"):
                del watched[key]
                _finish(suite, cell, report, failures)
        for cell in list(todo):
            if len(running) + len(watched) >= slots:
                break
            if isinstance(cell, EvalCell) and cell.pretrain.key in failures.keys:
                todo.remove(cell)
                failures.add(CellStatus(cell.key, "failed", f"not run: {cell.pretrain.key} failed"))
                continue
            if isinstance(cell, EvalCell) and not cell.pretrain.done():
                continue  # its run is still being pretrained
            todo.remove(cell)
            gpu = None
            if gpus:  # the GPU running the fewest cells now (the lowest index on a tie)
                busy = [g for _, _, g in running.values()]
                gpu = min(range(gpus), key=busy.count)
            executor = cell_executor(options.kind, folder, cell.key, options.resources, gpu=gpu)
            print(f"[suite {suite.name}] {cell.key}" + (f" (GPU {gpu})" if gpu is not None
                                                      else ""), flush=True)
            job = executor.submit(CellJob(snapshot, cell.key, cwd, threads, options.kind))
            record_event(folder, cell.key, "submitted", job_id=str(job.job_id),
                         executor=options.kind)
            if debug:  # the debug executor runs the job, here, when asked for its result
                try:
                    job.result()
                except Exception:  # CellJob logged it; pdb has had its turn
                    pass
                _finish(suite, cell, report, failures)
                continue
            running[cell.key] = (cell, job, gpu)
        if (running or watched) and not debug:
            time.sleep(options.poll_s)
        elif todo and not running and not watched:  # their pretraining ended undone: blocked
            for cell in todo:
                failures.add(CellStatus(cell.key, "failed", "not run: its pretraining did not "
                                        "finish"))
            todo = []
    report.seconds = time.perf_counter() - start
    report.failed = failures.lines
    return report


def _finish(suite: SuiteConfig, cell: Cell, report: SuiteReport, failures: _Failures) -> None:
    outcome = _outcome(suite, cell)
    if outcome.state == "done":
        (report.pretrained if isinstance(cell, PretrainCell) else report.evaluated).append(cell.key)
    else:
        failures.add(outcome if outcome.state == "failed"
                     else CellStatus(cell.key, "failed", "its job ended", outcome.log))


def submit_slurm(suite: SuiteConfig, cells: list[PretrainCell], options: ExecutorOptions) -> SuiteReport:
    """Submit every unfinished cell to SLURM (evaluation cells after their pretraining job);
    with ``options.wait``, wait until none runs. Returns what was submitted and found."""
    folder = suite_dir(suite)
    snapshot, cwd = to_dict(suite), os.getcwd()
    report, failures = SuiteReport(), _Failures()
    start = time.perf_counter()
    statuses = {st.key: st for st in grid_status(suite, cells)}

    def submit(cell: Cell, dependency: str = "") -> str:
        pretraining = isinstance(cell, PretrainCell)
        executor = cell_executor("slurm", folder, cell.key, options.resources,
                                 pretraining=pretraining, dependency=dependency,
                                 name=f"{suite.name}:{cell.key}"[:120])
        job = executor.submit(CellJob(snapshot, cell.key, cwd, 0, "slurm"))
        record_event(folder, cell.key, "submitted", job_id=str(job.job_id), executor="slurm",
                     dependency=dependency)
        print(f"[suite {suite.name}] {cell.key}: job {job.job_id}"
              + (f" after {dependency}" if dependency else ""), flush=True)
        (report.pretrained if pretraining else report.evaluated).append(cell.key)
        return str(job.job_id)

    def resolve(cell: Cell, dependency: str = "") -> str | None:
        """The job id later cells wait for ("" = nothing to wait for; None = blocked)."""
        st = statuses[cell.key]
        if st.state == "done":
            report.skipped.append(cell.key)
            return ""
        if st.state == "absent":
            report.absent.append(cell.key)
            return ""
        if st.live:
            return st.job_id
        if st.state == "failed" and not options.retry_failed:
            failures.add(st)
            return None
        return submit(cell, dependency)

    for cell in cells:
        pre = resolve(cell)
        for ev in eval_cells(suite, cell):
            if pre is None:
                failures.add(CellStatus(ev.key, "failed", f"not run: {cell.key} failed"))
                continue
            resolve(ev, pre)
    if options.wait:
        while any(st.state in ("running", "waiting") for st in grid_status(suite, cells)):
            time.sleep(SLURM_POLL_S)
        for st in grid_status(suite, cells):
            if st.state == "failed":
                failures.add(st)
    report.seconds = time.perf_counter() - start
    report.failed = failures.lines
    return report


def check_executor_options(options: ExecutorOptions) -> None:
    """One-line refusals of option combinations that cannot mean what was asked."""
    if options.parallel < 1 or options.threads < 0:
        raise ConfigError(f"--parallel must be >= 1 and --threads >= 0, got {options.parallel} "
                          f"and {options.threads}")
    if options.parallel > 1 and options.kind != "local":
        raise ConfigError(f"--parallel {options.parallel} needs --executor local (the "
                          f"{options.kind} executor runs one cell at a time"
                          + ("; slurm runs every cell as its own job)" if options.kind == "slurm"
                             else ")"))
    r, default = options.resources, Resources()
    slurm_only = [flag for flag, value, base in (
        ("--gpus-per-node", r.gpus_per_node, default.gpus_per_node), ("--nodes", r.nodes, default.nodes),
        ("--partition", r.partition, default.partition), ("--account", r.account, default.account),
        ("--cpus-per-task", r.cpus_per_task, default.cpus_per_task)) if value != base]
    if slurm_only and options.kind != "slurm":
        raise ConfigError(f"{', '.join(slurm_only)}: SLURM options; add --executor slurm")
    if r.timeout_min < 1 or r.nodes < 1 or r.gpus_per_node < 0:
        raise ConfigError("--timeout and --nodes must be >= 1 and --gpus-per-node >= 0")

