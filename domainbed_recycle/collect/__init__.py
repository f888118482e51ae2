"""The collect wing: run folders -> records -> model selection -> tables -> text. No torch.

Rooms, in the order data flows through them:
- `jsonl`: bytes of a `results.jsonl` -> records (orjson when installed), keeping valid lines;
- `flatten`: records -> validated columns (vectorised);
- `records`: a sweep folder -> one records DataFrame + a `LoadReport` of what was skipped;
- `selection`: DomainBed's three model-selection methods;
- `tables`: selected runs -> `ResultTable`s (mean ± SE as DomainBed computes them);
- `render`: tables -> text, DomainBed's layout, Markdown, LaTeX, CSV or JSON.
"""

from domainbed_recycle.collect.jsonl import DECODER, parse_lines
from domainbed_recycle.collect.records import LoadReport, acc_columns, environment_names, load_records
from domainbed_recycle.collect.render import FORMATS, render
from domainbed_recycle.collect.selection import METHODS, SelectionMethod, get_method, select
from domainbed_recycle.collect.tables import (
    AVG,
    CollectResult,
    ResultTable,
    collect,
    format_cell,
    format_table,
    mean_and_se,
)

__all__ = [
    "AVG",
    "DECODER",
    "FORMATS",
    "METHODS",
    "CollectResult",
    "LoadReport",
    "ResultTable",
    "SelectionMethod",
    "acc_columns",
    "collect",
    "environment_names",
    "format_cell",
    "format_table",
    "get_method",
    "load_records",
    "mean_and_se",
    "parse_lines",
    "render",
    "select",
]
