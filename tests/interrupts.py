"""Killing a pretraining run at a chosen point, in this process, for resume tests."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pretrain.monitor import KNNMonitor


@contextmanager
def monitor_dies_at_call(n: int) -> Iterator[None]:
    """The online k-NN monitor's ``n``-th call raises KeyboardInterrupt: the run dies in that
    epoch after its training steps, before the epoch's checkpoint and metrics line (the ones
    before it are written). The monitor is restored on leaving."""
    real = KNNMonitor.__call__
    calls = [0]

    def dying(self: KNNMonitor, model, device):  # type: ignore[no-untyped-def]
        calls[0] += 1
        if calls[0] == n:
            raise KeyboardInterrupt
        return real(self, model, device)

    KNNMonitor.__call__ = dying  # type: ignore[method-assign]
    try:
        yield
    finally:
        KNNMonitor.__call__ = real  # type: ignore[method-assign]
