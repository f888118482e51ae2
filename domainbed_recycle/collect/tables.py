"""Results tables from records: DomainBed's per-dataset and "Averages" tables, as data.

For each model-selection method: one table per dataset (rows = algorithms, columns = domains +
Avg) and one "Averages" table (columns = datasets + Avg). A cell is the mean ± standard error over
trial seeds of the selected run's test accuracy, in percent; NaN where it cannot be computed
(printed `X`). Numbers follow DomainBed's `collect_results.py`:

- cell: mean = 100·mean(accs); SE = 100·std(accs / √n) with numpy's population std (ddof=0),
  i.e. σ/√n, not the sample SE s/√n;
- per-dataset Avg: plain mean of the row's cell means; NaN (X) if any cell is NaN;
- Averages table: per (algorithm, dataset, trial seed) the mean test accuracy over the domains
  that trial has, then mean ± SE over trials as above. DomainBed averages a trial over whatever
  domains it has; `strict=True` keeps only trials that have every domain of the dataset.

Everything here returns DataFrames (`ResultTable`), so other code can build its own tables (rows
= strategies, say); `format_table` turns one into cell strings for every output format.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from domainbed_recycle.collect.records import LoadReport, environment_names
from domainbed_recycle.collect.selection import METHODS, get_method

#: DomainBed's `algorithms.ALGORITHMS` order (rows come in this order, then other names sorted).
DOMAINBED_ALGORITHMS = (
    "ERM", "Fish", "IRM", "GroupDRO", "Mixup", "MLDG", "CORAL", "MMD", "DANN", "CDANN", "MTL",
    "SagNet", "ARM", "VREx", "RSC", "SD", "ANDMask", "SANDMask", "IGA", "SelfReg", "Fishr", "TRM",
    "IB_ERM", "IB_IRM", "CAD", "CondCAD", "Transfer", "CausIRL_CORAL", "CausIRL_MMD", "EQRM",
)  # fmt: skip

#: DomainBed's `datasets.DATASETS` order (columns come in this order, then other names sorted).
DOMAINBED_DATASETS = (
    "Debug28", "Debug224", "ColoredMNIST", "RotatedMNIST", "VLCS", "PACS", "OfficeHome",
    "TerraIncognita", "DomainNet", "SVIRO",
)  # fmt: skip

AVG = "Avg"


@dataclass(frozen=True)
class ResultTable:
    """One table as numbers (percent). `mean` has the value columns then `Avg`; `se` and `n`
    (trials per cell) have the value columns only. NaN = cannot be computed."""

    title: str
    selection: str
    dataset: str | None
    mean: pd.DataFrame
    se: pd.DataFrame
    n: pd.DataFrame
    row_label: str = "Algorithm"

    @property
    def columns(self) -> list[str]:
        """Column labels, `Avg` included."""
        return [str(c) for c in self.mean.columns]


@dataclass(frozen=True)
class CollectResult:
    """Everything the collector computed: chosen runs per method and the tables, in print order."""

    total_records: int
    selected: dict[str, pd.DataFrame]
    tables: list[ResultTable]
    report: LoadReport | None = field(default=None)


def mean_and_se(accs: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """(100·mean, 100·SE) of accuracies in [0, 1], exactly as DomainBed computes them; NaNs if empty."""
    values = np.asarray(accs, dtype=float)
    if not len(values):
        return float("nan"), float("nan")
    return 100 * float(np.mean(values)), 100 * float(np.std(values / np.sqrt(len(values))))


def _row_average(means: pd.DataFrame) -> pd.Series:
    """Mean of each row, NaN when a cell is NaN (Python's left-to-right sum, as DomainBed)."""
    return pd.Series(
        [sum(row) / len(row) if len(row) and not np.isnan(row).any() else np.nan for row in means.to_numpy()],
        index=means.index,
        dtype=float,
    )


def order_names(names: Iterable[str], preferred: Sequence[str]) -> list[str]:
    """Distinct `names`: those in `preferred` in its order, then the others sorted."""
    present = set(names)
    return [n for n in preferred if n in present] + sorted(present - set(preferred))


def _cells(
    frame: pd.DataFrame, column: str, rows: list[str], columns: list, labels: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """mean, se and n tables of `frame["acc"]` grouped by (algorithm, `column`), trial seeds sorted."""
    mean = np.full((len(rows), len(columns)), np.nan)
    se = np.full_like(mean, np.nan)
    n = np.zeros(mean.shape, dtype=np.int64)
    row_of = {label: i for i, label in enumerate(rows)}
    column_of = {key: j for j, key in enumerate(columns)}
    if not frame.empty:
        ordered = frame.sort_values("trial_seed", kind="stable")
        groups = ordered.groupby(["algorithm", column], sort=False, observed=True)["acc"]
        for (algorithm, key), accs in groups:
            i, j = row_of.get(algorithm), column_of.get(key)
            if i is not None and j is not None:
                mean[i, j], se[i, j] = mean_and_se(accs.to_numpy())
                n[i, j] = len(accs)
    index = pd.Index(rows, name="algorithm")
    means = pd.DataFrame(mean, index=index, columns=labels)
    means[AVG] = _row_average(means)
    return means, pd.DataFrame(se, index=index, columns=labels), pd.DataFrame(n, index=index, columns=labels)


def dataset_table(
    selected: pd.DataFrame,
    dataset: str,
    environments: Sequence[str],
    algorithms: list[str],
    method_name: str,
    selection: str = "",
) -> ResultTable:
    """Per-dataset table: rows `algorithms`, columns `environments` (domain i = test env i) + Avg."""
    rows = selected[selected["dataset"] == dataset].rename(columns={"test_acc": "acc"})
    mean, se, n = _cells(rows, "test_env", algorithms, list(range(len(environments))), list(environments))
    title = f"Dataset: {dataset}, model selection method: {method_name}"
    return ResultTable(title, selection, dataset, mean, se, n)


def trial_averages(selected: pd.DataFrame, n_domains: dict[str, int] | None = None) -> pd.DataFrame:
    """Per (algorithm, dataset, trial seed): mean test accuracy over the domains the trial has
    (column `acc`) and how many (`n_domains`). With `n_domains` (dataset -> domain count), only
    trials that have all their dataset's domains are kept."""
    grouped = selected.groupby(["algorithm", "dataset", "trial_seed"], sort=True, observed=True)["test_acc"]
    averages = grouped.agg(lambda accs: float(np.mean(accs.to_numpy()))).rename("acc").to_frame()
    averages["n_domains"] = grouped.size()
    averages = averages.reset_index()
    if n_domains is not None:
        expected = averages["dataset"].map(n_domains)
        averages = averages[averages["n_domains"] == expected]
    return averages


def averages_table(
    selected: pd.DataFrame,
    datasets: list[str],
    algorithms: list[str],
    method_name: str,
    selection: str = "",
    n_domains: dict[str, int] | None = None,
) -> ResultTable:
    """The Averages table: rows `algorithms`, columns `datasets` + Avg (see `trial_averages`)."""
    averages = trial_averages(selected, n_domains) if not selected.empty else pd.DataFrame()
    mean, se, n = _cells(averages, "dataset", algorithms, list(datasets), list(datasets))
    title = f"Averages, model selection method: {method_name}"
    return ResultTable(title, selection, None, mean, se, n)


@dataclass(frozen=True)
class Layout:
    """Rows and columns of the tables: algorithms, datasets and each dataset's domain names."""

    algorithms: list[str]
    datasets: list[str]
    environments: dict[str, tuple[str, ...]]


def table_layout(
    records: pd.DataFrame, algorithms: list[str] | None = None, datasets: list[str] | None = None
) -> Layout:
    """Every algorithm and dataset of `records` (DomainBed's order first, then sorted) unless given,
    so that an algorithm without any selectable run still gets its row of X."""
    if algorithms is None:
        algorithms = order_names(records["algorithm"].unique(), DOMAINBED_ALGORITHMS)
    if datasets is None:
        datasets = order_names(records["dataset"].unique(), DOMAINBED_DATASETS)
    return Layout(list(algorithms), list(datasets), {d: environment_names(records, d) for d in datasets})


def selection_tables(selected: pd.DataFrame, method: str, layout: Layout, strict: bool = False) -> list[ResultTable]:
    """The per-dataset tables then the Averages table of one method (`selected` = its choice)."""
    name = get_method(method).name
    tables = [
        dataset_table(selected, d, layout.environments[d], layout.algorithms, name, method) for d in layout.datasets
    ]
    n_domains = {d: len(envs) for d, envs in layout.environments.items()} if strict else None
    tables.append(averages_table(selected, layout.datasets, layout.algorithms, name, method, n_domains))
    return tables


def collect(
    records: pd.DataFrame,
    methods: Sequence[str] = tuple(METHODS),
    algorithms: list[str] | None = None,
    datasets: list[str] | None = None,
    strict: bool = False,
    report: LoadReport | None = None,
) -> CollectResult:
    """Run each selection method on `records` and build all its tables (DomainBed's print order).

    `algorithms` / `datasets` fix the rows / columns (default: all of `records`); `strict` see
    `trial_averages`.
    """
    layout = table_layout(records, algorithms, datasets)
    selected = {method: get_method(method).select(records) for method in methods}
    tables = [table for method in methods for table in selection_tables(selected[method], method, layout, strict)]
    return CollectResult(len(records), selected, tables, report)


def format_cell(mean: float, se: float | None = None, latex: bool = False) -> str:
    """`78.3 +/- 0.2` (or `78.3 $\\pm$ 0.2`), `78.3` without an SE, `X` when the mean is NaN."""
    if mean is None or np.isnan(mean):
        return "X"
    if se is None or np.isnan(se):
        return f"{mean:.1f}"
    pm = "$\\pm$" if latex else "+/-"
    return f"{mean:.1f} {pm} {se:.1f}"


def format_table(table: ResultTable, latex: bool = False) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of cell strings: header = row label + columns; each row = its label + cells."""
    header = [table.row_label, *table.columns]
    rows = []
    for label in table.mean.index:
        cells = [format_cell(table.mean.at[label, c], table.se.at[label, c], latex) for c in table.se.columns]
        rows.append([str(label), *cells, format_cell(table.mean.at[label, AVG], None, latex)])
    return header, rows
