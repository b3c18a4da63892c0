"""The learning-rate schedule of detection fine-tuning, computed up front.

Learning rate (detectron2's ``WarmupMultiStepLR``, Goyal et al. 2017 for the warm-up): at
iteration ``i`` (0-based) it is ``lr * w(i) * gamma ** (number of steps <= i)``, with the
linear warm-up ``w(i) = warmup_factor + (1 - warmup_factor) * i / warmup_iters`` for
``i < warmup_iters`` and 1 afterwards.
"""

from __future__ import annotations


def warmup_step_schedule(base_lr: float, max_iter: int, steps: list[int], gamma: float = 0.1,
                         warmup_iters: int = 0, warmup_factor: float = 0.001) -> list[float]:
    """Learning rate for each of ``max_iter`` iterations (length asserted)."""
    lrs = []
    for i in range(max_iter):
        warm = 1.0
        if i < warmup_iters:
            warm = warmup_factor + (1.0 - warmup_factor) * i / warmup_iters
        decays = sum(1 for s in steps if s <= i)
        lrs.append(base_lr * warm * gamma**decays)
    assert len(lrs) == max_iter
    return lrs
