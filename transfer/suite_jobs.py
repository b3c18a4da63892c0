"""A suite cell as a submitit job, and the submitit executors that run such jobs.

submitit (https://github.com/facebookincubator/submitit), as DINO, VISSL and other FAIR code use
it: a job is a pickled callable run by ``python -m submitit.core._submit`` in a new process
(``local``), in this one (``debug``), or in a SLURM allocation (``slurm``). :class:`CellJob` is
that callable. It runs one cell through :func:`transfer.suite.run_cell` and logs its events to
the suite's ledger (:mod:`transfer.suite_ledger`). Its ``checkpoint`` method is submitit's
checkpointing hook: on preemption or near the time limit (SIGUSR2) submitit calls it and
requeues the returned submission, which resumes pretraining from the run's last checkpoint
(``simclr-pretrain --resume`` semantics: the same final weights as an uninterrupted run).

Under SLURM a pretraining cell may span several GPUs and nodes: one task per GPU, whose
torch.distributed variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) submitit's
``TorchDistributedEnvironment`` exports, so :func:`pretrain.distributed.init_from_environment`
joins them as it joins torchrun's.
"""

from __future__ import annotations

import importlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrain.cli import user_error_message
from pretrain.config_io import from_dict
from pretrain.errors import ConfigError
from transfer.suite import PretrainCell, SuiteConfig, find_cell, run_cell, suite_dir
from transfer.suite_ledger import cell_folder, record_event

EXECUTORS = ("sequential", "debug", "local", "slurm")
SUBMITIT_INSTALL = "pip install submitit"


