"""The run directory: its files, its name, and how a run starts or resumes in it.

Layout of ``<train.run_dir>/<name>/``::

    config.yaml      the resolved PretrainConfig
    setup.json       the RunSetup: head label and depth, taps, normalisation, eval size, ...
    checkpoint.pt    encoder, head, optimizer, epoch, step, schedule length (pretrain.run.state)
    metrics.jsonl    one JSON object per epoch (loss, lr, pairs/s, epoch time), events, summary
    summary.json     written once training finishes
    results.jsonl    one record per evaluation, appended by every evaluator
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pretrain.config import PretrainConfig
from pretrain.config_io import to_dict, write_yaml
from pretrain.data import DATASETS
from pretrain.encoders import check_encoder_name
from pretrain.errors import ConfigError, UserError
from pretrain.heads import HEADS, describe_head
from pretrain.model import head_shape
from pretrain.optim import OPTIMIZERS
from pretrain.run.setup import RunSetup, write_setup

CONFIG_FILE = "config.yaml"
SETUP_FILE = "setup.json"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.jsonl"


def check_names(cfg: PretrainConfig) -> None:
    """Check every registered name of ``cfg`` (``model.encoder``, ``model.head``, ``optim.name``,
    ``data.name``) against its registry; a typo is a :class:`ConfigError` naming the key and
    the valid choices, raised before anything is read, built or created."""
    check_encoder_name(cfg.model.encoder)
    HEADS.check(cfg.model.head, "model.head")
    OPTIMIZERS.check(cfg.optim.name, "optim.name")
    dataset = cfg.data.name.partition(":")[0]
    if dataset not in DATASETS:
        valid = ", ".join(f"{n}:<path>" if n == "imagefolder" else n for n in DATASETS.names())
        raise ConfigError(f"data.name: unknown dataset {cfg.data.name!r}; valid: {valid}")


def run_name(cfg: PretrainConfig) -> str:
    """``train.name``, else ``<dataset>_<encoder>_<head label>_s<seed>`` (digits_small_cnn_mlp-2_s0)."""
    if cfg.train.name:
        return cfg.train.name
    dataset = cfg.data.name.split(":")[0]
    head = describe_head(cfg.model.head, head_shape(cfg.model)).label
    encoder = cfg.model.encoder.replace(":", "-").replace("/", "-")
    return f"{dataset}_{encoder}_{head}_s{cfg.train.seed}"


def run_dir_for(cfg: PretrainConfig) -> Path:
    """Where the run of ``cfg`` lives: ``<train.run_dir>/<run_name>``."""
    return Path(cfg.train.run_dir) / run_name(cfg)


def is_run_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by ``simclr-pretrain`` (it has a config.yaml)."""
    return (Path(path) / CONFIG_FILE).is_file()


def prepare_run_dir(cfg: PretrainConfig, resume: bool) -> Path:
    """The run directory of ``cfg``, after checking its registered names (:func:`check_names`)
    and that a run may start (or resume) there.

    Nothing is written: :func:`write_run_files` does that once a resume has been checked
    (:func:`pretrain.run.resume.open_resume`), so a refused one leaves the directory as it was.
    """
    check_names(cfg)
    run_dir = run_dir_for(cfg)
    ckpt = run_dir / CHECKPOINT_FILE
    if resume and not ckpt.is_file():
        raise UserError(f"--resume: no checkpoint to resume from at {ckpt}")
    if not resume and ckpt.is_file():
        raise UserError(
            f"run directory {run_dir} already holds a checkpoint; pass --resume to continue it "
            f"or set train.name to start a new run"
        )
    return run_dir


def write_run_files(run_dir: Path, cfg: PretrainConfig, setup: RunSetup) -> None:
    """Write ``config.yaml`` and ``setup.json`` (the main process only, under torchrun)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_yaml(to_dict(cfg), run_dir / CONFIG_FILE)
    write_setup(setup, run_dir / SETUP_FILE)


def find_run_dirs(paths: Iterable[str | Path], extra: Iterable[str | Path] = ()) -> list[Path]:
    """Run directories with metrics named by, or found under, ``paths`` (a file stands for its
    folder), plus the ``extra`` candidates that are run directories; resolved, first seen first."""
    candidates: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            candidates.append(p.parent)
        elif p.is_dir():
            candidates.append(p)
            candidates += [m.parent for m in sorted(p.rglob(METRICS_FILE))]
            candidates += [m.parent for m in sorted(p.rglob(RESULTS_FILE))]
    candidates += [Path(c) for c in extra]
    runs: dict[Path, None] = {}
    for c in candidates:
        if is_run_dir(c) and (c / METRICS_FILE).is_file():
            runs[c.resolve()] = None
    return list(runs)
