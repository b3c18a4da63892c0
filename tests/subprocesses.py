"""How tests start other Python processes: the test's own interpreter, the checkout importable.

``torchrun`` is started as ``sys.executable -m torch.distributed.run`` (never looked up on PATH,
so a test cannot skip because a console script is missing), and ``PYTHONPATH`` is extended,
not replaced, so the children see what the test process sees.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child_env(*paths: str | Path, **extra: str) -> dict[str, str]:
    """The current environment with ``paths`` and the checkout prepended to PYTHONPATH, one
    OpenMP thread per process (two ranks on two cores) and ``extra`` variables."""
    parts = [str(p) for p in paths] + [str(REPO)]
    if os.environ.get("PYTHONPATH"):
        parts.append(os.environ["PYTHONPATH"])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(parts), **extra}


def torchrun(nproc: int, *args: str) -> list[str]:
    """``torchrun --standalone --nproc_per_node N ARGS`` with this interpreter."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", *args]
