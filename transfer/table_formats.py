"""Table formats by name: each a file extension and a renderer, in one registry.

A cell reads ``mean ± std (n=k)`` (std = sample std, ddof=1; omitted for one seed) and the best
cell of each column (:func:`transfer.tables.mark_best`) is bold. Renderers never decide bold
themselves: they show ``Cell.best``, which only scores get (never a setting such as
``linear/wd``; :func:`transfer.tables.metric_direction`). Adding a format is one
decorated function; the ``table`` tool's ``--format`` choices and the files the report writes
(``tables/<table>.<extension>``) both come from :data:`TABLE_FORMATS`::

    @register_format("toy", extension="txt", description="one line per cell")
    def render_toy(table: Table, comparisons: Sequence[Comparison] = (), digits: int = 2) -> str: ...

Built in: ``md`` (Markdown), ``latex`` (booktabs), ``csv`` (cells only, full precision) and
``html`` (a ``<table>``, as the report shows it).
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pretrain.registry import Registry
from transfer.stats import Comparison
from transfer.tables import Cell, Table

# (table, paired comparisons, decimals shown) -> the rendered text
Renderer = Callable[[Table, Sequence[Comparison], int], str]
R = TypeVar("R", bound=Renderer)


@dataclass(frozen=True)
class TableFormat:
    """A registered table format.

    Attributes:
        name: what ``--format`` takes (``md``).
        extension: the file name suffix, without the dot (``md``, ``tex``).
        render: the :data:`Renderer`.
        carries_caption: whether the rendered text holds the caption and comparisons (CSV does
            not: the ``table`` tool prints them to stderr instead).
        description: a few words for ``--help``.
    """

    name: str
    extension: str
    render: Renderer
    carries_caption: bool = True
    description: str = ""


TABLE_FORMATS: Registry[TableFormat] = Registry("table format")


def register_format(
    name: str, extension: str, carries_caption: bool = True, description: str = ""
) -> Callable[[R], R]:
    """Decorator registering a renderer as table format ``name``.

    Raises:
        KeyError: ``name`` is taken, or another format already writes ``.<extension>`` files
            (the report would overwrite one with the other).
    """

    def decorator(render_fn: R) -> R:
        for other in TABLE_FORMATS:
            if TABLE_FORMATS.get(other).extension == extension:
                raise KeyError(f"table format {other!r} already writes .{extension} files")
        TABLE_FORMATS.add(name, TableFormat(name, extension, render_fn, carries_caption, description))
        return render_fn

    return decorator


def render(table: Table, fmt: str, comparisons: Sequence[Comparison] = (), digits: int = 2) -> str:
    """``table`` in format ``fmt`` (an unknown name is a UserError listing the valid ones)."""
    return TABLE_FORMATS.get(fmt).render(table, comparisons, digits)


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


@register_format("md", "md", description="Markdown pipe table")
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


@register_format("latex", "tex", description="LaTeX table with booktabs")
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


@register_format("csv", "csv", carries_caption=False,
                 description="one line per cell, full precision, caption on stderr")
def render_csv(table: Table, comparisons: Sequence[Comparison] = (), digits: int = 2) -> str:
    """One line per filled cell: the row and column fields, ``mean, std, n, best`` (full precision).

    ``std`` is empty for a single seed. The caption and ``comparisons`` are not part of the CSV,
    and ``digits`` is unused (the values keep full precision).
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


@register_format("html", "html", description="HTML <table>")
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

