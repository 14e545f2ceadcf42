#!/usr/bin/env bash
# Start a real single-node SLURM cluster on localhost (for tests and CI; SPEC 6).
#
#   slurm/start_cluster.sh [--fake-gpus N] [--accounting]
#
# Installs Debian's slurm-wlm and munge if missing (needs root and the apt registry), writes a one-node
# slurm.conf into the state dir (MSREPRO_SLURM_DIR, default /tmp/msrepro-slurm), links it to /etc/slurm/slurm.conf
# for the client commands, starts munged, slurmctld and slurmd in the background (pid files in the state dir) and
# waits until the node is idle. With --accounting (or MSREPRO_SLURM_ACCOUNTING=1) it also installs Debian's
# mariadb-server and slurmdbd if missing, starts a private mariadbd (datadir, socket and port under the state dir)
# and slurmdbd, registers the cluster and waits until `sacct` answers. Idempotent: a cluster already running from
# this state dir is left alone. Stop it with slurm/stop_cluster.sh (stops every daemon it started, by PID).
set -euo pipefail
STATE=${MSREPRO_SLURM_DIR:-/tmp/msrepro-slurm}
FAKE_GPUS=${MSREPRO_SLURM_FAKE_GPUS:-0}
ACCOUNTING=${MSREPRO_SLURM_ACCOUNTING:-0}
DB_PORT=${MSREPRO_SLURM_DB_PORT:-6833}      # the private mariadbd (TCP on 127.0.0.1 only)
DBD_PORT=6819                               # slurmdbd
while [ $# -gt 0 ]; do
    case $1 in
        --fake-gpus) FAKE_GPUS=$2; shift 2 ;;
        --accounting) ACCOUNTING=1; shift ;;
        *) echo "usage: $0 [--fake-gpus N] [--accounting]" >&2; exit 2 ;;
    esac
