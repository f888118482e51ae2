#!/usr/bin/env bash
# Reproduce results/builtin/: the full built-in recycling benchmark (sweeps/recycle_builtin.toml)
# from scratch, its tables (markdown, LaTeX, text), its plots, and the provenance (command, commit,
# versions, wall time, machine load); then copies the table, the reading and the provenance into
# README.md's built-in benchmark section (scripts/readme_results.py).
# Usage: scripts/run_builtin_benchmark.sh [OUTPUT_DIR]   (default runs/recycle_builtin; a folder
# that already holds runs is resumed, and the wall time then only covers what was left)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/recycle_builtin}
RESULTS=results/builtin
DRECYCLE=.venv/bin/drecycle
mkdir -p "$RESULTS"
CMD=("$DRECYCLE" recycle sweeps/recycle_builtin.toml --output_dir "$OUT"
     --markdown "$RESULTS/table.md" --latex "$RESULTS/table.tex" --force)  # --force: it regenerates them
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
commit=$(git rev-parse HEAD)
# the 1-minute load average every 30 s while it runs: on a shared machine the wall time says little alone
loads=$(mktemp)
( while true; do cut -d' ' -f1 /proc/loadavg >> "$loads"; sleep 30; done ) &
sampler=$!
trap 'kill "$sampler" 2>/dev/null || true' EXIT
start=$(date +%s)
"${CMD[@]}" > "$RESULTS/table.txt"
end=$(date +%s)
kill "$sampler" 2>/dev/null || true
load_during=$(awk '{ s += $1; if ($1 > m) m = $1 } END { printf "mean %.2f, max %.2f over %d samples", s / NR, m, NR }' "$loads")
rm -f "$loads"
cp "$OUT"/plots/*.png "$RESULTS/"
cp "$OUT/analysis.json" "$RESULTS/analysis.json"
{
  echo "command: ${CMD[*]}"
  echo "wall time: $((end - start)) s"
  echo "git rev-parse HEAD at start: $commit"
  echo "versions: $(.venv/bin/python -c 'from domainbed_recycle import provenance; print(provenance.versions())')"
  echo "cores: $(nproc); load average before: $load_before; after: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "1-minute load average during the run: $load_during"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$RESULTS/provenance.txt"
cat "$RESULTS/table.txt" "$RESULTS/provenance.txt"
.venv/bin/python scripts/readme_results.py
