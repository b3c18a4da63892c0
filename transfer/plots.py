"""Figures from result records and pretraining logs (PNG, matplotlib's Agg renderer).

Each ``plot_*`` function takes flattened records (:func:`transfer.records.load_records`) or
metrics lines, writes one PNG and returns its path, or returns None when the input holds no data
for that figure. Points are means over seeds with error bars of the sample std (ddof=1; none
for a single seed); the aggregation is :func:`transfer.tables.build_table`'s, so a figure never
mixes records a table would refuse to mix.

Figures are drawn on a bare :class:`matplotlib.figure.Figure` (no pyplot): no global figure
state, no GUI backend, nothing to close.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from pretrain.errors import UserError
from pretrain.jsonl import read_jsonl
from pretrain.monitor import monitor_key
from pretrain.run import METRICS_FILE
from transfer.records import (
    FlatRecord,
    display,
    epoch_series,
    head_depths,
    knn_k,
    primary_metrics,
    run_labels,
    setup_groups,
)
from transfer.tables import Table, build_table, sort_key

RANKME = "quality/rankme"


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (``knn/top1@k200`` -> ``knn-top1-k200``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def _points(table: Table, row: tuple[str, ...]) -> list[tuple[str, float, float, int]]:
    """(column label, mean, std or 0, n) for each filled cell of ``row``."""
    out = []
    for col in table.cols:
        cell = table.cell(row, col)
        if cell is not None:
            mean, std, n = cell.stats
            out.append((Table.label(col), mean, 0.0 if math.isnan(std) else std, n))
    return out


def _finish(ax: Axes, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _save(fig: Figure, ax: Axes, path: str | Path, title: str) -> Path:
    _finish(ax, title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def _seeds(table: Table) -> str:
    ns = sorted({c.stats[2] for c in table.cells.values()})
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"


def plot_depth(
    records: Sequence[FlatRecord], path: str | Path, metric: str, taps: Sequence[str] = ("h", "z")
) -> Path | None:
    """``metric`` against head depth, one line per tap.

    Each head sits at the ``head_depth`` its records give (none 0, linear 1, mlp-L L), with its
    label as the tick; heads without a depth (``random``, a file's stem) are left out.
    """
    candidates = [r for r in records if metric in r.metrics and r.fields.get("tap", "h") in taps]
    depths = head_depths(candidates)
    recs = [r for r in candidates if display(r.fields.get("head")) in depths]
    if not recs:
        return None
    table = build_table(recs, rows=("tap",), cols=("head",), metrics=[metric])
    fig = Figure(figsize=(5, 3.6))
    ax = fig.add_subplot()
    for row in table.rows:
        pts = [(depths[label], m, s) for label, m, s, _ in _points(table, row)]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o",
                    capsize=3, label=f"tap {Table.label(row)}")
    ticks: dict[int, list[str]] = {}
    for col in table.cols:  # shallow to deep: build_table orders heads by depth
        ticks.setdefault(depths[Table.label(col)], []).append(Table.label(col))
    ax.set_xticks(list(ticks), ["/".join(labels) for labels in ticks.values()])
    ax.set_xlabel("projection head (depth)")
    ax.set_ylabel(metric)
    return _save(fig, ax, path, f"{metric} vs head depth ({_seeds(table)} seeds)")


def plot_taps(
    records: Sequence[FlatRecord], path: str | Path, metric: str, ylabel: str = ""
) -> Path | None:
    """``metric`` at each tap (h, head.0, ..., z), one line per head."""
    recs = [r for r in records if metric in r.metrics and "tap" in r.fields]
    if not recs:
        return None
    table = build_table(recs, rows=("head",), cols=("tap",), metrics=[metric])
    xs = {Table.label(c): i for i, c in enumerate(table.cols)}
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.add_subplot()
    for row in table.rows:
        pts = _points(table, row)
        ax.errorbar([xs[p[0]] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                    marker="o", capsize=3, label=Table.label(row))
    ax.set_xticks(list(xs.values()), list(xs))
    ax.set_xlabel("tap (encoder output h -> head layers -> z)")
    ax.set_ylabel(ylabel or metric)
    return _save(fig, ax, path, f"{ylabel or metric} per tap ({_seeds(table)} seeds)")


def plot_rankme(records: Sequence[FlatRecord], path: str | Path) -> Path | None:
    """RankMe (effective rank of the features, Garrido et al. 2023) per tap, one line per head."""
    return plot_taps(records, path, RANKME, ylabel="RankMe (effective rank)")


def plot_knn_k(records: Sequence[FlatRecord], path: str | Path, tap: str = "h") -> Path | None:
    """k-NN top-1 accuracy against k (log axis) at ``tap``, one line per head."""
    ks = {m: k for r in records if r.fields.get("tap") == tap for m in r.metrics
          if (k := knn_k(m)) is not None}
    recs = [r for r in records if r.fields.get("tap") == tap and any(m in ks for m in r.metrics)]
    if not recs:
        return None
    table = build_table(recs, rows=("head",), cols=("metric",), metrics=sorted(ks, key=ks.__getitem__))
    fig = Figure(figsize=(5, 3.6))
    ax = fig.add_subplot()
    for row in table.rows:
        pts = _points(table, row)
        ax.errorbar([ks[p[0]] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                    marker="o", capsize=3, label=Table.label(row))
    ax.set_xscale("log")
    shown = sorted({ks[Table.label(c)] for c in table.cols})
    ax.set_xticks(shown, [str(k) for k in shown])
    ax.xaxis.set_minor_formatter(NullFormatter())  # log-axis minor labels: clutter, and slow
    ax.set_xlabel("k (neighbours)")
    ax.set_ylabel("k-NN top-1 (%)")
    return _save(fig, ax, path, f"k-NN accuracy vs k at tap {tap} ({_seeds(table)} seeds)")


PRETRAINING_PANELS = (  # metrics.jsonl key, y label; a panel is drawn when any run logged it
    ("loss", "NT-Xent loss"),
    ("lr", "learning rate"),
    (monitor_key("h"), "online k-NN top-1 at h (%)"),
    (monitor_key("z"), "online k-NN top-1 at z (%)"),
    ("quality/rankme/h", "RankMe at h"),
)


def plot_pretraining(
    curves: Sequence[tuple[str, Sequence[dict[str, Any]]]], path: str | Path
) -> Path | None:
    """Pretraining curves per epoch: loss, lr, and when logged the online k-NN monitor
    (:mod:`pretrain.monitor`) and RankMe at h; runs sharing a label are averaged (band = std).

    Args:
        curves: (label, metrics.jsonl lines) per run (:func:`transfer.records.run_labels`);
            labels are drawn in order of first appearance.
    """
    groups: dict[str, list[dict[int, dict[str, Any]]]] = {}
    for label, lines in curves:
        series = epoch_series(lines)
        if series:
            groups.setdefault(label, []).append(series)
    if not groups:
        return None
    panels = [(key, name) for key, name in PRETRAINING_PANELS
              if any(key in e for runs in groups.values() for s in runs for e in s.values())]
    fig = Figure(figsize=(4.5 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels))
    for label, runs in groups.items():
        for ax, (key, _) in zip(axes, panels, strict=True):
            epochs = sorted({e for s in runs for e in s if key in s[e]})
            if not epochs:
                continue
            vals = [[s[e][key] for s in runs if e in s and key in s[e]] for e in epochs]
            mean = np.array([np.mean(v) for v in vals])
            std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in vals])
            (line,) = ax.plot(epochs, mean, marker="." if len(epochs) < 30 else None,
                              label=f"{label} (n={len(runs)})")
            if len(runs) > 1:
                ax.fill_between(epochs, mean - std, mean + std, alpha=0.2, color=line.get_color())
    for ax, (_, name) in zip(axes, panels, strict=True):
        ax.set_ylabel(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _finish(axes[1], "learning rate (end of epoch)")
    for ax, (_, name) in zip(axes[2:], panels[2:], strict=True):
        _finish(ax, name.replace(" (%)", ""))
    return _save(fig, axes[0], path, "pretraining loss (mean ± std over seeds)")


def write_figures(
    records: Sequence[FlatRecord], runs: Sequence[Path], out_dir: str | Path
) -> tuple[list[tuple[str, Path]], list[str]]:
    """Every figure the records and runs support, written to ``out_dir``.

    Per setup group (:func:`setup_groups`): head depth and per-tap curves of each primary
    metric, k-NN accuracy vs k, RankMe per tap; and one pretraining-curve figure for ``runs``.

    Returns:
        ((title, path) per figure written, one line per figure skipped because its records
        could not be aggregated (e.g. two settings of one probe in one cell) and per run left
        out of the pretraining curves (no readable ``setup.json``)).
    """
    out_dir = Path(out_dir)
    jobs: list[tuple[str, Path, Callable[[Path], Path | None]]] = []
    for name, recs in setup_groups(records):
        sfx, where = (f"_{slug(name)}", f" ({name})") if name else ("", "")
        for m in primary_metrics(recs):
            jobs.append((f"{m} vs head depth{where}", out_dir / f"depth_{slug(m)}{sfx}.png",
                         partial(plot_depth, recs, metric=m)))
            if len({r.fields.get("tap") for r in recs if m in r.metrics}) > 1:
                jobs.append((f"{m} per tap{where}", out_dir / f"taps_{slug(m)}{sfx}.png",
                             partial(plot_taps, recs, metric=m)))
        taps = sorted({str(r.fields.get("tap")) for r in recs}, key=lambda t: sort_key("tap", t))
        for tap in taps:
            jobs.append((f"k-NN accuracy vs k at {tap}{where}", out_dir / f"knn_k_{slug(tap)}{sfx}.png",
                         partial(plot_knn_k, recs, tap=tap)))
        jobs.append((f"RankMe per tap{where}", out_dir / f"rankme{sfx}.png", partial(plot_rankme, recs)))
    labels, left_out = run_labels(runs)
    curves = [(label, read_jsonl(run / METRICS_FILE)) for run, label in labels.items()]
    jobs.append(("pretraining curves per epoch (loss, lr, online k-NN, RankMe when logged)",
                 out_dir / "pretraining.png",
                 partial(plot_pretraining, curves)))
    written, skipped = [], [f"pretraining curve: {line}" for line in left_out]
    for title, path, make in jobs:
        try:
            result = make(path)
        except UserError as exc:
            skipped.append(f"{title}: {exc}")
            continue
        if result is not None:
            written.append((title, result))
    return written, skipped
