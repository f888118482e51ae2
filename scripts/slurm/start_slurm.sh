#!/usr/bin/env bash
# Start a private one-node Slurm cluster (munged + slurmctld + slurmd) without systemd, for tests.
#
#   scripts/slurm/start_slurm.sh RUN_DIR        # then: export SLURM_CONF=RUN_DIR/slurm.conf
#   scripts/slurm/stop_slurm.sh RUN_DIR
#
# Everything lives in RUN_DIR: slurm.conf, state, spool, logs, and the pid files that
# stop_slurm.sh uses to stop exactly these daemons. /etc/slurm is not touched, and munged gets its
# own socket, so a system munge/Slurm keeps working. No accounting daemon: put scripts/slurm (its
# `sacct` shim) first on PATH for submitit. Needs root and Debian's slurmctld slurmd slurm-client
# munge packages. Ports: SLURMCTLD_PORT (default 6817) and SLURMD_PORT (default 6818).
# Prints `export SLURM_CONF=...` as its last line. Exit status non-zero (with log tails) on failure.
set -euo pipefail

RUN=${1:?usage: start_slurm.sh RUN_DIR}
mkdir -p "$RUN"
RUN=$(cd "$RUN" && pwd)
CTLD_PORT=${SLURMCTLD_PORT:-6817}
SLURMD_PORT=${SLURMD_PORT:-6818}

fail() { echo "start_slurm.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (slurmd runs jobs as their user)"
for bin in munged munge unmunge slurmctld slurmd sinfo sbatch squeue; do
  command -v "$bin" >/dev/null || [ -x "/usr/sbin/$bin" ] || fail "$bin not found (apt-get install slurmctld slurmd slurm-client munge)"
done
export PATH="$PATH:/usr/sbin"

# munged runs as the munge user: it must be able to reach RUN/munge.
mkdir -p "$RUN"/{state,spool,log,run,munge}
rm -rf "$RUN"/state/* "$RUN"/spool/*
chown munge:munge "$RUN/munge" && chmod 0755 "$RUN/munge"
runuser -u munge -- test -x "$RUN/munge" || fail "the munge user cannot enter $RUN (make its parents world-executable)"

HOST=$(hostname -s)
# The node's real hardware line (CPUs, RealMemory...): asking more memory than this fails at sbatch.
NODE_LINE=$(slurmd -C | head -n 1)
case "$NODE_LINE" in NodeName=*) ;; *) fail "unexpected 'slurmd -C' output: $NODE_LINE" ;; esac
NODE_NAME=${NODE_LINE%% *}; NODE_NAME=${NODE_NAME#NodeName=}
SOCKET="$RUN/munge/munge.socket"

cat > "$RUN/slurm.conf" <<CONF
# Written by scripts/slurm/start_slurm.sh: a private one-node cluster for tests.
ClusterName=drecycle
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
StateSaveLocation=$RUN/state
SlurmdSpoolDir=$RUN/spool
SlurmctldPidFile=$RUN/run/slurmctld.pid
SlurmdPidFile=$RUN/run/slurmd.pid
SlurmctldLogFile=$RUN/log/slurmctld.log
SlurmdLogFile=$RUN/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SchedulerType=sched/backfill
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
# Finished jobs stay visible to squeue (hence to the sacct shim) for an hour.
MinJobAge=3600
KillWait=5
Waittime=0
$NODE_LINE NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$NODE_NAME Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF="$RUN/slurm.conf"

tails() { for f in "$RUN"/log/*.log "$RUN"/munge/munged.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }; done >&2; }

# 1. munge: the key comes with Debian's munge package; create one if it is missing.
if [ ! -s /etc/munge/munge.key ]; then
  mungekey -c -f -k /etc/munge/munge.key && chown munge:munge /etc/munge/munge.key && chmod 0600 /etc/munge/munge.key
fi
runuser -u munge -- munged --socket="$SOCKET" --pid-file="$RUN/munge/munged.pid" \
  --log-file="$RUN/munge/munged.log" --seed-file="$RUN/munge/munged.seed" || { tails; fail "munged did not start"; }
munge --socket="$SOCKET" -n | unmunge --socket="$SOCKET" >/dev/null || { tails; fail "munge round trip failed"; }

# 2. slurmctld and slurmd (both daemonize and write their pid files under RUN/run).
slurmctld -f "$SLURM_CONF" || { tails; fail "slurmctld did not start"; }
slurmd -f "$SLURM_CONF" || { tails; fail "slurmd did not start"; }

# 3. wait for the node to be idle (usually about a second).
for _ in $(seq 120); do
  state=$(sinfo -h -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.25
done
[ "${state:-}" = idle ] || { tails; fail "node not idle after 30 s (sinfo says '${state:-nothing}')"; }
sinfo
echo "export SLURM_CONF=$SLURM_CONF"