done
log() { echo "[start_cluster] $*" >&2; }
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
has_acct() { grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$1" 2>/dev/null; }

# -- packages ------------------------------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    log "installing slurm-wlm and munge (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
if [ "$ACCOUNTING" = 1 ] && { ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; }; then
    log "installing mariadb-server and slurmdbd (apt)"
    export DEBIAN_FRONTEND=noninteractive
    # no init system: keep the packages' postinst from starting the system services (policy-rc.d, exit 101)
    MADE_POLICY=0
    [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
                                      chmod 755 /usr/sbin/policy-rc.d; MADE_POLICY=1; }
    APT_LOG=$(mktemp /tmp/msrepro-apt.XXXXXX)
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends mariadb-server slurmdbd; } \
            >"$APT_LOG" 2>&1 || {
        [ "$MADE_POLICY" = 1 ] && rm -f /usr/sbin/policy-rc.d
        log "apt-get install mariadb-server slurmdbd failed:"; tail -n 20 "$APT_LOG" >&2; exit 1; }
    rm -f "$APT_LOG"
    if [ "$MADE_POLICY" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# another cluster of this script (other state dir) already serving this machine: use it, start nothing
OTHER=$(readlink -f /etc/slurm/slurm.conf 2>/dev/null || true)
if [ -n "$OTHER" ] && [ "$OTHER" != "$STATE/slurm.conf" ] && [ -f "$OTHER" ] && \
        grep -q 'msrepro slurm/start_cluster.sh' "$OTHER" && alive "$(dirname "$OTHER")/run/slurmctld.pid"; then
    if [ "$ACCOUNTING" = 1 ] && ! has_acct "$OTHER"; then
        log "a cluster from $(dirname "$OTHER") is already running WITHOUT accounting; stop it first (MSREPRO_SLURM_DIR=$(dirname "$OTHER") $(dirname "$0")/stop_cluster.sh)"
        exit 1
    fi
    log "a cluster from $(dirname "$OTHER") is already running; using it (stop it with MSREPRO_SLURM_DIR=$(dirname "$OTHER") $(dirname "$0")/stop_cluster.sh)"
    exit 0
fi
mkdir -p "$STATE"/{spool/ctld,spool/d,log,run}
if alive "$STATE/run/slurmctld.pid" && alive "$STATE/run/slurmd.pid" && alive "$STATE/run/munged.pid"; then
    if [ "$ACCOUNTING" = 1 ] && ! { has_acct "$STATE/slurm.conf" && alive "$STATE/run/slurmdbd.pid"; }; then
        log "already running WITHOUT accounting (state in $STATE); stop it first ($(dirname "$0")/stop_cluster.sh)"
        exit 1
    fi
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
ACCT_LINES="AccountingStorageType=accounting_storage/none"
if [ "$ACCOUNTING" = 1 ]; then
    ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT"
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
$ACCT_LINES
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

# -- accounting: private mariadbd + slurmdbd ----------------------------------------------------------------------
if [ "$ACCOUNTING" = 1 ]; then
    DB=$STATE/mysql SOCK=$STATE/run/mariadbd.sock
    sql() { mariadb --no-defaults -S "$SOCK" -u root -N -B -e "$1"; }
    if [ ! -d "$DB/mysql" ]; then
        mkdir -p "$DB"
        mariadb-install-db --no-defaults --user=root --datadir="$DB" --auth-root-authentication-method=socket \
            --skip-test-db >"$STATE/log/mariadb-install.log" 2>&1 || {
            log "mariadb-install-db failed:"; tail -n 20 "$STATE/log/mariadb-install.log" >&2; exit 1; }
    fi
    if ! alive "$STATE/run/mariadbd.pid"; then
        # runs as root like the slurm daemons (the state dir may sit in a folder other users cannot enter)
        setsid mariadbd --no-defaults --user=root --datadir="$DB" --socket="$SOCK" --port="$DB_PORT" \
            --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$STATE/run/mariadbd.pid" \
            --log-error="$STATE/log/mariadb.log" --innodb-buffer-pool-size=64M --innodb-log-file-size=16M \
            --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
        echo $! > "$STATE/run/mariadbd.pid"
    fi
    for _ in $(seq 300); do mariadb-admin --no-defaults -S "$SOCK" -u root ping >/dev/null 2>&1 && break; sleep 0.1; done
    mariadb-admin --no-defaults -S "$SOCK" -u root ping >/dev/null 2>&1 || {
        log "mariadbd did not answer; log:"; tail -n 20 "$STATE/log/mariadb.log" >&2; exit 1; }
    if [ ! -s "$STATE/slurmdbd.conf" ]; then
        PASS=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
        sql "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
             CREATE OR REPLACE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$PASS';
             GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
        ( umask 077; cat > "$STATE/slurmdbd.conf" <<CONF
# written by msrepro slurm/start_cluster.sh
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$STATE/run/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$PASS
StorageLoc=slurm_acct_db
CONF
        )
    fi
    chown root:root "$STATE/slurmdbd.conf"; chmod 600 "$STATE/slurmdbd.conf"   # SlurmUser's, 600 (slurmdbd checks)
    # slurmdbd reads slurmdbd.conf from slurm.conf's folder (SLURM_CONF)
    alive "$STATE/run/slurmdbd.pid" || SLURM_CONF=$STATE/slurm.conf slurmdbd
    for _ in $(seq 300); do sacctmgr -n -P show cluster format=cluster >/dev/null 2>&1 && break; sleep 0.1; done
    if ! sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx msrepro; then
        sacctmgr -i add cluster msrepro >/dev/null || {
            log "sacctmgr add cluster failed; log:"; tail -n 20 "$STATE/log/slurmdbd.log" >&2; exit 1; }
    fi
fi

# -- daemons -------------------------------------------------------------------------------------------------------
alive "$STATE/run/slurmctld.pid" || slurmctld -f "$STATE/slurm.conf"
alive "$STATE/run/slurmd.pid" || slurmd -f "$STATE/slurm.conf"

for _ in $(seq 300); do
    state=$(sinfo -h -N -o '%t' 2>/dev/null | head -1 || true)
    case $state in idle|mix|alloc) break ;; esac
    if [[ $state == down* || $state == drain* ]]; then scontrol update NodeName="$HOST" State=RESUME 2>/dev/null || true; fi
    sleep 0.2
done
case $state in idle|mix|alloc) ;; *) log "node never became idle; logs:"; tail -n 20 "$STATE"/log/*.log >&2; exit 1 ;; esac
if [ "$ACCOUNTING" = 1 ]; then
    for _ in $(seq 300); do sacct -n -X -a >/dev/null 2>&1 && break; sleep 0.2; done
    sacct -n -X -a >/dev/null 2>&1 || { log "sacct does not answer; logs:"; tail -n 20 "$STATE"/log/slurm*.log >&2; exit 1; }
    log "node $HOST is $state, sacct answers (state in $STATE)"
else
    log "node $HOST is $state (state in $STATE)"
fi
exit 0
