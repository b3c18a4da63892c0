"""Render tables (Markdown, LaTeX with booktabs, CSV, HTML) and write the static HTML report.

A cell reads ``mean ± std (n=k)`` (std = sample std, ddof=1; omitted for one seed); the best
cell of each column is bold. :func:`write_report` builds ``index.html`` in a folder that holds
everything it links: figures (``*.png``), each table as ``tables/<name>.{md,tex,csv}`` and each
run's ``config.yaml`` copied to ``configs/<run>.yaml``, so the folder can be moved or served as is.
"""

from __future__ import annotations

import csv
import html
import io
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from pretrain.errors import UserError
from pretrain.runs import CONFIG_FILE
from transfer.plots import find_runs, primary_metrics, run_labels, setup_groups, slug, write_figures
from transfer.stats import Comparison
from transfer.tables import (
    METRIC,
    Cell,
    Filter,
    FlatRecord,
    Table,
    apply_filters,
    build_table,
    metric_names,
)

LATEX_ESCAPES = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "±": r"$\pm$", "−": r"$-$", "–": "--",
}


def latex_escape(text: str) -> str:
    """``mlp_2`` -> ``mlp\\_2``, ``50%`` -> ``50\\%``, ``±`` -> ``$\\pm$``."""
    return "".join(LATEX_ESCAPES.get(ch, ch) for ch in text)


def cell_text(cell: Cell | None, digits: int = 2) -> tuple[str, str]:
    """(``mean ± std`` or ``mean`` for one seed, ``n=k``); ``("–", "")`` for an empty cell."""
    if cell is None:
        return "–", ""
    mean, std, n = cell.stats
    main = f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"
    return main, f"n={n}"


def render_markdown(table: Table, comparisons: Sequence[Comparison] = (), digits: int = 2) -> str:
    """A pipe table with the caption above and paired comparisons below."""
    def esc(s: str) -> str:
        return s.replace("|", r"\|")

    header = [esc(f) for f in table.row_fields] + [esc(Table.label(c)) for c in table.cols]
    lines = [f"**Table.** {table.caption}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(table.row_fields) + "--:|" * len(table.cols)]
    for row in table.rows:
        out = [esc(v) for v in row]
        for col in table.cols:
            cell = table.cell(row, col)
            main, n = cell_text(cell, digits)
            main = f"**{main}**" if cell is not None and cell.best else main
            out.append(f"{main} ({n})" if n else main)
        lines.append("| " + " | ".join(out) + " |")
    if comparisons:
        lines += ["", "Paired comparisons:", ""] + [f"- {c.describe(digits)}" for c in comparisons]
    return "\n".join(lines) + "\n"


def render_latex(table: Table, comparisons: Sequence[Comparison] = (), digits: int = 2) -> str:
    """A ``table`` environment with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    spec = "l" * len(table.row_fields) + "c" * len(table.cols)
    header = [latex_escape(f) for f in table.row_fields]
    header += [latex_escape(Table.label(c)) for c in table.cols]
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{latex_escape(table.caption)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(header) + r" \\", r"\midrule"]
    for row in table.rows:
        out = [latex_escape(v) for v in row]
        for col in table.cols:
            cell = table.cell(row, col)
            main, n = cell_text(cell, digits)
            main = latex_escape(main)
            main = rf"\textbf{{{main}}}" if cell is not None and cell.best else main
            out.append(rf"{main} {{\scriptsize ({n})}}" if n else main)
        lines.append(" & ".join(out) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if comparisons:
        lines += [r"\par\smallskip{\footnotesize",
                  (r"\\" + "\n").join(latex_escape(c.describe(digits)) for c in comparisons) + "}"]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def render_csv(table: Table) -> str:
    """One line per filled cell: the row and column fields, ``mean, std, n, best`` (full precision).

    ``std`` is empty for a single seed. The caption and comparisons are not part of the CSV.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*table.row_fields, *table.col_fields, "mean", "std", "n", "best"])
    for row in table.rows:
        for col in table.cols:
            cell = table.cell(row, col)
            if cell is None:
                continue
            mean, std, n = cell.stats
            writer.writerow([*row, *col, repr(mean), "" if math.isnan(std) else repr(std), n,
                             int(cell.best)])
    return buf.getvalue()


def render_html(table: Table, comparisons: Sequence[Comparison] = (), digits: int = 2) -> str:
    """An HTML ``<table>`` with its caption; best cells in ``<b>``."""
    e = html.escape
    head = "".join(f"<th>{e(f)}</th>" for f in table.row_fields)
    head += "".join(f"<th>{e(Table.label(c))}</th>" for c in table.cols)
    body = []
    for row in table.rows:
        tds = "".join(f"<td>{e(v)}</td>" for v in row)
        for col in table.cols:
            cell = table.cell(row, col)
            main, n = cell_text(cell, digits)
            main = f"<b>{e(main)}</b>" if cell is not None and cell.best else e(main)
            tds += f'<td class="num">{main}' + (f" <small>({e(n)})</small>" if n else "") + "</td>"
        body.append(f"<tr>{tds}</tr>")
    out = (f"<table>\n<caption>{e(table.caption)}</caption>\n<thead><tr>{head}</tr></thead>\n"
           f"<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>\n")
    if comparisons:
        out += "<ul>" + "".join(f"<li>{e(c.describe(digits))}</li>" for c in comparisons) + "</ul>\n"
    return out


RENDERERS = {"md": render_markdown, "latex": render_latex}


def render(table: Table, fmt: str, comparisons: Sequence[Comparison] = (), digits: int = 2) -> str:
    """``fmt`` is ``md``, ``latex`` or ``csv`` (CSV carries no comparisons)."""
    if fmt == "csv":
        return render_csv(table)
    if fmt not in RENDERERS:
        raise UserError(f"unknown table format {fmt!r}; valid: csv, latex, md")
    return RENDERERS[fmt](table, comparisons, digits)


