#!/usr/bin/env python3
"""Copy the built-in benchmark's table, reading and wall time from results/builtin/ into README.md.

The README's "Built-in benchmark" section shows what `scripts/run_builtin_benchmark.sh` wrote, between
marker comments, so no number there is typed by hand:
- `<!-- results/builtin/table.md -->` ... `<!-- end -->`: the first per-dataset table of table.md
  (training-domain validation selection);
- `<!-- results/builtin/reading -->` ... `<!-- end -->`: the reading printed under table.txt;
- `<!-- results/builtin/provenance -->` ... `<!-- end -->`: command, wall time, commit, load.

Usage: scripts/readme_results.py [--check]   (--check: exit 1, changing nothing, if README is stale)
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "builtin"
END = "<!-- end -->"


def first_table(markdown: str) -> str:
    """The first markdown table of `markdown` (consecutive lines starting with '|')."""
    lines, found = [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            lines.append(line)
            found = True
        elif found:
            break
    return "\n".join(lines)


def reading(text: str) -> str:
    """The reading printed under the tables of table.txt (from its 'Reading (' line to the end)."""
    start = text.find("\nReading (")
    return text[start + 1:].rstrip() if start >= 0 else ""


def blocks(results: Path = RESULTS) -> dict[str, str]:
    """Marker name -> the text the README shows between that marker and the next END."""
    return {
        "results/builtin/table.md": first_table((results / "table.md").read_text()),
        "results/builtin/reading": "```text\n" + reading((results / "table.txt").read_text()) + "\n```",
        "results/builtin/provenance": "```text\n" + (results / "provenance.txt").read_text().rstrip() + "\n```",
    }


def updated(readme: str, contents: dict[str, str]) -> str:
    """`readme` with each marked block replaced by its content; ValueError if a marker is missing."""
    for name, content in contents.items():
        # the block may be empty (marker line directly followed by END), as before the first run
        pattern = re.compile(rf"(<!-- {re.escape(name)} -->\n)(?:.*?\n)??({re.escape(END)})", re.DOTALL)
        if not pattern.search(readme):
            raise ValueError(f"README.md has no '<!-- {name} -->' ... '{END}' block")
        readme = pattern.sub(lambda m, c=content: m.group(1) + c + "\n" + m.group(2), readme, count=1)
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether README.md is up to date")
    args = parser.parse_args(argv)
    path = ROOT / "README.md"
    current = path.read_text()
    new = updated(current, blocks())
    if args.check:
        if new != current:
            print("README.md: the built-in benchmark section differs from results/builtin/ "
                  "(run scripts/readme_results.py)", file=sys.stderr)
            return 1
        return 0
    if new != current:
        path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
