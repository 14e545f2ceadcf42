#!/usr/bin/env bash
# Start a real single-node SLURM cluster on localhost (for tests and CI; SPEC 6).
#
#   slurm/start_cluster.sh [--fake-gpus N]
#
# Installs Debian's slurm-wlm and munge if missing (needs root and the apt registry), writes a one-node
# slurm.conf into the state dir (MSREPRO_SLURM_DIR, default /tmp/msrepro-slurm), links it to /etc/slurm/slurm.conf
# for the client commands, starts munged, slurmctld and slurmd in the background (pid files in the state dir) and
# waits until the node is idle. Idempotent: a cluster already running from this state dir is left alone.
# Stop it with slurm/stop_cluster.sh.
set -euo pipefail
STATE=${MSREPRO_SLURM_DIR:-/tmp/msrepro-slurm}
FAKE_GPUS=${MSREPRO_SLURM_FAKE_GPUS:-0}
while [ $# -gt 0 ]; do
    case $1 in
        --fake-gpus) FAKE_GPUS=$2; shift 2 ;;
        *) echo "usage: $0 [--fake-gpus N]" >&2; exit 2 ;;
    esac
done
log() { echo "[start_cluster] $*" >&2; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# -- packages ------------------------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    log "installing slurm-wlm and munge (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# another cluster of this script (other state dir) already serving this machine: use it, start nothing
OTHER=$(readlink -f /etc/slurm/slurm.conf 2>/dev/null || true)
if [ -n "$OTHER" ] && [ "$OTHER" != "$STATE/slurm.conf" ] && [ -f "$OTHER" ] && \
        grep -q 'msrepro slurm/start_cluster.sh' "$OTHER" && alive "$(dirname "$OTHER")/run/slurmctld.pid"; then
    log "a cluster from $(dirname "$OTHER") is already running; using it (stop it with MSREPRO_SLURM_DIR=$(dirname "$OTHER") $(dirname "$0")/stop_cluster.sh)"
    exit 0
fi
mkdir -p "$STATE"/{spool/ctld,spool/d,log,run}
if alive "$STATE/run/slurmctld.pid" && alive "$STATE/run/slurmd.pid" && alive "$STATE/run/munged.pid"; then
    log "already running (state in $STATE)"
    exit 0
fi

# -- munge ---------------------------------------------------------------------------------------------------------
mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
chown -R munge:munge /run/munge /var/lib/munge /var/log/munge /etc/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge; chmod 0755 /run/munge; chmod 0400 /etc/munge/munge.key
if ! alive "$STATE/run/munged.pid"; then
    rm -f /run/munge/munged.pid
    runuser -u munge -- munged --force
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    cp /run/munge/munged.pid "$STATE/run/munged.pid"
fi

# -- slurm.conf ----------------------------------------------------------------------------------------------------
HOST=$(hostname -s)
NODE=$(slurmd -C | head -1)                 # NodeName=... CPUs=... RealMemory=...
CPUS=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$NODE")
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE")
MEM=$(( MEM * 9 / 10 ))
NODE=$(sed "s/RealMemory=[0-9]*/RealMemory=$MEM/" <<<"$NODE")
GRES_LINE=""
if [ "$FAKE_GPUS" -gt 0 ]; then
    # dummy character devices stand in for GPUs (a regular file or a count-only gres is rejected)
    mkdir -p "$STATE/dev"; : > "$STATE/gres.conf"
    for i in $(seq 0 $(( FAKE_GPUS - 1 ))); do
        [ -e "$STATE/dev/fakegpu$i" ] || mknod "$STATE/dev/fakegpu$i" c 1 3
        echo "Name=gpu File=$STATE/dev/fakegpu$i" >> "$STATE/gres.conf"
    done
    GRES_LINE="Gres=gpu:$FAKE_GPUS"
    ln -sf "$STATE/gres.conf" /etc/slurm/gres.conf
fi
cat > "$STATE/slurm.conf" <<CONF
# written by msrepro slurm/start_cluster.sh
ClusterName=msrepro
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( MEM / CPUS / 2 ))
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=5
DependencyParameters=kill_invalid_depend
KillWait=5
MinJobAge=300
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
GresTypes=gpu
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
$NODE NodeAddr=127.0.0.1 State=UNKNOWN $GRES_LINE
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
sed -i "s/^NodeName=[^ ]*/NodeName=$HOST/" "$STATE/slurm.conf"
if [ -e /etc/slurm/slurm.conf ] && [ "$(readlink -f /etc/slurm/slurm.conf)" != "$STATE/slurm.conf" ]; then
    grep -q 'msrepro slurm/start_cluster.sh' /etc/slurm/slurm.conf || {
        log "/etc/slurm/slurm.conf exists and is not ours; refusing to replace it"; exit 1; }
fi
ln -sf "$STATE/slurm.conf" /etc/slurm/slurm.conf

# -- daemons -------------------------------------------------------------------------------------------------------
alive "$STATE/run/slurmctld.pid" || slurmctld -f "$STATE/slurm.conf"
alive "$STATE/run/slurmd.pid" || slurmd -f "$STATE/slurm.conf"

for _ in $(seq 300); do
    state=$(sinfo -h -N -o '%t' 2>/dev/null | head -1 || true)
    case $state in idle|mix|alloc) log "node $HOST is $state (state in $STATE)"; exit 0 ;; esac
    if [[ $state == down* || $state == drain* ]]; then scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true; fi
    sleep 0.2
done
log "node never became idle; logs:"; tail -n 20 "$STATE"/log/*.log >&2
exit 1
