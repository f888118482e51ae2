#!/usr/bin/env bash
# Reproduce results/baselines/: ERM, CORAL, GroupDRO, Mixup, VREx and SWAD on RotatedDigits
# (test domains 0 and 5, one at a time), 2 hparams seeds x 2 trial seeds, 200 steps, on a local
# pool of 2 workers; then the collected tables in Markdown and LaTeX, and the provenance.
# Usage: scripts/run_baselines.sh [SWEEP_DIR]   (default runs/baselines; must not hold runs yet
# if the wall time is to mean anything: finished runs are skipped on a relaunch)
set -euo pipefail
cd "$(dirname "$0")/.."
SWEEP_DIR=${1:-runs/baselines}
RESULTS=results/baselines
DRECYCLE=.venv/bin/drecycle
PY=.venv/bin/python
mkdir -p "$RESULTS"

SWEEP=("$DRECYCLE" sweep launch --datasets RotatedDigits
       --algorithms ERM CORAL GroupDRO Mixup VREx SWAD
       --n_hparams 2 --n_trials 2 --single_test_envs --test_envs 0 5
       --steps 200 --checkpoint_freq 50 --launcher pool --n_workers 2
       --output_dir "$SWEEP_DIR" --skip_confirmation --no_progress)
head_at_launch=$(git rev-parse HEAD)
dirty_at_launch=$(git status --porcelain --untracked-files=no | awk '{print $2}' | tr '\n' ' ')
load_at_launch=$(cut -d' ' -f1-3 /proc/loadavg)
start=$(date +%s)
"${SWEEP[@]}" | tee "$RESULTS/sweep_log.txt"
end=$(date +%s)

"$DRECYCLE" collect --input_dir "$SWEEP_DIR" --markdown > "$RESULTS/table.md"
"$DRECYCLE" collect --input_dir "$SWEEP_DIR" --latex > "$RESULTS/table.tex"

{
  echo "sweep command: ${SWEEP[*]}"
  echo "collect commands: $DRECYCLE collect --input_dir $SWEEP_DIR --markdown > $RESULTS/table.md"
  echo "                  $DRECYCLE collect --input_dir $SWEEP_DIR --latex > $RESULTS/table.tex"
  echo "sweep wall time: $((end - start)) s"
  echo "git rev-parse HEAD at launch: $head_at_launch (tracked files modified: ${dirty_at_launch:-none})"
  echo "git rev-parse HEAD at the end: $(git rev-parse HEAD)"
  echo "git_commit in the records: $(cat "$SWEEP_DIR"/*/results.jsonl | "$PY" -c \
    'import json, sys; print(sorted({json.loads(l).get("git_commit") for l in sys.stdin if l.strip()}))')"
  echo "versions: $("$PY" -c 'from domainbed_recycle import provenance; print(provenance.versions())')"
  echo "cores: $(nproc); load average (1, 5, 15 min) at launch: $load_at_launch, at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} > "$RESULTS/provenance.txt"
cat "$RESULTS/provenance.txt"
