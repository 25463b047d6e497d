#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, to try workflow/profiles/slurm without a cluster (and for
# `make test-cluster`). Debian's packages (Debian 12: Slurm 22.05), for a container without systemd or cgroups:
# munge, MariaDB + slurmdbd (accounting, so that `sacct` works), slurmctld and slurmd, each started by hand.
#
#   scripts/local_slurm.sh up       # install what is missing, write the configuration, start what is not running
#   scripts/local_slurm.sh status   # what runs; exit 0 only when the node takes jobs
#   scripts/local_slurm.sh down     # stop the daemons by their pid files (the job history stays in MariaDB)
#
# Idempotent: `up` on a running cluster finds it up and changes nothing. Needs root (it writes /etc/slurm,
# /etc/munge and starts daemons). The partitions are the ones the profile names (`cpu`, default, and `gpu`), on
# this one node; the account is `root` (made with the cluster). The node declares LOCAL_SLURM_MEM_MB of memory
# (default 262144) whatever the machine has (SlurmdParameters=config_overrides): the profile asks 200 GB for a
# checkpoint conversion, and nothing here enforces memory (no cgroups), so the number only lets such jobs start.
set -euo pipefail

CLUSTER=local
HOST=$(hostname -s)
CPUS=${LOCAL_SLURM_CPUS:-$(nproc)}
MEM_MB=${LOCAL_SLURM_MEM_MB:-262144}
CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS_FILE=/etc/slurm/.local_slurm_dbpass
PACKAGES=(munge slurm-wlm slurmdbd mariadb-server)

