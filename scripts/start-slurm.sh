#!/usr/bin/env bash
# start-slurm.sh -- bring up a REAL single-node Slurm (munge + slurmctld + slurmd)
# on Debian 12 (Slurm 22.05), as root, with no systemd. Used by .ci/run (through
# scripts/test-all.sh) and by the slurm-marked tests. Idempotent:
#   * installs the Debian packages only if something is missing,
#   * (re)writes /etc/slurm/slurm.conf; when only MaxArraySize changed it restarts
#     slurmctld alone (it reloads its saved state; slurmd keeps running the jobs):
#     `scontrol reconfigure` updates what `scontrol show config` reports but, in
#     22.05, not always the limit the controller enforces; otherwise it restarts
#     both daemons,
#   * starts each daemon only if it is not already running,
#   * waits until the node is usable, resuming it if a previous run left it
#     DOWN/DRAINED.
#
# Environment knobs (all optional):
#   SLURM_CI_PREFIX     state/log/spool root               (default /var/lib/slurm-ci)
#   SLURM_CI_MAX_ARRAY  MaxArraySize (default 100001; tests use 5 to exercise chunking)
#   SLURM_CI_CPUS       CPUs to advertise (may exceed nproc -> config_overrides)
#   SLURM_CI_MEM_MB     RealMemory to advertise            (default 90% of physical)
#   SLURM_CI_CLEAN=1    wipe saved controller state (jobs, job-id counter) at start
#   SLURM_CI_TIMEOUT    seconds to wait for the node       (default 60)
#
# Why these settings (TESTING.md): no cgroups without systemd; no slurmdbd, so
# code must not need sacct; batch_sched_delay=0 or every array wave costs ~3 s;
# kill_invalid_depend or a dependent job of a failed array pends forever; the
# node line from `slurmd -C` or the node is drained for a core-count mismatch.
set -euo pipefail

