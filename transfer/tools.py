"""The ``table``, ``plot`` and ``report`` tools of ``simclr-transfer`` (thin wrappers).

Each reads result records (files, run directories, or folders searched for ``results.jsonl``)
with :mod:`transfer.records`, calls the pure cores in :mod:`transfer.tables`,
:mod:`transfer.table_formats`, :mod:`transfer.plots` and :mod:`transfer.report` and writes or
prints what they return. :data:`TOOLS` are registered by :mod:`transfer.commands`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pretrain.errors import UserError
from pretrain.run import CONFIG_FILE, is_run_dir
from probes.registry import Evaluator
from transfer.records import Filter, apply_filters, find_runs, load_records
from transfer.stats import DEFAULT_RESAMPLES
from transfer.table_formats import TABLE_FORMATS
from transfer.tables import (
    LOWER_IS_BETTER,
    TableRequest,
    make_table,
    parse_compare,
    parse_fields,
)


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
    formats = [TABLE_FORMATS.get(name) for name in TABLE_FORMATS]  # read when the parser is built
    p.add_argument("--format", choices=[f.name for f in formats], default="md",
                   help="; ".join(f"{f.name}: {f.description or f.extension}" for f in formats)
                   + " (default: md)")
    p.add_argument("-o", "--output", default="", help="write the table to this file (default: print)")
    p.add_argument("--compare", action="append", default=[], metavar="ROW_A,ROW_B",
                   help="paired bootstrap of ROW_A - ROW_B over seeds in every column, "
                   "e.g. mlp-2,linear; repeatable")
    p.add_argument("--mean-col", action="store_true",
                   help="append a column with each row's mean over the columns (per seed)")
    p.add_argument("--bootstrap", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples")
    p.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the bootstrap resampling")
    p.add_argument("--digits", type=int, default=2, help="decimals shown")
    p.add_argument("--lower-is-better", action="append", default=[], metavar="SUBSTRING",
                   help=f"metrics containing SUBSTRING are better when lower (always: "
                   f"{', '.join(LOWER_IS_BETTER)})")


def table_request(args: argparse.Namespace) -> TableRequest:
    """The :class:`~transfer.tables.TableRequest` of ``simclr-transfer table`` arguments."""
    return TableRequest(
        rows=parse_fields(args.rows), cols=parse_fields(args.cols), metrics=list(args.metric),
        filters=[Filter.parse(f) for f in args.filter],
        lower_is_better=(*LOWER_IS_BETTER, *args.lower_is_better),
        compare=[parse_compare(spec) for spec in args.compare],
        mean_column=args.mean_col,
        bootstrap=args.bootstrap, bootstrap_seed=args.bootstrap_seed,
    )


def run_table(args: argparse.Namespace) -> dict[str, Any]:
    """Print or write one table; returns its size and the comparisons' descriptions."""
    fmt = TABLE_FORMATS.get(args.format)
    table, comparisons = make_table(load_records(args.results), table_request(args))
    text = fmt.render(table, comparisons, args.digits)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    if not fmt.carries_caption:  # say the rest where it cannot break parsing the table
        for line in [table.caption] + [c.describe(args.digits) for c in comparisons]:
            print(line, file=sys.stderr)
    return {"rows": len(table.rows), "cols": len(table.cols),
            "comparisons": [c.describe(args.digits) for c in comparisons]}


def _add_embedding_arguments(p: argparse.ArgumentParser) -> None:
    """The options of an embedding map (``plot --kind embedding``, the report's map)."""
    p.add_argument("--tap", default="h,z", help="taps to map: comma list such as h,z or all "
                   "(default: h,z)")
    p.add_argument("--max-points", type=int, default=2000,
                   help="seeded random subsample of the test images per run (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsample and the embedding")
    p.add_argument("--cache-dir", default="", help="feature cache (default: the run's "
                   "data.cache_dir); features the probes cached are reused")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (feature "
                   "extraction when not cached)")


