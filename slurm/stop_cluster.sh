#!/usr/bin/env bash
# Stop the cluster started by slurm/start_cluster.sh: cancel its jobs (job steps outlive slurmd), then stop
# slurmd, slurmctld, slurmdbd, mariadbd and munged by the pids in the state dir, and remove the links it made in /etc/slurm.
#   slurm/stop_cluster.sh [--keep-state]
set -uo pipefail
STATE=${MSREPRO_SLURM_DIR:-/tmp/msrepro-slurm}
KEEP=0; [ "${1:-}" = "--keep-state" ] && KEEP=1
log() { echo "[stop_cluster] $*" >&2; }
[ -d "$STATE" ] || { log "nothing to stop ($STATE missing)"; exit 0; }

if [ -f "$STATE/run/slurmctld.pid" ] && kill -0 "$(cat "$STATE/run/slurmctld.pid")" 2>/dev/null; then
    scancel --full --quiet --user="$(id -un)" 2>/dev/null || true
    for _ in $(seq 50); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.2; done
fi
stop() {  # stop the process whose pid is in file $1, waiting up to $2 s (default 10), then SIGKILL
    local f=$1 wait=${2:-10} pid
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq $(( wait * 10 ))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        log "stopped $(basename "$f" .pid) (pid $pid)"
    fi
    rm -f "$f"
}
# in parallel where the order does not matter (each takes a second or two to exit)
stop "$STATE/run/slurmd.pid" & stop "$STATE/run/slurmctld.pid" & wait
stop "$STATE/run/slurmdbd.pid" & stop "$STATE/run/munged.pid" & wait
stop "$STATE/run/mariadbd.pid" 60     # InnoDB shutdown flushes first
for link in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
    [ -L "$link" ] && [[ "$(readlink "$link")" == "$STATE"/* ]] && rm -f "$link"
done
[ "$KEEP" = 1 ] || rm -rf "$STATE"
exit 0
