"""Flattened result records -> paper tables: pivot, aggregate over seeds, bold, compare, caption.

:func:`build_table` pivots (record, metric) pairs of flattened records
(:class:`~transfer.records.FlatRecord`, read by :mod:`transfer.records`): ``rows`` and ``cols``
are lists of fields, where the pseudo-field ``metric`` is the metric name. Each cell holds one
value per seed (seed = the pair (pretraining seed, evaluation seed)); a cell that would mix
records differing in some other field (two taps, two learning rates) is refused with a message
naming that field, and exact re-runs of one setup keep the newest record. Heads are ordered by
the ``head_depth`` their records give, never by their label. Bold marks the best score of a
column and nothing else: :func:`metric_direction` is the one place that says whether a metric is
a score (higher or lower better) or a recorded setting (``linear/wd``). :func:`make_caption`
states the setup; :func:`make_table` builds a table and its paired comparisons from a
:class:`TableRequest`, and :func:`check_request` checks one before any record exists.
Rendering lives in :mod:`transfer.table_formats`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields

from pretrain.data.benchmark import BENCHMARK
from pretrain.errors import UserError
from pretrain.run import RunSetup
from probes.records import ResultRecord
from transfer.records import (
    METRIC,
    Filter,
    FlatRecord,
    SeedKey,
    apply_filters,
    check_fields,
    display,
    head_depths,
    select_metrics,
)
from transfer.stats import DEFAULT_RESAMPLES, Comparison, compare_paired, mean_std

# Provenance and measurements, not setup: re-runs may differ here and still be the same cell.
VOLATILE_FIELDS = frozenset(
    {"time", "wall_s", "code_version", "hardware", "device", "run_dir", "checkpoint_hash",
     "settings.work_dir"}
)
VOLATILE_PREFIXES = ("settings.train.", "tags.")
# Fields named last when explaining why records cannot share a cell (paths say little).
PATH_FIELDS = ("checkpoint", "source", "settings.source")
# Metrics whose name contains one of these are better when lower; all others when higher.
LOWER_IS_BETTER = ("loss", "error", "alignment", "uniformity", "wall_s")
# Values evaluators record beside their scores that are no score: a chosen hyper-parameter
# (the linear probe's selected penalty ``linear/wd``), a count, an interval. Matched on the name
# after the namespace (``linear/wd`` -> ``wd``) or on its end; never ranked, never bold.
SETTING_NAMES = frozenset({"wd", "lr", "k", "c", "penalty", "temperature", "epochs", "iters",
                           "queries", "n_seeds"})
SETTING_SUFFIXES = ("_ci95", "_std")
Key = tuple[str, ...]

# The fields a record can have, known before any record exists (a suite checks its tables with
# them): ResultRecord's scalars, the setup block (RunSetup's fields with seed as pretrain_seed,
# and what probes.records.setup_block adds), the pseudo-field metric, and the groups whose keys
# each evaluator chooses.
SETUP_BLOCK_FIELDS = ("checkpoint", "checkpoint_hash", "source", "checkpoint_epoch", "run_dir",
                      "init", "unused_keys")
OPEN_FIELD_PREFIXES = ("settings.", "tags.", "splits.", "setup.")
BENCHMARK_ORDER = list(BENCHMARK)  # food101, cifar10, ... (SimCLR Table 8's columns)
RECORD_FIELDS = frozenset(
    {*ResultRecord.__required_keys__, *ResultRecord.__optional_keys__,
     *(f.name for f in fields(RunSetup)), *SETUP_BLOCK_FIELDS, "pretrain_seed", METRIC}
    - {"metrics", "settings", "setup", "splits", "tags"}
)


def is_lower_better(metric: str, patterns: Sequence[str] = LOWER_IS_BETTER) -> bool:
    """Whether smaller values of ``metric`` are better (its name contains one of ``patterns``)."""
    return any(p in metric for p in patterns)


def is_setting(metric: str) -> bool:
    """Whether ``metric`` records a setting, count or interval rather than a score
    (:data:`SETTING_NAMES`, :data:`SETTING_SUFFIXES`): ``linear/wd``, ``retrieval/queries``."""
    parts = metric.split("/")
    return (len(parts) == 2 and parts[1].lower() in SETTING_NAMES) or metric.endswith(SETTING_SUFFIXES)


def metric_direction(metric: str, lower_is_better: Sequence[str] = LOWER_IS_BETTER) -> int:
    """+1 where higher values of ``metric`` are better, -1 where lower ones are, 0 where it is
    no score (:func:`is_setting`; whatever ``lower_is_better`` says). Bold follows it only."""
    if is_setting(metric):
        return 0
    return -1 if is_lower_better(metric, lower_is_better) else 1


def sort_key(
    name: str, value: str, metric_order: Mapping[str, int] | None = None,
    depths: Mapping[str, int] | None = None,
) -> tuple[int, float, str]:
    """The sort key of ``value`` of field ``name``: metrics in ``metric_order`` (as recorded),
    datasets of the transfer benchmark in Kornblith et al.'s order (then the others),
    heads by the depth ``depths`` gives their label (:func:`~transfer.records.head_depths`;
    labels without one after them, alphabetically), taps shallow to deep, numbers by value."""
    if name == METRIC:
        return (0, (metric_order or {}).get(value, 0), value)
    if name == "head":
        depth = (depths or {}).get(value)
        return (0, depth, value) if depth is not None else (1, 0.0, value)
    if name == "dataset" and value.partition(":")[0] in BENCHMARK_ORDER:  # Kornblith's order
        return (0, float(BENCHMARK_ORDER.index(value.partition(":")[0])), value)
    if name in ("tap", "from_tap"):
        if value == "h":
            return (0, -1.0, value)
        if value.startswith("head.") and value[5:].isdigit():
            return (0, float(value[5:]), value)
        return (0, math.inf, value) if value == "z" else (1, 0.0, value)
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


@dataclass
class Cell:
    """The per-seed values of one (row, column) and their summary."""

    metric: str
    values: dict[SeedKey, float]
    best: bool = False

    @property
    def stats(self) -> tuple[float, float, int]:
        """(mean, sample std with ddof=1 (NaN for one seed), number of seeds)."""
        return mean_std(list(self.values.values()))


@dataclass
class Table:
    """Cells keyed by (row key, column key); a key holds one displayed value per axis field."""

    row_fields: tuple[str, ...]
    col_fields: tuple[str, ...]
    rows: list[Key]
    cols: list[Key]
    cells: dict[tuple[Key, Key], Cell]
    caption: str = ""
    notes: list[str] = field(default_factory=list)

    def cell(self, row: Key, col: Key) -> Cell | None:
        """The cell at (``row``, ``col``), or None where no record fills it."""
        return self.cells.get((row, col))

    @staticmethod
    def label(key: Key) -> str:
        """A row or column key as one label (``mlp-2 / h``)."""
        return " / ".join(key)

    def find_row(self, label: str) -> Key:
        """The row whose :meth:`label` is ``label``; a UserError listing the rows if none is."""
        for row in self.rows:
            if self.label(row) == label:
                return row
        raise UserError(f"no row {label!r}; rows: {', '.join(self.label(r) for r in self.rows)}")


def parse_fields(text: str) -> list[str]:
    """``"head, tap"`` -> ``["head", "tap"]``: a comma-separated list of fields."""
    return [f.strip() for f in text.split(",") if f.strip()]


def parse_compare(spec: str) -> tuple[str, str]:
    """``"mlp-2,linear"`` -> ``("mlp-2", "linear")``; anything but two labels is a UserError."""
    names = [s.strip() for s in spec.split(",")]
    if len(names) != 2 or not all(names):
        raise UserError(f"--compare takes two row labels, ROW_A,ROW_B; got {spec!r}")
    return names[0], names[1]


@dataclass(frozen=True)
class TableRequest:
    """What ``simclr-transfer table`` (or a suite) asks for; see :func:`make_table`.

    Attributes:
        rows, cols: fields naming the row and column keys; ``metric`` is the metric name.
        metrics: names or glob patterns choosing metrics (all when empty).
        filters: applied to the records first (a ``metric`` filter to the metric names).
        lower_is_better: substrings marking metrics where smaller is better.
        compare: (row a, row b) label pairs, each compared in every column both fill.
        bootstrap, bootstrap_seed: resamples and seed of the paired bootstrap.
    """

    rows: list[str] = field(default_factory=lambda: ["head"])
    cols: list[str] = field(default_factory=lambda: [METRIC])
    metrics: list[str] = field(default_factory=list)
    filters: list[Filter] = field(default_factory=list)
    lower_is_better: Sequence[str] = LOWER_IS_BETTER
    compare: list[tuple[str, str]] = field(default_factory=list)
    bootstrap: int = DEFAULT_RESAMPLES
    bootstrap_seed: int = 0
    mean_column: bool = False


def make_table(
    records: Sequence[FlatRecord], request: TableRequest
) -> tuple[Table, list[Comparison]]:
    """The table ``request`` describes, built from ``records``, and its paired comparisons
    (row a minus row b per column, in the order of ``request.compare``)."""
    table = build_table(records, request.rows, request.cols, request.metrics, request.filters,
                        request.lower_is_better)
    if request.mean_column:
        add_mean_column(table, request.lower_is_better)
    comparisons = [c for a, b in request.compare
                   for c in compare_rows(table, a, b, request.bootstrap, request.bootstrap_seed)]
    return table, comparisons


def known_field(name: str) -> bool:
    """Whether records can have field ``name`` (:data:`RECORD_FIELDS`, or ``settings.<key>``,
    ``tags.<key>``, ``splits.<key>``, ``setup.<key>``), whatever records exist."""
    return name in RECORD_FIELDS or any(
        name.startswith(p) and len(name) > len(p) for p in OPEN_FIELD_PREFIXES)


def _axis_names(names: Sequence[str], what: str) -> list[str]:
    out = [f.strip() for f in names if f.strip()]
    if not out:
        raise UserError(f"--{what} needs at least one field")
    return out


def _check_axes(rows: Sequence[str], cols: Sequence[str]) -> None:
    if set(rows) & set(cols):
        raise UserError(f"field(s) {', '.join(sorted(set(rows) & set(cols)))} on both rows and cols")


def check_request(request: TableRequest) -> None:
    """Check ``request`` as far as no record is needed (a suite does so before it runs): each
    axis names a field, no field is on both, and every field is one records can have."""
    rows, cols = _axis_names(request.rows, "rows"), _axis_names(request.cols, "cols")
    _check_axes(rows, cols)
    named = [("rows", f) for f in rows] + [("cols", f) for f in cols]
    for what, name in [*named, *(("filter", f.field) for f in request.filters)]:
        if not known_field(name):
            valid = ", ".join(sorted(RECORD_FIELDS))
            raise UserError(f"unknown {what} field {name!r}; valid: {valid}, "
                            f"{', '.join(p + '<key>' for p in OPEN_FIELD_PREFIXES)}")


def _axis(records: Sequence[FlatRecord], names: Sequence[str], what: str) -> list[str]:
    out = _axis_names(names, what)
    check_fields(out, records, what)
    return out


def build_table(
    records: Sequence[FlatRecord],
    rows: Sequence[str] = ("head",),
    cols: Sequence[str] = (METRIC,),
    metrics: Sequence[str] = (),
    filters: Sequence[Filter | str] = (),
    lower_is_better: Sequence[str] = LOWER_IS_BETTER,
) -> Table:
    """Pivot records into a table of per-seed values, with the best cell of each column bold.

    Args:
        records: flattened records (:func:`transfer.records.load_records`).
        rows, cols: fields naming the row and column keys; ``metric`` is the metric name.
        metrics: glob patterns choosing metrics (all when empty); when ``metric`` is on neither
            axis exactly one metric must remain.
        filters: :class:`~transfer.records.Filter` objects or their ``FIELD=VALUE`` text.
        lower_is_better: substrings marking metrics where smaller is better.

    Returns:
        The table, rows and columns in natural order (:func:`sort_key`), with its caption.
    """
    flts = [f if isinstance(f, Filter) else Filter.parse(f) for f in filters]
    row_f, col_f = _axis(records, rows, "rows"), _axis(records, cols, "cols")
    _check_axes(row_f, col_f)
    kept = apply_filters(records, flts)
    metric_flts = [f for f in flts if f.field == METRIC]
    chosen = [m for m in select_metrics(kept, metrics) if all(f.matches(m) for f in metric_flts)]
    if METRIC not in row_f + col_f and len(chosen) != 1:
        raise UserError(
            f"{len(chosen)} metrics selected but 'metric' is not in --rows/--cols; choose one "
            f"with --metric: {', '.join(chosen) or '(none)'}"
        )
    groups: dict[tuple[Key, Key], list[FlatRecord]] = {}
    cell_metric: dict[tuple[Key, Key], str] = {}
    for rec in kept:
        for m in chosen:
            if m in rec.metrics:
                key = (tuple(display(rec.get(f, m)) for f in row_f),
                       tuple(display(rec.get(f, m)) for f in col_f))
                groups.setdefault(key, []).append(rec)
                cell_metric[key] = m
    if not groups:
        raise UserError("no records left after the filters and metric choice")
    cells: dict[tuple[Key, Key], Cell] = {}
    superseded = 0
    for key, group in groups.items():
        values, dropped = seed_values(group, cell_metric[key], Table.label(key[0]), Table.label(key[1]))
        cells[key] = Cell(cell_metric[key], values)
        superseded += dropped
    used = [r for r in kept if any(m in r.metrics for m in chosen)]
    order, depths = {m: i for i, m in enumerate(chosen)}, head_depths(used)
    table = Table(tuple(row_f), tuple(col_f), _sorted_keys((k[0] for k in cells), row_f, order, depths),
                  _sorted_keys((k[1] for k in cells), col_f, order, depths), cells)
    mark_best(table, lower_is_better)
    if superseded:
        table.notes.append(f"{superseded} older duplicate record(s) replaced by newer re-runs")
    best_per = "row" if METRIC in row_f and METRIC not in col_f else "column"
    table.caption = make_caption(used, chosen, row_f + col_f, lower_is_better, table.notes, best_per)
    return table


def _sorted_keys(
    keys: Iterable[Key], names: Sequence[str], order: Mapping[str, int], depths: Mapping[str, int]
) -> list[Key]:
    def key(k: Key) -> list[tuple[int, float, str]]:
        return [sort_key(n, v, order, depths) for n, v in zip(names, k, strict=True)]

    return sorted(set(keys), key=key)


def seed_values(
    group: Sequence[FlatRecord], metric: str, row: str, col: str
) -> tuple[dict[SeedKey, float], int]:
    """One value of ``metric`` per seed of ``group`` (the records of cell (``row``, ``col``)).

    Returns:
        (seed -> value, number of older identical re-runs dropped). Records of one seed that
        differ in a non-volatile field are a UserError naming the field.
    """
    by_seed: dict[SeedKey, list[FlatRecord]] = {}
    for rec in group:
        by_seed.setdefault(rec.seed_key, []).append(rec)
    values: dict[SeedKey, float] = {}
    dropped = 0
    for seed, recs in by_seed.items():
        if len(recs) > 1:
            differing = _differing_fields(recs)
            if differing:
                name = differing[0]
                seen = sorted({display(r.fields.get(name)) for r in recs})
                raise UserError(
                    f"cell ({row}, {col}) mixes {len(recs)} records of seed {seed_text(seed)} "
                    f"that differ in {', '.join(differing[:5])} (e.g. {name}: {', '.join(seen)}); "
                    f"add --filter {name}=VALUE or put {name} in --rows/--cols"
                )
            dropped += len(recs) - 1
        newest = max(recs, key=lambda r: (str(r.fields.get("time", "")), r.order))
        values[seed] = newest.metrics[metric]
    return values, dropped


def seed_text(seed: SeedKey) -> str:
    """``3``, or ``1/0 (pretrain/eval)`` when the pretraining and evaluation seeds differ."""
    pre, ev = seed
    return display(ev) if pre is None or pre == ev else f"{display(pre)}/{display(ev)} (pretrain/eval)"


def _differing_fields(recs: Sequence[FlatRecord]) -> list[str]:
    """Non-volatile fields whose values differ among ``recs``, the most telling first."""
    names = sorted({k for r in recs for k in r.fields}, key=lambda n: (n in PATH_FIELDS, n))
    return [
        n for n in names
        if n not in VOLATILE_FIELDS and not n.startswith(VOLATILE_PREFIXES)
        and len({display(r.fields.get(n)) for r in recs}) > 1
    ]


MEAN_LABEL = "mean"


def add_mean_column(table: Table, lower_is_better: Sequence[str] = LOWER_IS_BETTER) -> None:
    """Append a ``mean`` column: per row and seed, the mean over the table's columns (the
    "average" column of transfer tables, e.g. ssl-transfer's), then mean +- std over seeds.

    A row gets it only where every column holds the same metric for the same seeds: an average
    over a different set of datasets is not comparable, so such rows are left empty and the
    table says why in a note.
    """
    if METRIC in table.col_fields:
        raise UserError("a mean column averages one metric over the columns; put 'metric' "
                        "on the rows or choose one with --metric")
    col = (MEAN_LABEL, *([""] * (len(table.col_fields) - 1)))
    incomplete = []
    for row in table.rows:
        cells = [table.cell(row, c) for c in table.cols]
        present = [c for c in cells if c is not None]
        seeds = set(present[0].values) if present else set()
        if (len(present) < len(cells) or len({c.metric for c in present}) != 1
                or any(set(c.values) != seeds for c in present)):
            incomplete.append(Table.label(row))
            continue
        values = {seed: sum(c.values[seed] for c in present) / len(present) for seed in seeds}
        table.cells[(row, col)] = Cell(present[0].metric, values)
    table.cols.append(col)
    for cell in table.cells.values():
        cell.best = False
    mark_best(table, lower_is_better)
    note = (f"{MEAN_LABEL}: the per-seed average over the {len(table.cols) - 1} columns, then "
            "mean +- std over seeds")
    if incomplete:
        note += (f"; none for {', '.join(incomplete)} (not every column filled with the same "
                 "seeds)")
    table.notes.append(note)
    table.caption += f" {note[0].upper()}{note[1:]}."


def mark_best(table: Table, lower_is_better: Sequence[str] = LOWER_IS_BETTER) -> None:
    """Set ``best`` on the best mean of each column among cells of one metric (ties all best,
    unless the whole column ties); a metric without a direction (:func:`metric_direction`: a
    chosen hyper-parameter, a count) has none.

    When ``metric`` is on the rows only (a transposed table), each row is compared instead:
    cells of different metrics are never compared.
    """
    by_row = METRIC in table.row_fields and METRIC not in table.col_fields
    lines = [[table.cell(r, c) for c in table.cols] for r in table.rows] if by_row else [
        [table.cell(r, c) for r in table.rows] for c in table.cols]
    for line in lines:
        by_metric: dict[str, list[Cell]] = {}
        for cell in line:
            if cell is not None:
                by_metric.setdefault(cell.metric, []).append(cell)
        for metric, cells in by_metric.items():
            sign = float(metric_direction(metric, lower_is_better))
            if len(cells) < 2 or sign == 0:  # a setting (the chosen penalty) is never best
                continue
            best = max(sign * c.stats[0] for c in cells)
            flags = [math.isclose(sign * c.stats[0], best, rel_tol=1e-12, abs_tol=1e-12) for c in cells]
            if not all(flags):  # a column where every cell ties has no best
                for c, flag in zip(cells, flags, strict=True):
                    c.best = flag


def compare_rows(
    table: Table, a: str, b: str, resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> list[Comparison]:
    """Row ``a`` minus row ``b`` in every column both fill, paired by seed (bootstrap CI)."""
    row_a, row_b = table.find_row(a), table.find_row(b)
    out = []
    for col in table.cols:
        ca, cb = table.cell(row_a, col), table.cell(row_b, col)
        if ca is not None and cb is not None:
            out.append(compare_paired(ca.values, cb.values, (a, b, Table.label(col)), resamples, seed))
    if not out:
        raise UserError(f"rows {a!r} and {b!r} share no column")
    return out


CAPTION_FIELDS = ("dataset", "evaluator", "tap", "head", "encoder", "pretrain_dataset", "epochs",
                  "batch_size")


def _values(records: Sequence[FlatRecord], name: str) -> list[str]:
    seen = {display(r.fields[name]) for r in records if name in r.fields}
    depths = head_depths(records) if name == "head" else None
    return sorted(seen, key=lambda v: sort_key(name, v, None, depths))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def make_caption(
    records: Sequence[FlatRecord],
    metrics: Sequence[str],
    axes: Sequence[str],
    lower_is_better: Sequence[str] = LOWER_IS_BETTER,
    notes: Sequence[str] = (),
    best_per: str = "column",
) -> str:
    """The caption: what the table shows, how cells are summarised, and the setup they share.

    Lists each setup field that is not an axis (one value, or ``in {a, b}`` when mixed), each
    evaluator's scalar settings (``varies`` when not constant), the hardware, and the summed
    evaluation wall time of the records.
    """
    what = metrics[0] if len(metrics) == 1 and METRIC not in axes else "Results"
    lower = [m for m in metrics if metric_direction(m, lower_is_better) < 0]
    unranked = [m for m in metrics if metric_direction(m, lower_is_better) == 0]
    order = "higher is better" if not lower else "lower is better for " + ", ".join(lower)
    if unranked:
        order += "; not ranked: " + ", ".join(unranked)
    parts = [
        f"{what} by {' / '.join(a for a in axes)}. Mean ± sample std (ddof=1) over seeds, "
        f"n = seeds per cell; best per {best_per} in bold ({order})."
    ]
    setup = []
    for name in CAPTION_FIELDS:
        vals = _values(records, name)
        if name in axes or not vals:
            continue
        setup.append(f"{name}={vals[0]}" if len(vals) == 1 else f"{name} in {{{', '.join(vals)}}}")
    if setup:
        parts.append("Setup: " + ", ".join(setup) + ".")
    for ev in _values(records, "evaluator"):
        recs = [r for r in records if r.fields.get("evaluator") == ev]
        names = sorted({k for r in recs for k in r.fields if k.count(".") == 1
                        and k.startswith("settings.") and k not in VOLATILE_FIELDS})
        items = []
        for name in names:
            vals = _values(recs, name)
            if len(vals) == 1 and len(vals[0]) <= 40:
                items.append(f"{name[9:]}={vals[0]}")
            elif len(vals) > 1:
                items.append(f"{name[9:]} varies")
        if items:
            parts.append(f"{ev} settings: {', '.join(items)}.")
    hardware = _values(records, "hardware")
    if hardware:
        parts.append(f"Hardware: {'; '.join(hardware)}.")
    wall = sum(float(r.fields.get("wall_s", 0.0)) for r in records)
    parts.append(f"Total evaluation time {_duration(wall)} over {len(records)} records.")
    parts.extend(f"{n[0].upper()}{n[1:]}." for n in notes)
    return " ".join(parts)
