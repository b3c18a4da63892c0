"""Summary statistics for result tables: mean ± sample std, and a paired bootstrap over seeds.

Every number here is computed from values given as plain sequences, so each function can be
checked with a handful of hand-made values.

* :func:`mean_std`: mean and *sample* standard deviation (``ddof=1``, Bessel-corrected); the
  std is NaN for a single value, where it is undefined.
* :func:`paired_bootstrap`: the mean of paired differences ``a_i - b_i`` (same seed in both
  rows) with a percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13): resample the
  differences with replacement ``n`` times from a seeded generator, take the mean of each
  resample, and report the ``(1-level)/2`` and ``(1+level)/2`` quantiles. With few seeds (3-5)
  the interval is narrow-biased; it is a description of the seeds at hand, not a test with
  guaranteed coverage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from pretrain.errors import UserError

DEFAULT_RESAMPLES = 10_000
DEFAULT_LEVEL = 0.95


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """(mean, sample std with ddof=1, n); std is NaN when n == 1.

    Raises:
        ValueError: ``values`` is empty (a programming error: empty cells are never summarised).
    """
    if len(values) == 0:
        raise ValueError("mean_std of no values")
    x = np.asarray(values, dtype=float)
    std = float(np.std(x, ddof=1)) if len(x) > 1 else math.nan
    return float(np.mean(x)), std, len(x)


def paired_bootstrap(
    a: ArrayLike,
    b: ArrayLike,
    n: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> tuple[float, float, float]:
    """Mean of ``a - b`` and its percentile bootstrap interval.

    Args:
        a, b: values paired by position (the same seed at the same index), length k >= 2.
        n: number of bootstrap resamples of the k differences.
        seed: seed of the resampling generator; the same inputs and seed give the same interval.
        level: coverage of the interval (0.95 = 2.5th to 97.5th percentile).

    Returns:
        ``(mean_diff, lo, hi)``.
    """
    xa, xb = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if len(xa) != len(xb):
        raise ValueError(f"paired_bootstrap needs equal lengths, got {len(xa)} and {len(xb)}")
    if len(xa) < 2:
        raise UserError(
            f"a paired comparison needs at least 2 seeds present in both rows, got {len(xa)}"
        )
    if n < 1:
        raise UserError(f"the number of bootstrap resamples must be >= 1, got {n}")
    if not 0.0 < level < 1.0:
        raise UserError(f"the interval level must be in (0, 1), got {level}")
    diff = xa - xb
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n, len(diff)))
    means = diff[idx].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(diff.mean()), float(lo), float(hi)


@dataclass(frozen=True)
class Comparison:
    """Row ``a`` minus row ``b`` in one column, over the seeds present in both."""

    a: str
    b: str
    column: str
    n: int  # seeds paired
    unpaired: int  # seeds present in only one of the two rows (left out)
    diff: float
    lo: float
    hi: float
    resamples: int
    level: float

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0.0 or self.hi < 0.0

    def describe(self, digits: int = 2) -> str:
        """One line: ``mlp-2 − linear, knn/top1: +1.20 [+0.80, +1.60] ... excludes 0``."""
        verdict = "excludes 0" if self.excludes_zero else "includes 0"
        extra = f"; {self.unpaired} unpaired seed(s) left out" if self.unpaired else ""
        return (
            f"{self.a} − {self.b}, {self.column}: {self.diff:+.{digits}f} "
            f"[{self.lo:+.{digits}f}, {self.hi:+.{digits}f}] "
            f"({self.level:.0%} paired bootstrap, {self.resamples} resamples, "
            f"n={self.n} seeds{extra}): {verdict}"
        )


def compare_paired(
    a: Mapping[Any, float],
    b: Mapping[Any, float],
    names: tuple[str, str, str],
    n: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> Comparison:
    """Pair two cells' per-seed values by seed and bootstrap their difference.

    Args:
        a, b: seed -> value for the two rows.
        names: (row a label, row b label, column label), for the description.
    """
    common = sorted((k for k in a if k in b), key=repr)
    unpaired = len(set(a) ^ set(b))
    if len(common) < 2:
        raise UserError(
            f"cannot compare {names[0]} with {names[1]} in {names[2]}: they share "
            f"{len(common)} seed(s), need at least 2"
        )
    diff, lo, hi = paired_bootstrap(
        [a[k] for k in common], [b[k] for k in common], n=n, seed=seed, level=level
    )
    return Comparison(names[0], names[1], names[2], len(common), unpaired, diff, lo, hi, n, level)
