"""Fixtures shared by the probe tests: one digits run directory and feature cache per module.

``make_run_dir`` lives in ``tests/conftest.py``; it is loaded here by path because every
``conftest.py`` is imported under the same module name, so ``from conftest import ...`` would
depend on which one pytest loaded last.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits


def _root_conftest():
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("_simclr_tests_root_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_run_dir: Callable[..., Path] = _root_conftest().make_run_dir


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny problems: a second thread only adds wake-up latency, badly so on a loaded machine
    (20x on the 2-core CI box), for torch and for scikit-learn's OpenMP/BLAS pools alike."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(before)


@pytest.fixture
def run_factory() -> Callable[..., Path]:
    """``make_run_dir`` of tests/conftest.py: a run directory in simclr-pretrain's format."""
    return make_run_dir


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory (random small_cnn, 2-layer MLP head) pretrained 'on' digits."""
    return make_run_dir(tmp_path_factory.mktemp("probe_run") / "run")


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feature_cache")
