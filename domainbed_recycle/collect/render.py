"""Render a `CollectResult` as text, DomainBed's own text, Markdown, LaTeX, CSV or JSON.

One entry point, `render(result, fmt)`; every format takes its cell strings from
`tables.format_table`, so a number reads the same everywhere (CSV and JSON add the raw numbers).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable

import pandas as pd
from tabulate import tabulate

from domainbed_recycle.collect.selection import METHODS
from domainbed_recycle.collect.tables import AVG, CollectResult, ResultTable, format_table

FORMATS = ("text", "domainbed", "markdown", "latex", "csv", "json")


def _sections(result: CollectResult) -> list[tuple[str, list[ResultTable]]]:
    """(selection method key, its tables) in print order."""
    sections: dict[str, list[ResultTable]] = {}
    for table in result.tables:
        sections.setdefault(table.selection, []).append(table)
    return list(sections.items())


def render_text(result: CollectResult) -> str:
    """Plain text: DomainBed's headings, tables drawn by tabulate."""
    lines = [f"Total records: {result.total_records}"]
    for table in result.tables:
        header, rows = format_table(table)
        lines += [
            "",
            f"-------- {table.title}",
            tabulate(rows, header, tablefmt="simple", disable_numparse=True),
        ]
    return "\n".join(lines) + "\n"


def _fixed_row(cells: list[str], width: int) -> str:
    return "  ".join(cell.ljust(width) for cell in cells) + " "


def render_domainbed(result: CollectResult) -> str:
    """Byte for byte the layout of DomainBed's `collect_results.py` (fixed-width columns: 20 for a
    dataset's table, 25 for Averages), except that long names are not cut to the column width."""
    lines = [f"Total records: {result.total_records}"]
    for table in result.tables:
        width = 20 if table.dataset is not None else 25
        header, rows = format_table(table)
        lines += ["", f"-------- {table.title}", _fixed_row(header, width)]
        lines += [_fixed_row(row, width) for row in rows]
    return "\n".join(lines) + "\n"


def render_markdown(result: CollectResult) -> str:
    """Markdown: one heading per method, one pipe table per table."""
    lines = [f"Total records: {result.total_records}"]
    for key, tables in _sections(result):
        lines += ["", f"## Model selection: {METHODS[key].name}" if key in METHODS else f"## {key}"]
        for table in tables:
            header, rows = format_table(table)
            title = table.dataset if table.dataset is not None else "Averages"
            lines += [
                "",
                f"### {title}",
                "",
                tabulate(rows, header, tablefmt="github", disable_numparse=True),
            ]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {c: "\\" + c for c in "&%$#_{}"} | {"\\": "\\textbackslash{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _latex_tabular(table: ResultTable) -> list[str]:
    header, rows = format_table(table, latex=True)
    lines = [
        "\\begin{center}",
        "\\adjustbox{max width=\\textwidth}{%",
        "\\begin{tabular}{l" + "c" * (len(header) - 1) + "}",
        "\\toprule",
        " & ".join("\\textbf{" + _latex_escape(c) + "}" for c in header) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join([_latex_escape(row[0]), *row[1:]]) + " \\\\" for row in rows]
    return lines + ["\\bottomrule", "\\end{tabular}}", "\\end{center}"]


def render_latex(result: CollectResult) -> str:
    """A standalone LaTeX document (booktabs + adjustbox), laid out like DomainBed's `--latex`."""
    lines = [
        "\\documentclass{article}",
        "\\usepackage{booktabs}",
        "\\usepackage{adjustbox}",
        "\\begin{document}",
        "\\section{Full results}",
        f"% Total records: {result.total_records}",
    ]
    for key, tables in _sections(result):
        name = METHODS[key].name if key in METHODS else key
        lines += ["", f"\\subsection{{Model selection: {_latex_escape(name)}}}"]
        for table in tables:
            title = table.dataset if table.dataset is not None else "Averages"
            lines += ["", f"\\subsubsection{{{_latex_escape(title)}}}", "", *_latex_tabular(table)]
    return "\n".join(lines + ["\\end{document}"]) + "\n"


def _number(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def long_rows(result: CollectResult) -> list[dict]:
    """One dict per table cell: selection, table, dataset, algorithm, column, mean, se, n, cell."""
    out = []
    for table in result.tables:
        _, rows = format_table(table)
        for label, cells in zip(table.mean.index, rows, strict=True):
            for column, cell in zip(table.columns, cells[1:], strict=True):
                has_se = column != AVG
                out.append(
                    {
                        "selection": table.selection,
                        "table": table.dataset if table.dataset is not None else "Averages",
                        "algorithm": str(label),
                        "column": column,
                        "mean": _number(table.mean.at[label, column]),
                        "se": _number(table.se.at[label, column]) if has_se else None,
                        "n_trials": int(table.n.at[label, column]) if has_se else None,
                        "cell": cell,
                    }
                )
    return out


def render_csv(result: CollectResult) -> str:
    """Long-format CSV, one line per cell (see `long_rows`); empty numbers where a cell is X."""
    columns = ["selection", "table", "algorithm", "column", "mean", "se", "n_trials", "cell"]
    buffer = io.StringIO()
    frame = pd.DataFrame(long_rows(result), columns=columns)
    frame["n_trials"] = frame["n_trials"].astype("Int64")
    frame.to_csv(buffer, index=False)
    return buffer.getvalue()


def render_json(result: CollectResult) -> str:
    """JSON: total records, the load report, and each table as header + rows of cell strings plus
    its numbers (null where X)."""
    tables = []
    for table in result.tables:
        header, rows = format_table(table)
        tables.append(
            {
                "selection": table.selection,
                "title": table.title,
                "dataset": table.dataset,
                "header": header,
                "rows": rows,
                "mean": {str(k): [_number(v) for v in row] for k, row in table.mean.iterrows()},
                "se": {str(k): [_number(v) for v in row] for k, row in table.se.iterrows()},
            }
        )
    document = {
        "total_records": result.total_records,
        "load_report": result.report.to_dict() if result.report is not None else None,
        "tables": tables,
    }
    return json.dumps(document, indent=2) + "\n"


RENDERERS: dict[str, Callable[[CollectResult], str]] = {
    "text": render_text,
    "domainbed": render_domainbed,
    "markdown": render_markdown,
    "latex": render_latex,
    "csv": render_csv,
    "json": render_json,
}


def render(result: CollectResult, fmt: str = "text") -> str:
    """The whole output of `drecycle collect` in format `fmt` (one of `FORMATS`)."""
    if fmt not in RENDERERS:
        raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
    return RENDERERS[fmt](result)
