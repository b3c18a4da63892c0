"""What a suite folder knows about the jobs of its cells, and the state of every cell.

Layout of ``<output_dir>/<name>/jobs/`` (written only by ``--executor local|debug|slurm``)::

    events.jsonl     one line per event, only ever appended to: ``submitted`` (by the driver,
                     with the executor and the job id), ``started``, ``requeued``,
                     ``finished`` and ``failed`` (by the job itself, with its pid and host;
                     ``failed`` with the error's first line)
    <cell slug>/     submitit's folder for the cell's jobs: ``<job id>_0_log.out`` and
                     ``_log.err`` (the cell's output and traceback), the submission, and
                     the generated ``<job id>_submission.sh`` sbatch script (slurm)

A cell is **done** when its outputs say so (the run's ``summary.json``; a record tagged with
the cell in the run's ``results.jsonl``), whatever the events say, exactly as a sequential suite
decides. Otherwise the cell's last event decides (:func:`cell_status`): **running** (started or
requeued and its process alive), **waiting** (submitted, not started yet: a pending SLURM job, a
dependency), **failed** (the job said so, or its process is gone without finishing; the log is
named), **todo** (never submitted, or submitted by a driver that ran it in its own process).
Whether a process is alive is checked where it can be: a local job's pid on this host, a SLURM
job through ``sacct`` when it is on PATH (otherwise the last event is trusted).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.jsonl import append_jsonl, read_jsonl

JOBS_DIR = "jobs"
EVENTS_FILE = "events.jsonl"
STATES = ("done", "running", "waiting", "failed", "todo", "absent")
# sacct states after which a job runs no more (a requeued job is PENDING again, not here)
SLURM_ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY",
                         "NODE_FAIL", "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED"})


def jobs_dir(suite_folder: Path) -> Path:
    return Path(suite_folder) / JOBS_DIR


def cell_slug(key: str) -> str:
    """A folder name for the cell ``key`` (``mlp-2/s0/knn --tap h,z`` ->
    ``mlp-2_s0_knn_--tap_h_z-<8 hex>``): readable, and unique through a hash of the key."""
    readable = re.sub(r"[^A-Za-z0-9._=-]+", "_", key).strip("_")[:60]
    return f"{readable}-{hashlib.sha1(key.encode()).hexdigest()[:8]}"


def cell_folder(suite_folder: Path, key: str) -> Path:
    """submitit's folder for the jobs of cell ``key`` (their logs, submissions, scripts)."""
    return jobs_dir(suite_folder) / cell_slug(key)


def log_paths(suite_folder: Path, key: str, job_id: str) -> tuple[Path, Path]:
    """(stdout, stderr) of the first task of job ``job_id`` of cell ``key`` (submitit's names)."""
    folder = cell_folder(suite_folder, key)
    return folder / f"{job_id}_0_log.out", folder / f"{job_id}_0_log.err"


def record_event(suite_folder: Path, key: str, event: str, **fields: Any) -> None:
    """Append one event of cell ``key`` to ``jobs/events.jsonl`` (locked, whole lines)."""
    append_jsonl(jobs_dir(suite_folder) / EVENTS_FILE, {
        "cell": key, "event": event, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "host": socket.gethostname(), "pid": os.getpid(), **fields})


def last_events(suite_folder: Path) -> dict[str, dict[str, Any]]:
    """The last event of every cell that has one."""
    return {e["cell"]: e for e in read_jsonl(jobs_dir(suite_folder) / EVENTS_FILE) if "cell" in e}


@dataclass(frozen=True)
class CellStatus:
    key: str
    state: str  # one of STATES
    detail: str = ""  # why, in a few words (the error of a failed cell, the job id)
    log: str = ""  # the cell's stderr log, where one exists
    job_id: str = ""  # the job a live cell waits on or runs in ("" for every other state)

    @property
    def live(self) -> bool:
        """A job of this cell is submitted or running: wait for it, never submit it again."""
        return self.state in ("running", "waiting") and bool(self.job_id)

    def line(self) -> str:
        extra = "".join(f"  {part}" for part in (self.detail, f"log: {self.log}" if self.log
                                                  else "") if part)
        return f"[{self.state}] {self.key}{extra}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def slurm_state(job_id: str) -> str:
    """The job's state as ``sacct`` reports it, "" when sacct is not on PATH or says nothing."""
    if shutil.which("sacct") is None:
        return ""
    import subprocess

    try:
        out = subprocess.run(["sacct", "-j", job_id, "-X", "-n", "-P", "-o", "State"],
                             capture_output=True, text=True, timeout=30, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    states = [line.split()[0] for line in out.splitlines() if line.strip()]
    return states[0].upper() if states else ""


def _alive(event: dict[str, Any], job_id: str) -> bool | None:
    """Whether the process or job of ``event`` still runs; None when it cannot be told here."""
    executor = event.get("executor", "")
    if executor == "slurm":
        state = slurm_state(job_id)
        return None if not state else state not in SLURM_ENDED
    if event.get("host") != socket.gethostname() or not job_id.isdigit():
        return None
    return _pid_alive(int(job_id))  # a local job's id is its controller's pid (all requeues)


def cell_status(suite_folder: Path, key: str, done: bool, event: dict[str, Any] | None) -> CellStatus:
    """The state of cell ``key`` from its outputs (``done``) and its last ``event``."""
    if done:
        return CellStatus(key, "done")
    if event is None:
        return CellStatus(key, "todo")
    job_id = str(event.get("job_id", ""))
    log = str(log_paths(suite_folder, key, job_id)[1]) if job_id else ""
    kind = event["event"]
    if event.get("executor") == "debug" and kind in ("submitted", "started", "requeued"):
        return CellStatus(key, "todo", "last run in a driver's own process (debug)")
    if kind == "failed":
        return CellStatus(key, "failed", str(event.get("error", "")), log)
    if kind == "finished":
        return CellStatus(key, "failed", "the job finished but the cell's outputs are missing", log)
    alive = _alive(event, job_id)
    if alive is False:
        return CellStatus(key, "failed", f"job {job_id} ended without finishing the cell", log)
    if kind == "submitted":
        return CellStatus(key, "waiting", f"job {job_id} submitted", log, job_id)
    return CellStatus(key, "running", f"job {job_id}" + (" (requeued)" if kind == "requeued"
                                                         else ""), log, job_id)
