#!/usr/bin/env bash
# stop-slurm.sh -- stop slurmd, slurmctld and munged as started by start-slurm.sh.
# Idempotent: stopping what is not running is not an error.
#   --purge   also delete controller state, spool and logs (the next start is
#             from scratch; job ids restart at 1)
set -uo pipefail
PREFIX=${SLURM_CI_PREFIX:-/var/lib/slurm-ci}
log() { printf '[stop-slurm %s] %s\n' "$(date +%T)" "$*" >&2; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pids() {   # TERM the given pids, wait up to 10 s, then KILL
  local pid
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "$@"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { log "$pid still alive -> SIGKILL"; kill -KILL "$pid"; }
  done
}

pids=()
for name in slurmd slurmctld; do
  pidf=$PREFIX/run/$name.pid
  if alive "$pidf"; then pids+=("$(cat "$pidf")"); log "stopping $name ($(cat "$pidf"))"; fi
done
[ ${#pids[@]} -gt 0 ] && stop_pids "${pids[@]}"
rm -f "$PREFIX"/run/slurmd.pid "$PREFIX"/run/slurmctld.pid

# job steps (slurmstepd) of still-running jobs outlive slurmd; only ours exist on this node
for p in $(pgrep -x slurmstepd 2>/dev/null); do log "killing slurmstepd $p"; kill -KILL "$p" 2>/dev/null; done

if alive /run/munge/munged.pid; then
  log "stopping munged ($(cat /run/munge/munged.pid))"; stop_pids "$(cat /run/munge/munged.pid)"
fi

if [ "${1:-}" = "--purge" ]; then
  log "purging $PREFIX"
  rm -rf "${PREFIX:?}"
fi
log "done"
