"""Result records and run directories, read for tables, figures, the report and suites.

The record format is written by :mod:`probes.records` (:func:`~probes.records.make_record`,
whose ``setup`` block comes from :func:`~probes.records.setup_block`); this module is the one
reader of it. :func:`flatten_record` turns a record into a :class:`FlatRecord`: flat scalar
fields (``evaluator``, ``tap``, ``dataset``, ``head`` (the head's label: ``none``, ``linear``,
``mlp-2``, ``random``...), ``head_kind``, ``head_depth``, ``encoder``, ``epochs``, ``seed``,
``pretrain_seed``, ``settings.<name>``, ``tags.<name>``...) and numeric metrics
(``knn/top1@k200``...). Everything downstream reads those fields, never the raw record.

Run directories are read through :mod:`pretrain.run` only: :func:`find_runs` finds them and
:func:`run_labels` names them from their ``setup.json``.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.errors import CheckpointError, UserError
from pretrain.jsonl import read_jsonl
from pretrain.run import RESULTS_FILE, SETUP_FILE, find_run_dirs, read_setup

METRIC = "metric"  # pseudo-field: the metric name of a (record, metric) pair
KNN_K = re.compile(r"^knn/top1@k(\d+)$")
SeedKey = tuple[Any, Any]  # (pretraining seed, evaluation seed)


@dataclass(frozen=True)
class FlatRecord:
    """One result record as flat scalar fields and numeric metrics."""

    fields: dict[str, Any]
    metrics: dict[str, float]
    source: str = ""  # the results file it was read from
    order: int = 0  # position among the loaded records; a larger order is a newer record

    @property
    def seed_key(self) -> SeedKey:
        """(pretraining seed, evaluation seed): what tells two runs of one setup apart."""
        return (self.fields.get("pretrain_seed"), self.fields.get("seed"))

    def get(self, name: str, metric: str = "") -> Any:
        """Field ``name``, or ``metric`` for the pseudo-field ``metric``; None when absent."""
        return metric if name == METRIC else self.fields.get(name)


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
    """The record ``rec`` (one line of ``results.jsonl``) as a :class:`FlatRecord`.

    Top-level scalars keep their names and top-level dicts are dotted (``splits.train``);
    ``setup`` keys join the top level verbatim (``head``, ``head_kind``, ``head_depth``,
    ``pretrain_seed``...; one that clashes with a top-level key becomes ``setup.<key>``);
    ``settings`` keys become ``settings.<key>`` (nested dicts dotted). Lists become
    comma-joined text (``taps`` -> ``h,head.0,z``), null values are dropped, and so are
    non-numeric metrics.
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
        fields[key if key not in fields else f"setup.{key}"] = _scalar(value)
    _flatten("settings.", rec.get("settings") or {}, fields)
    metrics = {
        str(k): float(v)
        for k, v in (rec.get("metrics") or {}).items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return FlatRecord(fields, metrics, source, order)


def find_result_files(paths: Iterable[str | Path]) -> list[Path]:
    """The result files named by ``paths`` (a file, a run directory, or a folder searched
    recursively), resolved, each once, first seen first."""
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
    """Every record with at least one numeric metric in the result files under ``paths``, in
    file order; no record at all is a :class:`UserError`."""
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
    """Every field name the records have, plus ``metric``, sorted."""
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
        """The filter written ``FIELD=VALUE[,VALUE...]`` or ``FIELD!=VALUE`` (else a UserError)."""
        negate = "!=" in text
        name, sep, values = text.partition("!=" if negate else "=")
        if not sep or not name.strip() or not values.strip():
            raise UserError(f"bad filter {text!r}; write FIELD=VALUE[,VALUE...] or FIELD!=VALUE")
        return cls(name.strip(), tuple(v.strip() for v in values.split(",")), negate)

    def matches(self, value: Any) -> bool:
        """Whether a record with this field value is kept (numbers compare by value)."""
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
    """The records matching every filter (``metric`` filters are left to the table builder);
    a filter that keeps nothing is a UserError listing the values it could match."""
    check_fields([f.field for f in filters if f.field != METRIC], records, "filter")
    kept = list(records)
    for flt in filters:
        if flt.field == METRIC:
            continue
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
    """The metrics equal to or matching a glob in ``patterns`` (all metrics when empty)."""
    names = metric_names(records)
    if not patterns:
        return names
    chosen = [m for m in names if any(m == p or fnmatch.fnmatchcase(m, p) for p in patterns)]
    if not chosen:
        raise UserError(f"no metric matches {', '.join(patterns)}; available: {', '.join(names)}")
    return chosen


def knn_k(metric: str) -> int | None:
    """The k of a k-NN accuracy metric (``knn/top1@k200`` -> 200), else None."""
    match = KNN_K.match(metric)
    return int(match.group(1)) if match else None


def primary_metrics(records: Sequence[FlatRecord]) -> list[str]:
    """One headline metric per evaluator namespace: k-NN at its largest k, else the first top-1,
    else the first metric; the ``quality`` namespace has none (RankMe has its own figure)."""
    names = metric_names(records)
    out = []
    for ns in dict.fromkeys(m.split("/")[0] for m in names):
        if ns == "quality":
            continue
        mine = [m for m in names if m.split("/")[0] == ns]
        knn = {m: k for m in mine if (k := knn_k(m)) is not None}
        top1 = [m for m in mine if "top1" in m]
        out.append(max(knn, key=knn.__getitem__) if knn else (top1[0] if top1 else mine[0]))
    return out


def head_depths(records: Iterable[FlatRecord]) -> dict[str, int]:
    """Head label -> the ``head_depth`` the records give it (labels without one are left out;
    a label recorded with several depths gets the smallest)."""
    depths: dict[str, int] = {}
    for r in records:
        depth = r.fields.get("head_depth")
        if "head" in r.fields and isinstance(depth, (int, float)) and not isinstance(depth, bool):
            label = display(r.fields["head"])
            depths[label] = min(int(depth), depths.get(label, int(depth)))
    return depths


GROUP_FIELDS = ("dataset", "pretrain_dataset", "encoder", "epochs", "batch_size")


def setup_groups(records: Sequence[FlatRecord]) -> list[tuple[str, list[FlatRecord]]]:
    """The records split by the :data:`GROUP_FIELDS` that vary among them: (name, records) per
    group, the name being ``field=value ...`` (empty when nothing varies)."""
    varying = [f for f in GROUP_FIELDS if len({display(r.fields.get(f)) for r in records}) > 1]
    groups: dict[tuple[str, ...], list[FlatRecord]] = {}
    for r in records:
        groups.setdefault(tuple(display(r.fields.get(f)) for f in varying), []).append(r)
    return [(" ".join(f"{f}={v}" for f, v in zip(varying, key, strict=True)), recs)
            for key, recs in sorted(groups.items())]


def find_runs(paths: Sequence[str | Path], records: Sequence[FlatRecord] = ()) -> list[Path]:
    """The run directories (with ``metrics.jsonl``) named by or found under ``paths``, or
    recorded as the ``run_dir`` of ``records``; resolved, first seen first."""
    recorded = [str(r.fields["run_dir"]) for r in records if "run_dir" in r.fields]
    return find_run_dirs(paths, extra=recorded)


def run_labels(runs: Sequence[Path]) -> tuple[dict[Path, str], list[str]]:
    """Each run's head label (``mlp-2``) from its ``setup.json``, prefixed by the pretraining
    dataset, encoder and epochs where those differ between the runs (so that curves never merge
    runs of different setups).

    Returns:
        (run -> label, ordered by those prefixes, then head depth shallow to deep, then label;
        one line per run left out because its ``setup.json`` is missing or unreadable).
    """
    setups, skipped = {}, []
    for run in runs:
        try:
            setups[run] = read_setup(run / SETUP_FILE)
        except CheckpointError as exc:
            skipped.append(f"run {run} left out: {exc} (simclr-pretrain writes it; loading the "
                           "run for any probe rebuilds it)")
    keys = {run: (s.pretrain_dataset, s.encoder, f"{s.epochs} ep") for run, s in setups.items()}
    varying = [i for i in range(3) if len({k[i] for k in keys.values()}) > 1]
    prefix = {run: [key[i] for i in varying] for run, key in keys.items()}
    order = sorted(setups, key=lambda run: (prefix[run], setups[run].head_depth, setups[run].head))
    return {run: " ".join([*prefix[run], setups[run].head]) for run in order}, skipped


def epoch_series(lines: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Epoch -> its line of a run's ``metrics.jsonl``, epochs ascending; after a resume the
    epoch's last line wins, and event lines (resume, summary) are skipped."""
    series: dict[int, dict[str, Any]] = {}
    for line in lines:
        if "event" not in line and isinstance(line.get("epoch"), int):
            series[line["epoch"]] = line
    return dict(sorted(series.items()))
