"""Result records -> paper tables: load, flatten, filter, pivot, aggregate over seeds, render.

Tables are made from the records in ``results.jsonl`` files only (DESIGN.md, flow step 3).
:func:`flatten_record` is the one place that knows the record format; everything else reads
:class:`FlatRecord` fields (``evaluator``, ``tap``, ``dataset``, ``head`` (``none``, ``linear``,
``mlp-2``...), ``num_layers``, ``encoder``, ``epochs``, ``seed``, ``settings.<name>``...) and
metrics (``knn/top1@k200``...).

:func:`build_table` pivots (record, metric) pairs: ``rows`` and ``cols`` are lists of fields,
where the pseudo-field ``metric`` is the metric name. Each cell holds one value per seed
(seed = the pair (pretraining seed, evaluation seed)); a cell that would mix records differing in
some other field (two taps, two learning rates) is refused with a message naming that field,
and exact re-runs of one setup keep the newest record. :func:`make_caption` states the setup;
rendering (Markdown, LaTeX, CSV, HTML) lives in :mod:`transfer.report`.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrain.errors import UserError
from pretrain.runs import RESULTS_FILE, read_jsonl
from transfer.stats import Comparison, compare_paired, mean_std

METRIC = "metric"  # pseudo-field: the metric name of a (record, metric) pair
# Provenance and measurements, not setup: re-runs may differ here and still be the same cell.
VOLATILE_FIELDS = frozenset(
    {"time", "wall_s", "code_version", "hardware", "device", "run_dir", "setup.run_dir",
     "checkpoint_hash", "settings.work_dir"}
)
VOLATILE_PREFIXES = ("settings.train.", "tags.")
# Fields named last when explaining why records cannot share a cell (paths say little).
PATH_FIELDS = ("checkpoint", "source", "settings.source")
# Metrics whose name contains one of these are better when lower; all others when higher.
LOWER_IS_BETTER = ("loss", "error", "alignment", "uniformity", "wall_s")
SeedKey = tuple[Any, Any]


@dataclass(frozen=True)
class FlatRecord:
    """One result record as flat scalar fields and numeric metrics."""

    fields: dict[str, Any]
    metrics: dict[str, float]
    source: str = ""  # the results file it was read from
    order: int = 0  # position among the loaded records; a larger order is a newer record

    @property
    def seed_key(self) -> SeedKey:
        return (self.fields.get("pretrain_seed"), self.fields.get("seed"))

    def get(self, name: str, metric: str = "") -> Any:
        return metric if name == METRIC else self.fields.get(name)


def head_label(head: str, num_layers: Any = None) -> str:
    """``none``, ``linear``, or ``mlp-<num_layers>`` (``mlp-2`` = SimCLR v1, ``mlp-3`` = v2)."""
    return f"mlp-{num_layers}" if head == "mlp" and num_layers is not None else str(head)


def head_depth(label: str) -> int | None:
    """Layers in the head: none=0, linear=1, mlp-L=L; None for anything else (``random``)."""
    if label in ("none", "linear"):
        return 0 if label == "none" else 1
    if label.startswith("mlp-") and label[4:].isdigit():
        return int(label[4:])
    return None


def _scalar(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return ",".join(str(_scalar(v)) for v in value)
    return value


def _flatten(prefix: str, data: dict[str, Any], out: dict[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            _flatten(f"{prefix}{key}.", value, out)
        elif value is not None:
            out[f"{prefix}{key}"] = _scalar(value)


def flatten_record(rec: dict[str, Any], source: str = "", order: int = 0) -> FlatRecord:
    """The one function that reads the record format (see ``probes/records.py``).

    Top-level scalars keep their names and top-level dicts are dotted (``splits.train``);
    ``setup`` keys join the top level (a clash is renamed: ``setup.seed``, as detection writes
    it, -> ``pretrain_seed``, others -> ``setup.<key>``); ``settings`` keys become
    ``settings.<key>`` (nested dicts dotted). ``head`` is the head label, ``head_kind`` the raw
    head name; a record without a head (random or file init) takes its ``init`` as label.
    Non-numeric metrics are dropped.
    """
    fields: dict[str, Any] = {}
    for key, value in rec.items():
        if key in ("metrics", "settings", "setup"):
            continue
        if isinstance(value, dict):  # splits, tags, ...
            _flatten(f"{key}.", value, fields)
        elif value is not None:
            fields[key] = _scalar(value)
    for key, value in (rec.get("setup") or {}).items():
        if value is None or isinstance(value, dict):
            continue
        name = key if key not in fields else ("pretrain_seed" if key == "seed" else f"setup.{key}")
        fields[name] = _scalar(value)
    if "head" in fields:
        fields["head_kind"] = fields["head"]
        fields["head"] = head_label(fields["head"], fields.get("num_layers"))
    elif "init" in fields:
        fields["head"] = str(fields["init"])
    _flatten("settings.", rec.get("settings") or {}, fields)
    metrics = {
        str(k): float(v)
        for k, v in (rec.get("metrics") or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return FlatRecord(fields, metrics, source, order)


def find_result_files(paths: Iterable[str | Path]) -> list[Path]:
    """Result files named by ``paths``: a file, a run directory, or a folder searched recursively."""
    found: dict[Path, None] = {}
    for p in map(Path, paths):
        if p.is_file():
            found[p.resolve()] = None
        elif p.is_dir():
            hits = sorted(p.rglob(RESULTS_FILE))
            if not hits:
                raise UserError(f"no {RESULTS_FILE} under {p}; run an evaluator on it first")
            found.update((h.resolve(), None) for h in hits)
        else:
            raise UserError(
                f"results not found: {p} (give a results.jsonl, a run directory or a folder)"
            )
    return list(found)


def load_records(paths: Iterable[str | Path]) -> list[FlatRecord]:
    """Every record (with at least one numeric metric) in the result files under ``paths``."""
    records: list[FlatRecord] = []
    files = find_result_files(paths)
    for f in files:
        for rec in read_jsonl(f):
            if isinstance(rec, dict) and isinstance(rec.get("metrics"), dict):
                flat = flatten_record(rec, str(f), len(records))
                if flat.metrics:
                    records.append(flat)
    if not records:
        raise UserError(f"no result records in {', '.join(map(str, files))}")
    return records


def valid_fields(records: Sequence[FlatRecord]) -> list[str]:
    return sorted({METRIC, *(k for r in records for k in r.fields)})


def check_fields(names: Iterable[str], records: Sequence[FlatRecord], what: str) -> None:
    """Raise a one-line :class:`UserError` naming every valid field if a name is unknown."""
    valid = valid_fields(records)
    for name in names:
        if name not in valid:
            plain = [v for v in valid if not v.startswith("settings.")]
            more = len(valid) - len(plain)
            extra = f" and {more} settings.* fields" if more > 20 else ""
            shown = plain if extra else valid
            raise UserError(f"unknown {what} field {name!r}; valid: {', '.join(shown)}{extra}")


def display(value: Any) -> str:
    """A field value as shown in tables and matched by filters (``100``, ``0.1``, ``true``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    return "–" if value is None else str(value)


@dataclass(frozen=True)
class Filter:
    """``field=v1,v2`` keeps records whose field is one of the values; ``field!=v`` drops them."""

    field: str
    values: tuple[str, ...]
    negate: bool = False

    @classmethod
    def parse(cls, text: str) -> Filter:
        negate = "!=" in text
        name, sep, values = text.partition("!=" if negate else "=")
        if not sep or not name.strip() or not values.strip():
            raise UserError(f"bad filter {text!r}; write FIELD=VALUE[,VALUE...] or FIELD!=VALUE")
        return cls(name.strip(), tuple(v.strip() for v in values.split(",")), negate)

    def matches(self, value: Any) -> bool:
        hit = value is not None and any(_same(display(value), v) for v in self.values)
        return hit != self.negate


def _same(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    except ValueError:
        return False


def apply_filters(records: Sequence[FlatRecord], filters: Sequence[Filter]) -> list[FlatRecord]:
    """Records matching every filter; a filter that keeps nothing lists the values it could match."""
    check_fields([f.field for f in filters if f.field != METRIC], records, "filter")
    kept = list(records)
    for flt in filters:
        if flt.field == METRIC:
            continue  # applied to (record, metric) pairs in build_table
        before = kept
        kept = [r for r in kept if flt.matches(r.fields.get(flt.field))]
        if not kept:
            seen = sorted({display(r.fields[flt.field]) for r in before if flt.field in r.fields})
            raise UserError(
                f"no records match {flt.field}{'!=' if flt.negate else '='}{','.join(flt.values)}; "
                f"values of {flt.field}: {', '.join(seen) or '(none)'}"
            )
    return kept


def metric_names(records: Sequence[FlatRecord]) -> list[str]:
    """Metric names in order of first appearance (evaluators write them in a sensible order)."""
    return list(dict.fromkeys(m for r in records for m in r.metrics))


def select_metrics(records: Sequence[FlatRecord], patterns: Sequence[str]) -> list[str]:
    """Metrics equal to or matching a glob in ``patterns`` (all metrics when empty)."""
    names = metric_names(records)
    if not patterns:
        return names
    chosen = [m for m in names if any(m == p or fnmatch.fnmatchcase(m, p) for p in patterns)]
    if not chosen:
        raise UserError(f"no metric matches {', '.join(patterns)}; available: {', '.join(names)}")
    return chosen


def is_lower_better(metric: str, patterns: Sequence[str] = LOWER_IS_BETTER) -> bool:
    return any(p in metric for p in patterns)


def sort_key(name: str, value: str, metric_order: dict[str, int]) -> tuple[int, float, str]:
    """Natural order: metrics as recorded, heads by depth, taps shallow to deep, numbers by value."""
    if name == METRIC:
        return (0, metric_order.get(value, 0), value)
    if name == "head":
        depth = head_depth(value)
        return (0, depth, value) if depth is not None else (1, 0.0, value)
    if name == "tap":
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
        return mean_std(list(self.values.values()))


@dataclass
class Table:
    row_fields: tuple[str, ...]
    col_fields: tuple[str, ...]
    rows: list[tuple[str, ...]]
    cols: list[tuple[str, ...]]
    cells: dict[tuple[tuple[str, ...], tuple[str, ...]], Cell]
    caption: str = ""
    notes: list[str] = field(default_factory=list)

    def cell(self, row: tuple[str, ...], col: tuple[str, ...]) -> Cell | None:
        return self.cells.get((row, col))

    @staticmethod
    def label(key: tuple[str, ...]) -> str:
        return " / ".join(key)

    def find_row(self, label: str) -> tuple[str, ...]:
        for row in self.rows:
            if self.label(row) == label:
                return row
        raise UserError(f"no row {label!r}; rows: {', '.join(self.label(r) for r in self.rows)}")


def _axis(records: Sequence[FlatRecord], fields: Sequence[str], what: str) -> list[str]:
    names = [f.strip() for f in fields if f.strip()]
    if not names:
        raise UserError(f"--{what} needs at least one field")
    check_fields(names, records, what)
    return names


def build_table(
    records: Sequence[FlatRecord],
    rows: Sequence[str] = ("head",),
    cols: Sequence[str] = (METRIC,),
    metrics: Sequence[str] = (),
    filters: Sequence[Filter | str] = (),
    lower_is_better: Sequence[str] = LOWER_IS_BETTER,
) -> Table:
    """Pivot records into a table of per-seed values, bold the best cell of each column.

    Args:
        records: flattened records (:func:`load_records`).
        rows, cols: fields naming the row and column keys; ``metric`` is the metric name.
        metrics: glob patterns choosing metrics (all when empty); when ``metric`` is on neither
            axis exactly one metric must remain.
        filters: :class:`Filter` objects or their ``FIELD=VALUE`` text.
        lower_is_better: substrings marking metrics where smaller is better.
    """
    flts = [f if isinstance(f, Filter) else Filter.parse(f) for f in filters]
    row_f, col_f = _axis(records, rows, "rows"), _axis(records, cols, "cols")
    if set(row_f) & set(col_f):
        raise UserError(f"field(s) {', '.join(set(row_f) & set(col_f))} on both rows and cols")
    kept = apply_filters(records, flts)
    metric_flts = [f for f in flts if f.field == METRIC]
    chosen = [m for m in select_metrics(kept, metrics) if all(f.matches(m) for f in metric_flts)]
    if METRIC not in row_f + col_f and len(chosen) != 1:
        raise UserError(
            f"{len(chosen)} metrics selected but 'metric' is not in --rows/--cols; choose one "
            f"with --metric: {', '.join(chosen) or '(none)'}"
        )
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[FlatRecord]] = {}
    cell_metric: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
    for rec in kept:
        for m in chosen:
            if m not in rec.metrics:
                continue
            key = (
                tuple(display(rec.get(f, m)) for f in row_f),
                tuple(display(rec.get(f, m)) for f in col_f),
            )
            groups.setdefault(key, []).append(rec)
            cell_metric[key] = m
    if not groups:
        raise UserError("no records left after the filters and metric choice")
    cells: dict[tuple[tuple[str, ...], tuple[str, ...]], Cell] = {}
    superseded = 0
    for key, group in groups.items():
        values, dropped = seed_values(group, cell_metric[key], Table.label(key[0]), Table.label(key[1]))
        cells[key] = Cell(cell_metric[key], values)
        superseded += dropped
    order = {m: i for i, m in enumerate(chosen)}
    table = Table(tuple(row_f), tuple(col_f), _sorted_keys((k[0] for k in cells), row_f, order),
                  _sorted_keys((k[1] for k in cells), col_f, order), cells)
    mark_best(table, lower_is_better)
    if superseded:
        table.notes.append(f"{superseded} older duplicate record(s) replaced by newer re-runs")
    best_per = "row" if METRIC in row_f and METRIC not in col_f else "column"
    used = [r for r in kept if any(m in r.metrics for m in chosen)]
    table.caption = make_caption(used, chosen, row_f + col_f, lower_is_better, table.notes, best_per)
    return table


def _sorted_keys(
    keys: Iterable[tuple[str, ...]], names: Sequence[str], order: dict[str, int]
) -> list[tuple[str, ...]]:
    def key(k: tuple[str, ...]) -> list[tuple[int, float, str]]:
        return [sort_key(n, v, order) for n, v in zip(names, k, strict=True)]

    return sorted(set(keys), key=key)


def seed_values(
    group: Sequence[FlatRecord], metric: str, row: str, col: str
) -> tuple[dict[SeedKey, float], int]:
    """One value per seed: identical re-runs keep the newest; differing records are an error."""
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
    """``3``, or ``1/0`` (pretraining/evaluation seed) when the two differ."""
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


def mark_best(table: Table, lower_is_better: Sequence[str] = LOWER_IS_BETTER) -> None:
    """Bold the best mean of each column among cells of one metric (ties all bold, unless the
    whole column ties).

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
            if len(cells) < 2:
                continue
            sign = -1.0 if is_lower_better(metric, lower_is_better) else 1.0
            best = max(sign * c.stats[0] for c in cells)
            flags = [math.isclose(sign * c.stats[0], best, rel_tol=1e-12, abs_tol=1e-12) for c in cells]
            if not all(flags):  # a column where every cell ties has no best
                for c, flag in zip(cells, flags, strict=True):
                    c.best = flag


def compare_rows(
    table: Table, a: str, b: str, resamples: int = 10_000, seed: int = 0
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
    return sorted(seen, key=lambda v: sort_key(name, v, {}))


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
    """What the table shows, how cells are summarised, and the setup they share.

    Lists each setup field that is not an axis (one value, or ``in {a, b}`` when mixed), each
    evaluator's scalar settings (``varies`` when not constant), the hardware, and the summed
    evaluation wall time of the records.
    """
    what = metrics[0] if len(metrics) == 1 and METRIC not in axes else "Results"
    lower = [m for m in metrics if is_lower_better(m, lower_is_better)]
    parts = [
        f"{what} by {' / '.join(a for a in axes)}. Mean ± sample std (ddof=1) over seeds, "
        f"n = seeds per cell; best per {best_per} in bold "
        f"({'higher is better' if not lower else 'lower is better for ' + ', '.join(lower)})."
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
