"""Shared fixtures: a tiny run directory built without training, the shared data folder,
detectron2 (vendored or installed), and a guard that the test session writes nothing into the
checkout."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from pretrain.augment import resolve_recipe
from pretrain.config import PretrainConfig
from pretrain.data import DatasetInfo, load_dataset, shared_data_dirs
from pretrain.model import build_model
from pretrain.run import (
    CHECKPOINT_FILE,
    RunSetup,
    RunState,
    prepare_run_dir,
    write_checkpoint,
    write_run_files,
)

REPO = Path(__file__).resolve().parents[1]


def make_run_dir(
    path: Path,
    encoder: str = "small_cnn",
    head: str = "mlp",
    num_layers: int = 2,
    seed: int = 0,
    dataset: str = "digits",
    info: DatasetInfo | None = None,
    **overrides: object,
) -> Path:
    """A run directory written through the run contract, exactly as ``simclr-pretrain`` writes
    one (config.yaml, setup.json, checkpoint.pt), with random weights and one epoch done.

    ``info`` stands in for the dataset's (loaded for digits; required for a dataset that is
    not on disk); ``overrides`` set ``section.key`` values (``augment__image_size=24``).
    """
    cfg = PretrainConfig()
    cfg.data.name = dataset
    cfg.model.encoder = encoder
    cfg.model.head = head
    cfg.model.num_layers = num_layers
    cfg.model.hidden_dim = 64
    cfg.model.out_dim = 32
    cfg.train.seed = seed
    cfg.train.epochs = 1
    cfg.train.run_dir, cfg.train.name = str(path.parent), path.name
    for key, value in overrides.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    torch.manual_seed(seed)
    model = build_model(cfg.model)
    info = info or load_dataset(dataset).info
    setup = RunSetup.build(cfg, model, resolve_recipe(cfg.augment, info))
    write_run_files(prepare_run_dir(cfg, resume=False), cfg, setup)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    write_checkpoint(path / CHECKPOINT_FILE, model, optimizer, RunState(epoch=1, step=1), 1)
    return path


@pytest.fixture
def tiny_run_dir(tmp_path: Path) -> Path:
    return make_run_dir(tmp_path / "run")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder holding ../shared/data archives; skips where it is absent (not in CI)."""
    for d in shared_data_dirs():
        if (d / "README.md").is_file():
            return d
    pytest.skip("../shared/data not found")


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data_cache")


# Caches that tools (not tests) keep in the checkout.
TOOL_DIRS = {".git", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
             ".import_linter_cache"}


def checkout_files() -> set[str]:
    """Every file in the checkout except those of version control and tool caches."""
    found = set()
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in TOOL_DIRS and not d.endswith(".egg-info")]
        found.update(os.path.relpath(os.path.join(root, f), REPO) for f in files)
    return found


@pytest.fixture(scope="session", autouse=True)
def checkout_stays_clean() -> Iterator[None]:
    """Tests write runs, caches and records under tmp_path only: fail the session otherwise."""
    before = checkout_files()
    yield
    new = sorted(checkout_files() - before)
    if new:
        pytest.fail(f"{len(new)} file(s) appeared in the checkout during the tests (tests must "
                    f"write under tmp_path): {', '.join(new[:5])}")


DETECTRON2_MISSING = (
    "detectron2 is not importable and its vendored sources (../shared/vendor/detectron2-src) "
    "are absent; install detectron2 from its repository (pip install "
    "'git+https://github.com/facebookresearch/detectron2.git') and its dependencies "
    "(pip install -e '.[test]') to run this test")


def vendored_detectron2() -> Path | None:
    """``../shared/vendor/detectron2-src`` (detectron2's Python package), where it exists."""
    return next((d.parent / "vendor" / "detectron2-src" for d in shared_data_dirs()
                 if (d.parent / "vendor" / "detectron2-src" / "detectron2").is_dir()), None)


def detectron2_path() -> list[Path]:
    """What PYTHONPATH needs for ``import detectron2``: the vendored folder, or nothing when
    detectron2 is installed; skips the test when neither is there."""
    src = vendored_detectron2()
    if src is not None:
        return [src]
    if importlib.util.find_spec("detectron2") is not None:
        return []
    pytest.skip(DETECTRON2_MISSING)


@pytest.fixture(scope="session")
def detectron2_pythonpath() -> list[Path]:
    """:func:`detectron2_path` as a fixture (test modules cannot import from this conftest:
    ``tests/probes/conftest.py`` shares its module name)."""
    return detectron2_path()


@pytest.fixture(scope="module")
def detectron2_importable() -> Iterator[None]:
    """detectron2 importable in this process (the vendored sources on sys.path while the module
    runs); a failing import of an existing copy fails the test, it never skips."""
    paths = [str(p) for p in detectron2_path()]
    sys.path[:0] = paths
    try:
        import detectron2.engine  # noqa: F401
    except ImportError as exc:  # its pure-Python dependencies come with the [test] extras
        pytest.fail(f"detectron2 ({paths or 'installed'}) does not import: {exc}")
    yield
    for p in paths:
        sys.path.remove(p)
