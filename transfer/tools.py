"""The ``table``, ``plot`` and ``report`` tools of ``simclr-transfer`` (thin wrappers).

Each reads result records (files, run directories, or folders searched for ``results.jsonl``),
calls the pure cores in :mod:`transfer.tables`, :mod:`transfer.plots` and :mod:`transfer.report`
and writes or prints what they return. :func:`register_tools` adds them to the evaluator
registry (kind ``tool``); it is idempotent and also runs when this module is imported.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pretrain.errors import UserError
from probes.registry import EVALUATORS, Evaluator, register_evaluator
from transfer.stats import DEFAULT_RESAMPLES, Comparison
from transfer.tables import (
    LOWER_IS_BETTER,
    Filter,
    apply_filters,
    build_table,
    compare_rows,
    load_records,
)


def _fields(text: str) -> list[str]:
    return [f.strip() for f in text.split(",") if f.strip()]


def _add_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="+", metavar="RESULTS",
                   help="results.jsonl files, run directories, or folders searched recursively")
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                   help="keep records whose FIELD is VALUE (comma = any of; FIELD!=VALUE drops); "
                   "repeatable, e.g. --filter evaluator=knn --filter tap=h")


def add_table_arguments(p: argparse.ArgumentParser) -> None:
    _add_inputs(p)
    p.add_argument("--rows", default="head", help="field(s) for rows, comma-separated (default: head)")
    p.add_argument("--cols", default="metric",
                   help="field(s) for columns, comma-separated; 'metric' = metric names (default)")
    p.add_argument("--metric", action="append", default=[], metavar="NAME",
                   help="metric name or glob (knn/top1@*); repeatable; required when more than one "
                   "metric remains and 'metric' is not an axis")
    p.add_argument("--format", choices=("md", "latex", "csv"), default="md")
    p.add_argument("-o", "--output", default="", help="write the table to this file (default: print)")
    p.add_argument("--compare", action="append", default=[], metavar="ROW_A,ROW_B",
                   help="paired bootstrap of ROW_A - ROW_B over seeds in every column, "
                   "e.g. mlp-2,linear; repeatable")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resampling")
    p.add_argument("--digits", type=int, default=2, help="decimals shown")
    p.add_argument("--lower-is-better", action="append", default=[], metavar="SUBSTRING",
                   help=f"metrics containing SUBSTRING are better when lower (always: "
                   f"{', '.join(LOWER_IS_BETTER)})")


def run_table(args: argparse.Namespace) -> dict[str, Any]:
    from transfer.report import render  # matplotlib loads only when a tool that needs it runs

    records = load_records(args.results)
    lower = (*LOWER_IS_BETTER, *args.lower_is_better)
    table = build_table(records, _fields(args.rows), _fields(args.cols), args.metric,
                        [Filter.parse(f) for f in args.filter], lower)
    comparisons: list[Comparison] = []
    for spec in args.compare:
        names = [s.strip() for s in spec.split(",")]
        if len(names) != 2 or not all(names):
            raise UserError(f"--compare takes two row labels, ROW_A,ROW_B; got {spec!r}")
        comparisons += compare_rows(table, names[0], names[1], args.bootstrap, args.bootstrap_seed)
    text = render(table, args.format, comparisons, args.digits)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    if args.format == "csv":  # a CSV holds cells only; say the rest where it cannot break parsing
        for line in [table.caption] + [c.describe(args.digits) for c in comparisons]:
            print(line, file=sys.stderr)
    return {"rows": len(table.rows), "cols": len(table.cols),
            "comparisons": [c.describe(args.digits) for c in comparisons]}


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
    _add_inputs(p)
    p.add_argument("-o", "--output", default="figures", help="folder for the PNG files")


def run_plot(args: argparse.Namespace) -> dict[str, Any]:
    from transfer.plots import find_runs, write_figures

    records = apply_filters(load_records(args.results), [Filter.parse(f) for f in args.filter])
    figures, skipped = write_figures(records, find_runs(args.results, records), args.output)
    for title, path in figures:
        print(f"{path}  ({title})")
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if not figures:
        raise UserError(f"no figure could be made from {len(records)} records")
    return {"figures": [str(p) for _, p in figures]}


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    _add_inputs(p)
    p.add_argument("-o", "--output", default="report", help="report folder (index.html inside)")
    p.add_argument("--digits", type=int, default=2, help="decimals shown")


def run_report(args: argparse.Namespace) -> dict[str, Any]:
    from transfer.report import write_report

    records = load_records(args.results)
    index = write_report(args.results, args.output, records,
                         [Filter.parse(f) for f in args.filter], args.digits)
    print(f"wrote {index}")
    return {"report": str(index)}


def add_suite_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", help="suite YAML, e.g. configs/suites/quickstart.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="suite overrides, e.g. seeds=[0,1,2] output_dir=/tmp/runs")
    p.add_argument("--dry-run", action="store_true", help="list the cells and whether they are done")


def run_suite_tool(args: argparse.Namespace) -> dict[str, Any]:
    from transfer.suite import describe_plan, load_suite, print_tables, run_suite

    suite = load_suite(args.suite, args.overrides)
    if args.dry_run:
        for line in describe_plan(suite):
            print(line)
        return {}
    report = run_suite(suite)
    print(
        f"suite {suite.name}: {len(report.pretrained)} runs pretrained, "
        f"{len(report.evaluated)} evaluations, {len(report.skipped)} cells already done, "
        f"{report.seconds:.0f} s"
    )
    print_tables(suite)
    return {"pretrained": report.pretrained, "evaluated": report.evaluated,
            "skipped": report.skipped, "seconds": report.seconds}


TOOLS = (
    Evaluator("suite", "run an experiment grid (variants x seeds x evaluators), resumable, and "
              "print its tables", add_suite_arguments, run_suite_tool, kind="tool"),
    Evaluator("table", "paper tables from result records: mean ± std over seeds, best in bold; "
              "Markdown, LaTeX or CSV", add_table_arguments, run_table, kind="tool"),
    Evaluator("plot", "figures from result records and pretraining logs (PNG)",
              add_plot_arguments, run_plot, kind="tool"),
    Evaluator("report", "static HTML report: every table, figure and run config",
              add_report_arguments, run_report, kind="tool"),
)


def register_tools() -> None:
    """Add ``table``, ``plot`` and ``report`` to the registry (once; safe to call again)."""
    for tool in TOOLS:
        if tool.name not in EVALUATORS:
            register_evaluator(tool)


register_tools()
