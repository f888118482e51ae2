"""The collector reproduces DomainBed's own `collect_results.py` output on DomainBed's test sweep."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from domainbed_recycle.collect import collect, format_table, load_records, render

FIXTURE = Path(__file__).parent / "data" / "domainbed_vlcs_sweep"
EXPECTED = FIXTURE / "expected_tables.txt"


def parse_expected(text: str) -> tuple[int, dict[str, dict[tuple[str, str], str]]]:
    """(total records, {table title: {(row label, column): cell string}}) of a DomainBed printout."""
    total = int(re.search(r"^Total records: (\d+)$", text, re.M).group(1))
    tables: dict[str, dict[tuple[str, str], str]] = {}
    title, header = None, None
    for line in text.splitlines():
        if line.startswith("-------- "):
            title, header = line[len("-------- ") :].strip(), None
            tables[title] = {}
        elif title is not None and line.strip():
            cells = re.split(r"\s{2,}", line.strip())
            if header is None:
                header = cells
            else:
                assert len(cells) == len(header), line
                for column, cell in zip(header[1:], cells[1:], strict=True):
                    tables[title][(cells[0], column)] = cell
    return total, tables


@pytest.fixture(scope="module")
def result():
    records, report = load_records(FIXTURE / "sweep")
    assert report.n_skipped == 0
    return collect(records, report=report)


def test_fixture_layout():
    total, tables = parse_expected(EXPECTED.read_text())
    assert total == 200
    assert len(tables) == 6
    assert sum(len(cells) for cells in tables.values()) == 3 * (5 + 2)


def test_every_number_of_expected_tables(result):
    total, expected = parse_expected(EXPECTED.read_text())
    assert result.total_records == total
    ours = {}
    for table in result.tables:
        header, rows = format_table(table)
        ours[table.title] = {
            (row[0], column): cell for row in rows for column, cell in zip(header[1:], row[1:], strict=True)
        }
    assert list(ours) == list(expected)
    for title, cells in expected.items():
        assert ours[title] == cells, title


def test_domainbed_layout_is_byte_identical(result):
    assert render(result, "domainbed") == EXPECTED.read_text()


def test_only_done_keeps_everything_here():
    records, report = load_records(FIXTURE / "sweep", only_done=True)
    assert len(records) == 200
    assert report.n_runs_not_done == 0 and report.n_files == 40
