"""The static HTML report: every table, figure and run config in one self-contained folder.

:func:`write_report` builds ``index.html`` in a folder that holds everything it links: figures
(``figures/*.png``, :mod:`transfer.plots`, and the embedding map of the runs' test features,
:mod:`transfer.embedding`), each table in every registered format
(``tables/<table>.<extension>``, :data:`transfer.table_formats.TABLE_FORMATS`) and each run's
``config.yaml`` copied to ``configs/<run>.yaml``, so the folder can be moved or served as is.
"""

from __future__ import annotations

import html
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from pretrain.errors import UserError
from pretrain.run import CONFIG_FILE
from transfer.embedding import EmbeddingOptions, report_embedding
from transfer.plots import slug, write_figures
from transfer.records import (
    METRIC,
    Filter,
    FlatRecord,
    apply_filters,
    find_runs,
    metric_names,
    primary_metrics,
    run_labels,
    setup_groups,
)
from transfer.table_formats import TABLE_FORMATS, render_html
from transfer.tables import Table, TableRequest, make_table


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
            specs = [(
                f"{evaluator} on {dataset}{', tap ' + tap if tap else ''}{where}",
                TableRequest(["head"], [METRIC], filters=[Filter("tap", (tap,))] if tap else []),
            )]
            if len(taps) > 1:  # quality metrics (RankMe, alignment...) are all shown per tap
                per_tap = metric_names(mine) if evaluator == "quality" else primary_metrics(mine)
                specs += [(f"{m} on {dataset} per tap{where}", TableRequest(["head"], ["tap"], [m]))
                          for m in per_tap]
            for title, request in specs:
                try:
                    out.append((title, make_table(mine, request)[0]))
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
    embedding: EmbeddingOptions | None = None,
) -> Path:
    """Write ``out_dir/index.html`` with every table, figure and run config; returns its path.

    Args:
        paths: the inputs the records came from (searched for run directories).
        out_dir: report folder (created; files of an earlier report are overwritten).
        records: flattened records (:func:`transfer.records.load_records`).
        filters: applied to the records before anything is made.
        embedding: how to draw the embedding map of the runs' test features
            (:func:`transfer.embedding.report_embedding`); None leaves it out.
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
        for fmt in map(TABLE_FORMATS.get, TABLE_FORMATS):
            file = f"{name}.{fmt.extension}"
            (out / "tables" / file).write_text(fmt.render(table, (), digits))
            links.append(f'<a href="tables/{e(file)}">{e(fmt.extension)}</a>')
        parts.append(render_html(table, digits=digits) + f"<p>{' · '.join(links)}</p>")
    runs = find_runs(paths, records)
    figures, skipped = write_figures(records, runs, out / "figures")
    if embedding is not None:
        maps, missed = report_embedding(runs, out / "figures", embedding)
        figures, skipped = figures + maps, skipped + missed
    parts.append("<h2>Figures</h2>")
    for title, path in figures:
        rel = path.relative_to(out).as_posix()
        parts.append(f'<figure><img src="{e(rel)}" alt="{e(title)}"><figcaption>{e(title)}'
                     "</figcaption></figure>")
    parts += [f'<p class="skip">figure skipped: {e(s)}</p>' for s in skipped]
    parts.append("<h2>Runs</h2>")
    labels, _ = run_labels(runs)  # runs left out of the curves are listed among the skips above
    rows = "".join(
        f'<tr><td>{e(run.name)}</td><td>{e(labels.get(run, "? (no readable setup.json)"))}</td>'
        f'<td><a href="configs/{e(name)}">config</a></td></tr>'
        for run, name in copy_configs(runs, out / "configs")
    )
    parts.append(f"<table><thead><tr><th>run</th><th>head</th><th>config</th></tr></thead>"
                 f"<tbody>{rows}</tbody></table>" if rows else "<p>no run directories found</p>")
    page = (f'<!doctype html>\n<html><head><meta charset="utf-8"><title>simclr-transfer report'
            f"</title><style>{PAGE_STYLE}</style></head><body>\n" + "\n".join(parts)
            + "\n</body></html>\n")
    index = out / "index.html"
    index.write_text(page)
    return index
