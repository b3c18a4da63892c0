"""The projection-head result stated as the SimCLR paper states it, read off a head x tap table.

Chen et al. 2020 (ICML), Sec. 4.2 and Fig. 8: at the representation h, a nonlinear projection
head beats a linear one (by about 3 %) and no head (by more than 10 %); and for a trained head,
h is better than the head's output z = g(h) (by more than 10 %). :func:`head_verdict` checks
each of these orderings on the table's own numbers (never on expected values): the difference
of means, and with two or more seeds the paired bootstrap interval of the difference
(:func:`transfer.stats.compare_paired`, the same as ``--compare``); an ordering *holds, apart*
when that interval lies above 0 ("intervals apart"), *holds* when the mean difference has the
claimed sign, *tied* or *reversed* otherwise.

The table must have heads on the rows (labels ``none``, ``linear``, ``mlp-<depth>``) and taps
on the columns (``h`` ... ``z``); a claim whose cells are missing is left out with a word.
"""

from __future__ import annotations

from dataclasses import dataclass

from pretrain.errors import UserError
from transfer.stats import DEFAULT_RESAMPLES, compare_paired
from transfer.tables import Cell, Table

PAPER = "SimCLR Sec. 4.2 / Fig. 8"


@dataclass(frozen=True)
class Claim:
    """One ordering ``better > worse`` in one column, as measured."""

    better: str  # row or column label the paper puts first
    worse: str
    where: str  # "at h" or "for <head>"
    diff: float  # mean of better minus mean of worse
    lo: float | None  # paired bootstrap interval of the difference (None: < 2 seeds)
    hi: float | None

    @property
    def outcome(self) -> str:
        """``holds, apart`` (the interval excludes 0), ``holds``, ``tied`` or ``reversed``."""
        if self.lo is not None and self.lo > 0:
            return "holds, apart"
        if self.diff > 0:
            return "holds"
        return "tied" if self.diff == 0 else "reversed"

    def describe(self, digits: int = 2) -> str:
        interval = (f" [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]"
                    if self.lo is not None and self.hi is not None else "")
        return (f"{self.better} > {self.worse} {self.where}: {self.diff:+.{digits}f}{interval} "
                f"{self.outcome}")


def _label(table: Table, axis: str, label: str) -> tuple[str, ...] | None:
    keys = table.rows if axis == "rows" else table.cols
    return next((k for k in keys if Table.label(k) == label), None)


def _claim(a: Cell | None, b: Cell | None, better: str, worse: str, where: str,
           seed: int) -> Claim | None:
    if a is None or b is None:
        return None
    diff = a.stats[0] - b.stats[0]
    shared = set(a.values) & set(b.values)
    if len(shared) < 2:
        return Claim(better, worse, where, diff, None, None)
    c = compare_paired(a.values, b.values, (better, worse, where), DEFAULT_RESAMPLES, seed)
    return Claim(better, worse, where, c.diff, c.lo, c.hi)


def check_axes(rows: tuple[str, ...], cols: tuple[str, ...]) -> None:
    """A head verdict reads heads on the rows and taps on the columns; anything else is a
    one-line :class:`UserError` (a suite checks its tables with this before running)."""
    if tuple(rows) != ("head",) or tuple(cols) != ("tap",):
        raise UserError(f"a head verdict needs rows=head and cols=tap; this table has rows="
                        f"{','.join(rows)} and cols={','.join(cols)}")


def head_claims(table: Table, seed: int = 0) -> list[Claim]:
    """The paper's orderings measurable in ``table``: at h, the MLP head (the shallowest
    ``mlp-*`` row) > linear > none; for every trained head (linear, mlp-*), h > z."""
    check_axes(table.row_fields, table.col_fields)
    rows = {Table.label(r): r for r in table.rows}
    mlps = sorted((label for label in rows if label.startswith("mlp")),
                  key=lambda s: (len(s), s))
    h, z = _label(table, "cols", "h"), _label(table, "cols", "z")
    claims: list[Claim | None] = []
    if h is not None:
        chain = [label for label in (mlps[:1] + ["linear", "none"]) if label in rows]
        for better, worse in zip(chain, chain[1:], strict=False):
            claims.append(_claim(table.cell(rows[better], h), table.cell(rows[worse], h),
                                 better, worse, "at h", seed))
    if h is not None and z is not None:
        for head in ["linear", *mlps]:
            if head in rows:
                claims.append(_claim(table.cell(rows[head], h), table.cell(rows[head], z),
                                     "h", "z", f"for {head}", seed))
    return [c for c in claims if c is not None]


def head_verdict(table: Table, metric: str, seed: int = 0) -> str:
    """One line: every ordering of :func:`head_claims` with its difference, interval and
    outcome, and how many hold and how many have intervals apart."""
    claims = head_claims(table, seed)
    if not claims:
        return f"verdict ({metric}): no head x tap cells to compare"
    seeds = max((len(cell.values) for cell in table.cells.values()), default=0)
    held = sum(c.outcome.startswith("holds") for c in claims)
    apart = sum(c.outcome == "holds, apart" for c in claims)
    tally = (f"{held} of {len(claims)} hold, {apart} with intervals apart (95% paired bootstrap)"
             if seeds > 1 else f"{held} of {len(claims)} hold (1 seed: no intervals)")
    return (f"verdict ({metric}, {PAPER}; n={seeds}): " + "; ".join(c.describe() for c in claims)
            + f" -- {tally}")
