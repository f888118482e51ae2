"""README's built-in benchmark section shows results/builtin/ as the harness wrote it (no hand-typed number)."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = runpy.run_path(str(ROOT / "scripts" / "readme_results.py"))


def test_readme_shows_the_files_of_results_builtin():
    readme = (ROOT / "README.md").read_text()
    assert SCRIPT["updated"](readme, SCRIPT["blocks"]()) == readme, "run scripts/readme_results.py"


def test_blocks_are_replaced_and_a_missing_marker_is_one_clear_error():
    text = "a\n<!-- results/builtin/reading -->\nold\nlines\n<!-- end -->\nb\n"
    assert SCRIPT["updated"](text, {"results/builtin/reading": "new"}) == (
        "a\n<!-- results/builtin/reading -->\nnew\n<!-- end -->\nb\n")
    empty = "a\n<!-- results/builtin/reading -->\n<!-- end -->\n"  # as before the first run: filled too
    assert SCRIPT["updated"](empty, {"results/builtin/reading": "new"}) == (
        "a\n<!-- results/builtin/reading -->\nnew\n<!-- end -->\n")
    with pytest.raises(ValueError, match="no '<!-- results/builtin/table.md -->'"):
        SCRIPT["updated"](text, {"results/builtin/table.md": "x"})
    assert SCRIPT["first_table"]("# t\n\n| a |\n|---|\n| 1 |\n\n| b |\n") == "| a |\n|---|\n| 1 |"
    assert SCRIPT["reading"]("table\nReading (x):\n  - y\n") == "Reading (x):\n  - y"
