"""The run contract: what a pretraining run is, written once and read by everything else.

* :mod:`.layout`  the run directory: file names, the run's name, starting or resuming in it;
* :mod:`.setup`   :class:`RunSetup`: head label and depth, taps, normalisation, eval size, recipe;
* :mod:`.state`   the checkpoint schema (one writer, one reader) and :class:`RunState`;
* :mod:`.load`    :func:`load_run` -> :class:`Run` (config, setup, model, checkpoint identity);
* :mod:`.resume`  what ``--resume`` may change (:data:`RESUME_MAY_CHANGE`) and its checks.

Probes, detection, tables and plots import from here; none of them knows a checkpoint key or
derives a head label, a depth or a normalisation on its own.
"""

from pretrain.run.layout import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    RESULTS_FILE,
    SETUP_FILE,
    SUMMARY_FILE,
    check_names,
    find_run_dirs,
    is_run_dir,
    prepare_run_dir,
    run_dir_for,
    run_name,
    write_run_files,
)
from pretrain.run.load import Run, load_run, load_run_config
from pretrain.run.resume import RESUME_MAY_CHANGE, open_resume
from pretrain.run.setup import RunSetup, read_setup, write_setup
from pretrain.run.state import (
    RunCheckpoint,
    RunState,
    is_run_checkpoint,
    read_checkpoint,
    restore,
    write_checkpoint,
)

__all__ = [
    "CHECKPOINT_FILE", "CONFIG_FILE", "METRICS_FILE", "RESULTS_FILE", "RESUME_MAY_CHANGE",
    "SETUP_FILE", "SUMMARY_FILE", "Run", "RunCheckpoint", "RunSetup", "RunState",
    "check_names", "find_run_dirs", "is_run_checkpoint", "is_run_dir", "load_run", "load_run_config",
    "open_resume", "prepare_run_dir", "read_checkpoint", "read_setup", "restore", "run_dir_for",
    "run_name", "write_checkpoint", "write_run_files", "write_setup",
]