def standard_tables(records: Sequence[FlatRecord]) -> list[tuple[str, Table | str]]:
    """The report's tables: per setup group, dataset and evaluator, every metric by head at
    tap ``h`` (the encoder) and each primary metric by head and tap.

    Returns:
        (title, table) per table, or (title, reason) where the records cannot be aggregated.
    """
    out: list[tuple[str, Table | str]] = []
    for group, recs in setup_groups(records):
        where = f" ({group})" if group else ""
        pairs = sorted({(str(r.fields.get("dataset")), str(r.fields.get("evaluator"))) for r in recs})
        for dataset, evaluator in pairs:
            mine = [r for r in recs if str(r.fields.get("dataset")) == dataset
                    and str(r.fields.get("evaluator")) == evaluator]
            taps = sorted({str(r.fields["tap"]) for r in mine if "tap" in r.fields})
            tap = "h" if "h" in taps else (taps[0] if taps else "")
            specs: list[tuple[str, dict]] = [(
                f"{evaluator} on {dataset}{', tap ' + tap if tap else ''}{where}",
                {"cols": (METRIC,), "filters": [Filter("tap", (tap,))] if tap else []},
            )]
            if len(taps) > 1:  # quality metrics (RankMe, alignment...) are all shown per tap
                per_tap = metric_names(mine) if evaluator == "quality" else primary_metrics(mine)
                specs += [(f"{m} on {dataset} per tap{where}", {"cols": ("tap",), "metrics": [m]})
                          for m in per_tap]
            for title, kw in specs:
                try:
                    out.append((title, build_table(mine, rows=("head",), **kw)))
                except UserError as exc:
                    out.append((title, str(exc)))
    return out


def copy_configs(runs: Sequence[Path], dest: Path) -> list[tuple[Path, str]]:
    """Copy each run's ``config.yaml`` to ``dest/<run>.yaml``; (run, file name) per run."""
    dest.mkdir(parents=True, exist_ok=True)
    out: list[tuple[Path, str]] = []
    used: set[str] = set()
    for run in runs:
        name = slug(run.name)
        if name in used:
            name = slug(f"{run.parent.name}_{run.name}")
        while name in used:
            name += "_"
        used.add(name)
        shutil.copyfile(run / CONFIG_FILE, dest / f"{name}.yaml")
        out.append((run, f"{name}.yaml"))
    return out


PAGE_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse;margin:1em 0}th,td{padding:3px 10px;border-bottom:1px solid #ccc}
td.num{text-align:right}caption{caption-side:top;text-align:left;font-size:90%;padding:4px 0}
img{max-width:100%}.skip{color:#a00}"""


def write_report(
    paths: Sequence[str | Path], out_dir: str | Path, records: Sequence[FlatRecord],
    filters: Sequence[Filter] = (), digits: int = 2,
) -> Path:
    """Write ``out_dir/index.html`` with every table, figure and run config; returns its path.

    Args:
        paths: the inputs the records came from (searched for run directories).
        out_dir: report folder (created; files of an earlier report are overwritten).
        records: flattened records (:func:`transfer.tables.load_records`).
        filters: applied to the records before anything is made.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = apply_filters(records, filters)
    e = html.escape
    sources = sorted({r.source for r in records})
    parts = [f"<h1>simclr-transfer report</h1><p>{len(records)} records from {len(sources)} "
             f"result file(s), generated {e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>",
             "<details><summary>result files</summary><ul>"
             + "".join(f"<li>{e(s)}</li>" for s in sources) + "</ul></details>",
             "<h2>Tables</h2>"]
    (out / "tables").mkdir(exist_ok=True)
    for i, (title, table) in enumerate(standard_tables(records)):
        parts.append(f"<h3>{e(title)}</h3>")
        if isinstance(table, str):
            parts.append(f'<p class="skip">not tabulated: {e(table)}</p>')
            continue
        name = f"{i:02d}_{slug(title)}"
        links = []
        for fmt, ext in (("md", "md"), ("latex", "tex"), ("csv", "csv")):
            (out / "tables" / f"{name}.{ext}").write_text(render(table, fmt, digits=digits))
            links.append(f'<a href="tables/{e(name)}.{ext}">{ext}</a>')
        parts.append(render_html(table, digits=digits) + f"<p>{' · '.join(links)}</p>")
    runs = find_runs(paths, records)
    figures, skipped = write_figures(records, runs, out / "figures")
    parts.append("<h2>Figures</h2>")
    for title, path in figures:
        rel = path.relative_to(out).as_posix()
        parts.append(f'<figure><img src="{e(rel)}" alt="{e(title)}"><figcaption>{e(title)}'
                     "</figcaption></figure>")
    parts += [f'<p class="skip">figure skipped: {e(s)}</p>' for s in skipped]
    parts.append("<h2>Runs</h2>")
    rows = "".join(
        f'<tr><td>{e(run.name)}</td><td>{e(label)}</td>'
        f'<td><a href="configs/{e(name)}">config</a></td></tr>'
        for (run, name), label in zip(copy_configs(runs, out / "configs"), run_labels(runs), strict=True)
    )
    parts.append(f"<table><thead><tr><th>run</th><th>head</th><th>config</th></tr></thead>"
                 f"<tbody>{rows}</tbody></table>" if rows else "<p>no run directories found</p>")
    page = (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>simclr-transfer report'
            f"</title><style>{PAGE_STYLE}</style></head><body>\n" + "\n".join(parts)
            + "\n</body></html>\n")
    index = out / "index.html"
    index.write_text(page)
    return index