def import_submitit() -> Any:
    """The submitit module, or a one-line :class:`ConfigError` saying how to install it."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"--executor local|debug|slurm needs submitit, which is not "
                          f"installed: {SUBMITIT_INSTALL}") from None
    return submitit


def one_line(exc: BaseException) -> str:
    """``Type: first line`` of a cell's error, for its ``failed`` event (the message cut as the
    CLI cuts it: :func:`pretrain.cli.user_error_message`)."""
    return (f"{type(exc).__name__}: {user_error_message(exc)}" if str(exc).strip()
            else type(exc).__name__)


class CellJob:
    """One cell of a suite, run where submitit starts it.

    Args:
        suite: the resolved suite (``to_dict`` of a :class:`SuiteConfig`: plain data, so the
            pickled job holds no live object).
        key: the cell (:attr:`PretrainCell.key` or :attr:`EvalCell.key`).
        cwd: the driver's working folder (relative paths of the suite resolve from it).
        threads: CPU threads for torch in this job (0 = torch's default); local runs divide
            the machine's cores among the parallel cells.
        executor: the executor's name, stored with the events.
    """

    def __init__(self, suite: dict[str, Any], key: str, cwd: str, threads: int = 0,
                 executor: str = "local") -> None:
        self.suite, self.key, self.cwd = suite, key, cwd
        self.threads, self.executor = threads, executor

    def _environment(self) -> tuple[str, int, int]:
        """(job id, global rank, number of tasks) from submitit's job environment."""
        submitit = import_submitit()
        try:
            env = submitit.JobEnvironment()
            return str(env.job_id), int(env.global_rank), int(env.num_tasks)
        except RuntimeError:  # not inside a submitit job (called directly)
            return "", 0, 1

    def __call__(self) -> str:
        # a fresh process: register the evaluators (and plugins) as the simclr-transfer CLI does
        importlib.import_module("transfer.commands")
        os.chdir(self.cwd)
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
            os.environ["OMP_NUM_THREADS"] = str(self.threads)  # for processes it starts
        suite = from_dict(SuiteConfig, self.suite)
        folder = suite_dir(suite)
        cell = find_cell(suite, self.key)
        job_id, rank, tasks = self._environment()
        if tasks > 1:  # a multi-GPU / multi-node pretraining job: one task per GPU
            import submitit.helpers

            from pretrain import distributed

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            if isinstance(cell, PretrainCell):
                distributed.init_from_environment(cell.config.train.device)
        main = rank == 0
        if main:
            record_event(folder, self.key, "started", job_id=job_id, executor=self.executor,
                         cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                         threads=self.threads)
        try:
            run_cell(suite, cell)
        except Exception as exc:
            if main:
                record_event(folder, self.key, "failed", job_id=job_id, executor=self.executor,
                             error=one_line(exc))
            raise
        if main:
            record_event(folder, self.key, "finished", job_id=job_id, executor=self.executor)
        return self.key

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's hook on preemption or time-out: requeue this same cell. A pretraining
        cell resumes from the checkpoint its run last wrote; an evaluation cell starts over."""
        submitit = import_submitit()
        suite = from_dict(SuiteConfig, self.suite)
        job_id, _, _ = self._environment()
        record_event(suite_dir(suite), self.key, "requeued", job_id=job_id,
                     executor=self.executor)
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@dataclass
class Resources:
    """What a job asks for (the suite command's options; SLURM ones only used by ``slurm``)."""

    timeout_min: int = 72 * 60  # SLURM --time; local jobs are signalled (and requeued) at it
    gpus_per_node: int = 0  # pretraining jobs (slurm); evaluation jobs take at most 1
    nodes: int = 1  # pretraining jobs (slurm)
    cpus_per_task: int = 0  # 0 = SLURM's default
    partition: str = ""
    account: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # more #SBATCH lines (the suite YAML)


def slurm_parameters(resources: Resources, pretraining: bool, dependency: str = "",
                     name: str = "simclr-suite") -> dict[str, Any]:
    """submitit ``SlurmExecutor`` parameters of one job: a pretraining job gets
    ``nodes x gpus_per_node`` GPUs with one task per GPU; an evaluation job one node, one task
    and at most one GPU; ``dependency``: another job's id this one starts after (afterok)."""
    gpus = resources.gpus_per_node if pretraining else min(1, resources.gpus_per_node)
    params: dict[str, Any] = {
        "job_name": name,
        "time": resources.timeout_min,
        "nodes": resources.nodes if pretraining else 1,
        "ntasks_per_node": max(1, gpus),
        "signal_delay_s": 120,
    }
    if gpus:
        params["gpus_per_node"] = gpus
    if resources.cpus_per_task:
        params["cpus_per_task"] = resources.cpus_per_task
    if resources.partition:
        params["partition"] = resources.partition
    if resources.account:
        params["account"] = resources.account
    if dependency:
        params["dependency"] = f"afterok:{dependency}"
    if resources.extra:
        params["additional_parameters"] = dict(resources.extra)
    return params


def make_executor(kind: str, folder: Path, resources: Resources, *, pretraining: bool = True,
                  dependency: str = "", gpu: int | None = None, name: str = "simclr-suite") -> Any:
    """A submitit executor of ``kind`` (debug | local | slurm) writing into ``folder``.

    ``gpu``: the one GPU a local job sees (``CUDA_VISIBLE_DEVICES``); None = none.
    """
    submitit = import_submitit()
    if kind == "debug":
        return submitit.DebugExecutor(folder)
    if kind == "local":
        executor = submitit.LocalExecutor(folder)
        executor.update_parameters(timeout_min=resources.timeout_min, signal_delay_s=30,
                                   gpus_per_node=0 if gpu is None else 1,
                                   visible_gpus=() if gpu is None else (gpu,))
        return executor
    if kind == "slurm":
        missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
        if missing:
            raise ConfigError(f"--executor slurm needs SLURM's {' and '.join(missing)} on PATH "
                              "(run the suite on the cluster's login node)")
        executor = submitit.SlurmExecutor(folder, max_num_timeout=3)
        executor.update_parameters(**slurm_parameters(resources, pretraining, dependency, name))
        return executor
    raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}; got {kind!r}")


def cell_executor(kind: str, suite_folder: Path, key: str, resources: Resources, **kw: Any) -> Any:
    """:func:`make_executor` writing into the cell's own folder of the suite's ``jobs/``."""
    return make_executor(kind, cell_folder(suite_folder, key), resources, **kw)
