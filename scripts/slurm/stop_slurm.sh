#!/usr/bin/env bash
# Stop the cluster started by start_slurm.sh RUN_DIR: cancel its jobs, then stop its daemons by the
# pids recorded in RUN_DIR (slurmd, slurmctld, munged, in that order). Other processes are untouched.
set -uo pipefail
RUN=${1:?usage: stop_slurm.sh RUN_DIR}
export PATH="$PATH:/usr/sbin"
export SLURM_CONF="$RUN/slurm.conf"

# Cancel what is still queued or running, so no job step outlives slurmd.
if [ -s "$RUN/run/slurmctld.pid" ] && kill -0 "$(cat "$RUN/run/slurmctld.pid")" 2>/dev/null; then
  scancel --quiet --user="$(id -un)" 2>/dev/null
  for _ in $(seq 40); do
    [ -z "$(squeue -h -t PD,R,CG -o %i 2>/dev/null)" ] && break
    sleep 0.25
  done
fi

status=0
for pidfile in "$RUN/run/slurmd.pid" "$RUN/run/slurmctld.pid" "$RUN/munge/munged.pid"; do
  [ -s "$pidfile" ] || continue
  pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null
      echo "stop_slurm.sh: $pidfile ($pid) needed SIGKILL" >&2
    fi
  fi
  rm -f "$pidfile"
done
exit $status