PREFIX=${SLURM_CI_PREFIX:-/var/lib/slurm-ci}
MAX_ARRAY=${SLURM_CI_MAX_ARRAY:-100001}
CONF=/etc/slurm/slurm.conf      # default path compiled into every Slurm tool
TIMEOUT=${SLURM_CI_TIMEOUT:-60}
log() { printf '[start-slurm %s] %s\n' "$(date +%T)" "$*" >&2; }
ms_since() { echo $(( ($(date +%s%N) - $1) / 1000000 )); }
# A daemon is running when its pid file names a live process; when the pid file is gone (its directory was
# deleted) but the daemon still runs, the pid file is written again from the process table, so a restart
# below kills the old daemon instead of starting a second one that cannot bind its port.
running() {
  [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null && return 0
  local pid
  pid=$(pgrep -xo "$(basename "$1" .pid)" 2>/dev/null) || return 1
  mkdir -p "$(dirname "$1")" && echo "$pid" > "$1"
}

[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
case "$MAX_ARRAY" in ''|*[!0-9]*) log "SLURM_CI_MAX_ARRAY must be a number, not '$MAX_ARRAY'"; exit 2 ;; esac

# ---------------------------------------------------------------- 1. install
t0=$(date +%s%N)
PKGS="slurmctld slurmd slurm-client munge libpmix2"
BINS="munged munge unmunge slurmctld slurmd sbatch srun sinfo squeue scontrol scancel"
missing=0
for b in $BINS; do command -v "$b" >/dev/null 2>&1 || missing=1; done
# libpmix2 lets slurmd load mpi/pmix ('srun --mpi=pmix', needed by Debian Open MPI)
dpkg -s libpmix2 >/dev/null 2>&1 || missing=1
if [ "$missing" = 1 ]; then
  command -v apt-get >/dev/null 2>&1 || { log "Slurm is not installed and there is no apt-get"; exit 1; }
  log "installing $PKGS (apt)"
  export DEBIAN_FRONTEND=noninteractive
  # postinst scripts try invoke-rc.d; with no init system they print
  # 'policy-rc.d denied execution of start' -- harmless, we start the daemons below.
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $PKGS \
    || { apt-get update -q && apt-get install -y -q --no-install-recommends $PKGS; }
fi
# Debian's mpi_pmix_v4.so dlopens the *unversioned* libpmix.so, which only
# libpmix-dev ships; without it 'srun --mpi=pmix' is unusable.
PMIXLIB=/usr/lib/x86_64-linux-gnu/pmix2/lib
if [ -e "$PMIXLIB/libpmix.so.2" ] && [ ! -e "$PMIXLIB/libpmix.so" ]; then
  ln -s libpmix.so.2 "$PMIXLIB/libpmix.so"; missing=1   # forces a slurmd restart
fi
log "install step: $(ms_since "$t0") ms"

t1=$(date +%s%N)
mkdir -p "$PREFIX"/{state,spool,log,run}
CTLD_PID=$PREFIX/run/slurmctld.pid
SLURMD_PID=$PREFIX/run/slurmd.pid

# ---------------------------------------------------------------- 2. hostname
HOST=$(hostname -s)
if ! getent hosts "$HOST" >/dev/null 2>&1; then
  log "hostname $HOST does not resolve; adding it to /etc/hosts"
  echo "127.0.0.1 $HOST" >> /etc/hosts
fi

# ---------------------------------------------------------------- 3. munge
if [ ! -s /etc/munge/munge.key ]; then
  log "creating /etc/munge/munge.key"
  install -d -o munge -g munge -m 0700 /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
# munged refuses insecure permissions, so it runs as 'munge' owning everything.
chown munge:munge /etc/munge /etc/munge/munge.key
chmod 0700 /etc/munge; chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge          # /run is empty at boot
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  rm -f /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || { log "munged failed"; tail /var/log/munge/munged.log >&2; exit 1; }
fi

# ---------------------------------------------------------------- 4. slurm.conf
read -r -a HW <<<"$(slurmd -C | head -1)"
declare -A hw; for kv in "${HW[@]}"; do hw[${kv%%=*}]=${kv#*=}; done
MEM=${SLURM_CI_MEM_MB:-$(( ${hw[RealMemory]} * 9 / 10 ))}
if [ -n "${SLURM_CI_CPUS:-}" ] && [ "${SLURM_CI_CPUS}" != "${hw[CPUs]}" ]; then
  NODE_HW="CPUs=${SLURM_CI_CPUS}"
  OVERRIDES="SlurmdParameters=config_overrides"   # advertise more CPUs than exist
else
  NODE_HW="CPUs=${hw[CPUs]} Boards=${hw[Boards]} SocketsPerBoard=${hw[SocketsPerBoard]} CoresPerSocket=${hw[CoresPerSocket]} ThreadsPerCore=${hw[ThreadsPerCore]}"
  OVERRIDES=""
fi

NEWCONF=$(mktemp)
trap 'rm -f "$NEWCONF"' EXIT
cat > "$NEWCONF" <<EOF
# generated by rxte-hpc scripts/start-slurm.sh
ClusterName=ci
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MailProg=/bin/true
StateSaveLocation=${PREFIX}/state
SlurmdSpoolDir=${PREFIX}/spool
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${PREFIX}/log/slurmctld.log
SlurmdLogFile=${PREFIX}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=${PREFIX}/log/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
${OVERRIDES}
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=600
MaxArraySize=${MAX_ARRAY}
MaxJobCount=200000
NodeName=${HOST} NodeAddr=127.0.0.1 ${NODE_HW} RealMemory=${MEM} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

if ! cmp -s "$NEWCONF" "$CONF"; then
  only_array=0
  if [ -f "$CONF" ] && cmp -s <(grep -v '^MaxArraySize=' "$NEWCONF") <(grep -v '^MaxArraySize=' "$CONF"); then
    only_array=1
  fi
  log "writing $CONF (MaxArraySize=$MAX_ARRAY)"
  install -D -m 0644 "$NEWCONF" "$CONF"
  if running "$CTLD_PID" && [ "$only_array" = 1 ]; then
    log "only MaxArraySize changed: restarting slurmctld"
    kill "$(cat "$CTLD_PID")"
    for _ in $(seq 1 100); do running "$CTLD_PID" || break; sleep 0.1; done
  elif running "$CTLD_PID" || running "$SLURMD_PID"; then
    log "config changed: restarting slurmctld/slurmd"
    for p in "$SLURMD_PID" "$CTLD_PID"; do running "$p" && kill "$(cat "$p")"; done
    for _ in $(seq 1 100); do running "$CTLD_PID" || running "$SLURMD_PID" || break; sleep 0.1; done
  fi
fi

# ---------------------------------------------------------------- 5. slurmctld / slurmd
if [ "$missing" = 1 ] && running "$SLURMD_PID"; then
  log "packages were (re)installed: restarting slurmd so it reloads plugins/libs"
  kill "$(cat "$SLURMD_PID")"
  for _ in $(seq 1 100); do running "$SLURMD_PID" || break; sleep 0.1; done
fi
if ! running "$CTLD_PID"; then
  if [ "${SLURM_CI_CLEAN:-0}" = 1 ]; then rm -rf "${PREFIX:?}/state"/*; fi
  log "starting slurmctld"
  slurmctld          # daemonizes; logs to $PREFIX/log/slurmctld.log
fi
if ! running "$SLURMD_PID"; then
  log "starting slurmd"
  slurmd             # daemonizes; logs to $PREFIX/log/slurmd.log
fi

# ---------------------------------------------------------------- 6. wait
deadline=$(( $(date +%s) + TIMEOUT )); state=""; limit=""
while [ "$(date +%s)" -lt "$deadline" ]; do
  state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null || true)
  limit=$(scontrol show config 2>/dev/null | sed -n 's/^MaxArraySize *= *//p' || true)
  case "$state" in
    idle|mixed|allocated|completing) [ "$limit" = "$MAX_ARRAY" ] && break ;;
    *drain*|down*|*fail*)
      log "node state '$state' -> resume"
      scontrol update nodename="$HOST" state=resume 2>/dev/null || true ;;
  esac
  sleep 0.2
done
case "$state" in
  idle|mixed|allocated|completing) ;;
  *) log "node not ready (state='$state')"
     tail -20 "$PREFIX"/log/slurmctld.log "$PREFIX"/log/slurmd.log >&2; exit 1 ;;
esac
[ "$limit" = "$MAX_ARRAY" ] || { log "controller reports MaxArraySize='$limit', wanted $MAX_ARRAY"; exit 1; }
log "slurm ready (node $HOST $state, MaxArraySize=$limit) in $(ms_since "$t1") ms"