def _embedding_options(args: argparse.Namespace, method: str) -> Any:
    from transfer.embedding import EmbeddingOptions

    return EmbeddingOptions(taps=args.tap, method=method, max_points=args.max_points,
                            seed=args.seed, cache_dir=args.cache_dir, device=args.device)


def add_plot_arguments(p: argparse.ArgumentParser) -> None:
    _add_inputs(p)
    p.add_argument("-o", "--output", default="figures", help="folder for the PNG files")
    p.add_argument("--kind", choices=["records", "embedding"], default="records",
                   help="records: every figure of the result records and pretraining logs "
                   "(default); embedding: 2-D maps of each RESULTS run's test features by class, "
                   "one panel per tap and run (embedding.png)")
    p.add_argument("--method", choices=["tsne", "umap", "pca"], default="tsne",
                   help="--kind embedding: tsne (sklearn TSNE), pca (sklearn PCA) or umap "
                   "(needs umap-learn) (default: tsne)")
    _add_embedding_arguments(p)


def run_plot(args: argparse.Namespace) -> dict[str, Any]:
    """Write every figure the records support (or, with ``--kind embedding``, the embedding
    map of the runs); returns their paths."""
    from transfer.plots import write_figures  # matplotlib loads only when a tool that needs it runs

    if args.kind == "embedding":
        return run_embedding_plot(args)
    records = apply_filters(load_records(args.results), [Filter.parse(f) for f in args.filter])
    figures, skipped = write_figures(records, find_runs(args.results, records), args.output)
    for title, path in figures:
        print(f"{path}  ({title})")
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    if not figures:
        raise UserError(f"no figure could be made from {len(records)} records")
    return {"figures": [str(p) for _, p in figures]}


def run_embedding_plot(args: argparse.Namespace) -> dict[str, Any]:
    """``plot --kind embedding``: one PNG with a map per tap (rows) and run (columns)."""
    from transfer.embedding import check_method, write_embedding_map

    check_method(args.method)  # before any run is loaded: umap without umap-learn fails here
    runs = [Path(r).resolve() for r in args.results if is_run_dir(r)]
    runs += [r for r in find_runs(args.results) if r not in runs]
    if not runs:
        raise UserError(f"no run directory (with {CONFIG_FILE}) among {', '.join(args.results)}")
    path = Path(args.output) / f"embedding_{args.method}.png"
    fig = write_embedding_map(runs, path, _embedding_options(args, args.method))
    print(f"{fig.path}  ({args.method} maps: {fig.grid[0]} taps x {fig.grid[1]} runs)")
    return {"figures": [str(fig.path)]}


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    _add_inputs(p)
    p.add_argument("-o", "--output", default="report", help="report folder (index.html inside)")
    p.add_argument("--digits", type=int, default=2, help="decimals shown")
    p.add_argument("--embedding", default="pca", choices=["pca", "tsne", "umap", "none"],
                   help="embedding map of the runs' test features in the report (default: pca; "
                   "none: leave it out)")
    _add_embedding_arguments(p)


def run_report(args: argparse.Namespace) -> dict[str, Any]:
    """Write the HTML report; returns the path of its ``index.html``."""
    from transfer.report import write_report

    records = load_records(args.results)
    embedding = None if args.embedding == "none" else _embedding_options(args, args.embedding)
    index = write_report(args.results, args.output, records,
                         [Filter.parse(f) for f in args.filter], args.digits, embedding)
    print(f"wrote {index}")
    return {"report": str(index)}


TOOLS = (
    Evaluator("table", "paper tables from result records: mean ± std over seeds, best in bold; "
              "Markdown, LaTeX, CSV, HTML or any registered format (--format)",
              add_table_arguments, run_table, kind="tool"),
    Evaluator("plot", "figures from result records and pretraining logs (PNG)",
              add_plot_arguments, run_plot, kind="tool"),
    Evaluator("report", "static HTML report: every table, figure and run config",
              add_report_arguments, run_report, kind="tool"),
)
