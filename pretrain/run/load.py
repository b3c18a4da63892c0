"""``load_run(run_dir) -> Run``: the one reader of a run directory for evaluation.

It reads ``config.yaml``, ``setup.json`` and ``checkpoint.pt`` once each (the checkpoint's bytes
are hashed as they are read: the hash keys the feature cache) and returns the model in eval mode
with everything a record or a transform needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pretrain.augment import resolve_recipe
from pretrain.checkpoint import load_checkpoint_and_hash
from pretrain.config import PretrainConfig
from pretrain.config_io import from_dict, read_yaml
from pretrain.data import load_dataset
from pretrain.errors import CheckpointError
from pretrain.model import SimCLRModel, build_model
from pretrain.run.layout import CHECKPOINT_FILE, CONFIG_FILE, SETUP_FILE
from pretrain.run.setup import RunSetup, read_setup, write_setup
from pretrain.run.state import load_weights, read_checkpoint


@dataclass
class Run:
    """A run directory, loaded.

    Attributes:
        dir: the run directory.
        config: its resolved pretraining config.
        setup: its :class:`~pretrain.run.setup.RunSetup`.
        model: encoder and head with the checkpoint's weights, in eval mode, on the CPU.
        checkpoint: path of ``checkpoint.pt``.
        checkpoint_sha256: sha256 of the checkpoint file's bytes.
        epoch: epochs completed when the checkpoint was written.
    """

    dir: Path
    config: PretrainConfig
    setup: RunSetup
    model: SimCLRModel
    checkpoint: Path
    checkpoint_sha256: str
    epoch: int


def load_run_config(run_dir: str | Path) -> PretrainConfig:
    """The resolved config of a run directory."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"not a run directory (no {CONFIG_FILE}): {run_dir}")
    return from_dict(PretrainConfig, read_yaml(path))


def rebuild_setup(cfg: PretrainConfig, model: SimCLRModel) -> RunSetup:
    """The setup training would have written for ``cfg`` (reads the dataset's info)."""
    dataset = load_dataset(cfg.data.name, cfg.data.split, cfg.data.root, cfg.data.cache_dir)
    return RunSetup.build(cfg, model, resolve_recipe(cfg.augment, dataset.info))


def load_run(run_dir: str | Path) -> Run:
    """Load a run directory written by ``simclr-pretrain`` (weights on the CPU, eval mode).

    A run without ``setup.json`` (written before it existed) gets it rebuilt from its config
    and dataset, and written, so later reads agree.
    """
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)
    ckpt_path = run_dir / CHECKPOINT_FILE
    state, sha256 = load_checkpoint_and_hash(ckpt_path)
    ckpt = read_checkpoint(state, ckpt_path)
    model = build_model(cfg.model)
    load_weights(model, ckpt, ckpt_path)
    model.eval()
    setup_path = run_dir / SETUP_FILE
    if setup_path.is_file():
        setup = read_setup(setup_path)
    else:
        setup = rebuild_setup(cfg, model)
        try:
            write_setup(setup, setup_path)
        except OSError:  # a read-only run directory: rebuilt again next time
            pass
    return Run(run_dir, cfg, setup, model, ckpt_path, sha256, ckpt.state.epoch)
