#!/usr/bin/env bash
# Stop the cluster started by start_slurm.sh RUN_DIR: cancel its jobs, then stop its daemons by the
# pids recorded in RUN_DIR (slurmctld and slurmd, then munged). Other processes are untouched.
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

# SIGTERM to the Slurm daemons together, then munged (which they use until they exit); SIGKILL
# whatever is still alive 10 s later.
stop() {
  local pids=() files=() pidfile pid
  for pidfile in "$@"; do
    [ -s "$pidfile" ] || continue
    pid=$(cat "$pidfile")
    kill "$pid" 2>/dev/null && { pids+=("$pid"); files+=("$pidfile"); }
    rm -f "$pidfile"
  done
  for _ in $(seq 40); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && return 0
    sleep 0.25
  done
  for i in "${!pids[@]}"; do
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      kill -9 "${pids[$i]}" 2>/dev/null
      echo "stop_slurm.sh: ${files[$i]} (${pids[$i]}) needed SIGKILL" >&2
    fi
  done
}
stop "$RUN/run/slurmctld.pid" "$RUN/run/slurmd.pid"
stop "$RUN/munge/munged.pid"