log() { printf '[local-slurm] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

pid_alive() {  # pid file -> 0 if the process it names is alive
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # seconds, description, command...
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what did not come up within ${seconds}s (logs: $LOG_DIR, /var/log/munge, /var/log/mysql)"
        sleep 0.5
    done
}

install_packages() {
    local missing=()
    for cmd in munged slurmctld slurmd slurmdbd sacct mysqld_safe; do
        command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

write_if_changed() {  # path, mode, owner, content on stdin -> 0 if the file changed
    local path=$1 mode=$2 owner=$3 tmp
    tmp=$(mktemp "$path.XXXXXX")
    cat >"$tmp"
    if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
        rm -f "$tmp"
        return 1
    fi
    chmod "$mode" "$tmp" && chown "$owner" "$tmp" && mv -f "$tmp" "$path"
    return 0
}

CONFIG_CHANGED=0

configure() {
    mkdir -p "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd /run/munge /run/mysqld /var/log/munge
    chown munge:munge /run/munge /var/log/munge
    chown mysql:mysql /run/mysqld
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    [[ -s $DB_PASS_FILE ]] || (umask 077 && head -c 18 /dev/urandom | base64 | tr -d '/+=' >"$DB_PASS_FILE")

    write_if_changed "$CONF_DIR/slurm.conf" 644 root:root <<EOF && CONFIG_CHANGED=1 || true
# Written by scripts/local_slurm.sh: a one-node cluster in a container without systemd or cgroups.
ClusterName=$CLUSTER
SlurmctldHost=$HOST
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=root
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# no cgroups here: processes are tracked by parentage, tasks are not bound
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# scancel: SIGTERM, then SIGKILL after KillWait seconds; finished jobs stay visible to squeue for MinJobAge
KillWait=15
MinJobAge=600
InactiveLimit=0
# accounting (sacct) through slurmdbd
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=5
JobCompType=jobcomp/none
# the plugin's job comment (rule_<rule>_wildcards_<...>) in sacct's Comment field
AccountingStoreFlags=job_comment
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
# the partition names workflow/profiles/slurm uses
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$HOST Default=NO MaxTime=INFINITE State=UP
EOF

    write_if_changed "$CONF_DIR/slurmdbd.conf" 600 root:root <<EOF && CONFIG_CHANGED=1 || true
# Written by scripts/local_slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$(cat "$DB_PASS_FILE")
StorageLoc=$DB_NAME
EOF
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    log "starting munged"
    su -s /bin/sh munge -c /usr/sbin/munged
    wait_for 20 munged sh -c 'munge -n | unmunge'
}

start_mariadb() {
    if mysqladmin ping >/dev/null 2>&1; then return 0; fi
    log "starting MariaDB"
    (cd / && setsid mysqld_safe --user=mysql --skip-syslog >/dev/null 2>&1 </dev/null &)
    wait_for 60 MariaDB mysqladmin ping
    mariadb <<EOF
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$(cat "$DB_PASS_FILE")';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$(cat "$DB_PASS_FILE")';
GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';
EOF
}

start_daemon() {  # name, pid file, command...
    local name=$1 pidfile=$2
    shift 2
    if pid_alive "$pidfile"; then return 0; fi
    log "starting $name"
    "$@"
}

stop_daemon() {  # name, pid file
    local name=$1 pidfile=$2 pid
    pid_alive "$pidfile" || { rm -f "$pidfile"; return 0; }
    pid=$(cat "$pidfile")
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    rm -f "$pidfile"
}

node_ready() {
    local state
    state=$(sinfo -h -n "$HOST" -o '%t' 2>/dev/null | head -1)
    [[ $state == idle* || $state == mix* || $state == alloc* ]]
}

cmd_up() {
    [[ $(id -u) == 0 ]] || die "needs root"
    install_packages
    configure
    if ((CONFIG_CHANGED)); then
        log "configuration written ($CONF_DIR/slurm.conf, slurmdbd.conf)"
        # daemons still running with an older configuration: restart them
        stop_daemon slurmd /run/slurmd.pid
        stop_daemon slurmctld /run/slurmctld.pid
        stop_daemon slurmdbd /run/slurmdbd.pid
    fi
    if cmd_status >/dev/null 2>&1; then
        log "already up: cluster '$CLUSTER', node $HOST ($CPUS CPUs), partitions cpu (default) and gpu"
        return 0
    fi
    start_munge
    start_mariadb
    start_daemon slurmdbd /run/slurmdbd.pid slurmdbd
    wait_for 60 slurmdbd sacctmgr -n show cluster
    if [[ -z $(sacctmgr -n -P show cluster "$CLUSTER" format=cluster) ]]; then
        log "registering cluster '$CLUSTER' in the accounting database"
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    start_daemon slurmctld /run/slurmctld.pid slurmctld
    wait_for 60 slurmctld scontrol ping
    start_daemon slurmd /run/slurmd.pid slurmd
    if ! node_ready; then
        wait_for 30 "node $HOST" sh -c "sinfo -h -n '$HOST' -o '%t' | grep -Eq '^(idle|mix|alloc|down|drain)'"
        # a node left down/drained by an earlier session (ReturnToService=2 brings back only unresponsive ones)
        node_ready || scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
        wait_for 60 "node $HOST (idle)" node_ready
    fi
    log "up: cluster '$CLUSTER', node $HOST ($CPUS CPUs, ${MEM_MB} MB declared), partitions cpu (default) and gpu"
}

cmd_status() {
    local ok=0
    for d in slurmd:/run/slurmd.pid slurmctld:/run/slurmctld.pid slurmdbd:/run/slurmdbd.pid; do
        if pid_alive "${d#*:}"; then echo "${d%%:*}: running (pid $(cat "${d#*:}"))"; else echo "${d%%:*}: stopped"; ok=1; fi
    done
    if mysqladmin ping >/dev/null 2>&1; then echo "mariadb: running"; else echo "mariadb: stopped"; ok=1; fi
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then echo "munged: running"; else echo "munged: stopped"; ok=1; fi
    if ((ok == 0)) && node_ready; then
        sinfo
    else
        ok=1
    fi
    return $ok
}

cmd_down() {
    stop_daemon slurmd /run/slurmd.pid
    stop_daemon slurmctld /run/slurmctld.pid
    stop_daemon slurmdbd /run/slurmdbd.pid
    if mysqladmin ping >/dev/null 2>&1; then
        log "stopping MariaDB"
        mysqladmin shutdown || true
    fi
    stop_daemon munged /run/munge/munged.pid
    log "down"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
