#!/usr/bin/env bash
# A real single-node SLURM 22.05 cluster on localhost, for tests and small sweeps.
#
#   bash slurm/cluster.sh install   apt-get the Debian packages (idempotent)
#   bash slurm/cluster.sh start     munged, MariaDB, slurmdbd, slurmctld, slurmd (idempotent)
#   bash slurm/cluster.sh stop      cancel jobs, drain, stop every daemon by its pid file
#   bash slurm/cluster.sh status    daemons and the node's state
#   bash slurm/cluster.sh conf      print the path of slurm.conf (export it as SLURM_CONF)
#
# Why this shape (slurm/README.md and the project's RESOURCES notes): every daemon
# runs as root from one private directory (config, state, spool, logs, pid files,
# munge socket/key, MariaDB datadir) so nothing in /etc is touched and `stop`
# leaves the machine as it was.  Accounting (slurmdbd + MariaDB) is required:
# submitit reads job states with sacct, and without it cancelled or timed-out
# jobs never finish from the client's side.  Two fake GPUs (character devices
# made with mknod) exercise the gres request path on a machine without GPUs.
#
# Environment: ALIGNBENCH_SLURM_DIR (private dir, default slurm/.cluster),
# ALIGNBENCH_SLURM_CLUSTER (cluster name), ALIGNBENCH_SLURM_PORTS ("ctld,slurmd,dbd,mariadb",
# default "6817,6818,6819,3307"), ALIGNBENCH_SLURM_TIMEOUT (seconds to wait, default 60).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${ALIGNBENCH_SLURM_DIR:-$HERE/.cluster}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
CLUSTER="${ALIGNBENCH_SLURM_CLUSTER:-alignbench}"
IFS=, read -r CTLD_PORT SLURMD_PORT DBD_PORT DB_PORT <<<"${ALIGNBENCH_SLURM_PORTS:-6817,6818,6819,3307}"
TIMEOUT="${ALIGNBENCH_SLURM_TIMEOUT:-60}"
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)

ETC="$DIR/etc"; RUN="$DIR/run"; LOG="$DIR/log"; STATE="$DIR/state"; SPOOL="$DIR/spool"
MUNGE="$DIR/munge"; DB="$DIR/mariadb"; DEV="$DIR/dev"
SLURM_CONF_PATH="$ETC/slurm.conf"
MUNGE_SOCKET="$MUNGE/munge.socket"
DB_SOCKET="$RUN/mariadb.sock"
DB_PASS_FILE="$ETC/.db_password"
export SLURM_CONF="$SLURM_CONF_PATH"

say() { echo "cluster.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------- processes --
# A daemon is alive when its pid file names a process that is not a zombie
# (a zombie still answers `kill -0`, and in containers nobody may reap it).
pid_of() { [[ -s "$1" ]] && tr -dc 0-9 <"$1" || true; }
alive_pid() {  # from /proc (no procps needed): field 3 of /proc/PID/stat is the state letter
    local pid="$1" stat
    [[ -n "$pid" && -r "/proc/$pid/stat" ]] || return 1
    stat="$(cat "/proc/$pid/stat" 2>/dev/null)" || return 1
    stat="${stat##*) }"  # drop "pid (comm) ", comm may hold spaces
    [[ -n "$stat" && "${stat:0:1}" != Z && "${stat:0:1}" != X ]]
}
alive() { alive_pid "$(pid_of "$1")"; }

wait_for() {  # wait_for SECONDS DESCRIPTION LOGFILE COMMAND...
    local secs="$1" what="$2" logf="$3"; shift 3
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            say "timed out after ${secs}s waiting for $what"
            [[ -f "$logf" ]] && { say "last lines of $logf:"; tail -n 25 "$logf" >&2; }
            exit 1
        fi
        sleep 0.2
    done
}

stop_pidfile() {  # stop_pidfile NAME PIDFILE: SIGTERM, wait, then SIGKILL
    local name="$1" pidf="$2" pid
    pid="$(pid_of "$pidf")"
    if ! alive_pid "$pid"; then rm -f "$pidf"; return 0; fi
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 20))
    while alive_pid "$pid"; do
        if ((SECONDS >= deadline)); then
            say "$name (pid $pid) ignored SIGTERM for 20s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$pidf"
    say "stopped $name"
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }  # something accepts connections there
need_free_port() {  # only checked when our own daemon is not the one listening
    port_busy "$1" && die "port $1 (for $2) is already in use by another program; free it or set ALIGNBENCH_SLURM_PORTS"
    return 0
}

# ----------------------------------------------------------------- install --
cmd_install() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then say "packages already installed"; return 0; fi
    [[ $EUID -eq 0 ]] || die "install needs root (apt-get)"
    command -v apt-get >/dev/null || die "apt-get not found: install ${PACKAGES[*]} (SLURM 22.05+) by hand"
    say "installing ${missing[*]}"
    # Keep the packages' own services from starting (they would take our ports).
    local policy=/usr/sbin/policy-rc.d added=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; added=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local rc=0
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } || rc=$?
    ((added)) && rm -f "$policy"
    ((rc == 0)) || die "apt-get failed (exit $rc)"
    say "installed"
}

# ------------------------------------------------------------------ config --
write_configs() {
    mkdir -p "$ETC" "$RUN" "$LOG" "$STATE" "$SPOOL" "$MUNGE" "$DEV"
    chmod 755 "$MUNGE" "$RUN"
    command -v slurmd >/dev/null || die "slurmd not found: run 'bash slurm/cluster.sh install' first"

    # The node's real CPU topology and memory, as slurmd sees them.
    local topo
    topo="$(slurmd -C | head -n1 | sed -E 's/^NodeName=[^ ]+ //')"
    local cpus mem
    cpus="$(sed -nE 's/.*CPUs=([0-9]+).*/\1/p' <<<"$topo")"
    mem="$(sed -nE 's/.*RealMemory=([0-9]+).*/\1/p' <<<"$topo")"
    local defmem=$((mem / (cpus > 0 ? cpus : 1) / 2))
    ((defmem > 4096)) && defmem=4096
    ((defmem < 256)) && defmem=256

    # Two fake GPUs: gres.conf refuses plain files, so make character devices
    # with the NVIDIA major number; jobs then get CUDA_VISIBLE_DEVICES.
    for i in 0 1; do
        [[ -c "$DEV/nvidia$i" ]] || { rm -f "$DEV/nvidia$i"; mknod "$DEV/nvidia$i" c 195 "$i"; }
    done

    [[ -s $DB_PASS_FILE ]] || { head -c 18 /dev/urandom | base64 | tr -dc A-Za-z0-9 >"$DB_PASS_FILE"; }
    chmod 600 "$DB_PASS_FILE"
    local dbpass; dbpass="$(cat "$DB_PASS_FILE")"

    : >"$ETC/plugstack.conf"
    cat >"$ETC/gres.conf" <<EOF
AutoDetect=off
NodeName=localhost Name=gpu File=$DEV/nvidia[0-1]
EOF
    cat >"$SLURM_CONF_PATH" <<EOF
# Generated by slurm/cluster.sh; edits are overwritten on the next start.
ClusterName=$CLUSTER
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$STATE
SlurmdSpoolDir=$SPOOL/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$ETC/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$defmem
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=100000
MaxArraySize=10001
MaxJobCount=20000
MinJobAge=300
MailProg=/bin/true
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
OverTimeLimit=0
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=socket=$MUNGE_SOCKET
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 $topo Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$ETC/slurmdbd.conf" <<EOF
# Generated by slurm/cluster.sh.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$dbpass
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$ETC/slurmdbd.conf"
    chmod 644 "$SLURM_CONF_PATH" "$ETC/gres.conf"
}

# ---------------------------------------------------------------- daemons --
start_munge() {
    if alive "$MUNGE/munged.pid"; then return 0; fi
    [[ -s "$MUNGE/munge.key" ]] || mungekey -c -k "$MUNGE/munge.key"
    chmod 600 "$MUNGE/munge.key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE/munge.key" --pid-file="$MUNGE/munged.pid" \
        --log-file="$LOG/munged.log" --seed-file="$MUNGE/munged.seed" \
        || { tail -n 20 "$LOG/munged.log" >&2 || true; die "munged failed to start"; }
    wait_for "$TIMEOUT" munged "$LOG/munged.log" bash -c "munge -S '$MUNGE_SOCKET' -n </dev/null | unmunge -S '$MUNGE_SOCKET'"
    say "munged up"
}

db() { mariadb --no-defaults --socket="$DB_SOCKET" -uroot "$@"; }

start_mariadb() {
    local pidf="$RUN/mariadb.pid"
    if ! alive "$pidf"; then
        need_free_port "$DB_PORT" MariaDB
        if [[ ! -d "$DB/mysql" ]]; then
            mkdir -p "$DB"
            mariadb-install-db --no-defaults --datadir="$DB" --user=root --auth-root-authentication-method=socket \
                --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
                || { tail -n 20 "$LOG/mariadb-install.log" >&2; die "mariadb-install-db failed"; }
        fi
        # mariadbd stays in the foreground: detach it ourselves; it writes its pid file.
        setsid mariadbd --no-defaults --datadir="$DB" --user=root --bind-address=127.0.0.1 --port="$DB_PORT" \
            --socket="$DB_SOCKET" --pid-file="$pidf" --log-error="$LOG/mariadb.log" --skip-name-resolve \
            --innodb-buffer-pool-size=64M --innodb-log-file-size=16M --skip-log-bin \
            </dev/null >/dev/null 2>&1 &
        wait_for "$TIMEOUT" MariaDB "$LOG/mariadb.log" mariadb-admin --no-defaults --socket="$DB_SOCKET" -uroot ping
        say "MariaDB up on 127.0.0.1:$DB_PORT"
    fi
    local pass; pass="$(cat "$DB_PASS_FILE")"
    db -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
           ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
           CREATE DATABASE IF NOT EXISTS slurm_acct_db;
           GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
           FLUSH PRIVILEGES;"
}

start_slurmdbd() {
    if ! alive "$RUN/slurmdbd.pid"; then
        need_free_port "$DBD_PORT" slurmdbd
        slurmdbd || { tail -n 20 "$LOG/slurmdbd.log" >&2 || true; die "slurmdbd failed to start"; }
        wait_for "$TIMEOUT" slurmdbd "$LOG/slurmdbd.log" sacctmgr -n list cluster
        say "slurmdbd up"
    fi
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

start_slurmctld() {
    if alive "$RUN/slurmctld.pid"; then return 0; fi
    need_free_port "$CTLD_PORT" slurmctld
    slurmctld -f "$SLURM_CONF_PATH" || { tail -n 20 "$LOG/slurmctld.log" >&2 || true; die "slurmctld failed to start"; }
    wait_for "$TIMEOUT" slurmctld "$LOG/slurmctld.log" scontrol ping
    say "slurmctld up"
}

start_slurmd() {
    if alive "$RUN/slurmd.pid"; then return 0; fi
    need_free_port "$SLURMD_PORT" slurmd
    slurmd -N localhost -f "$SLURM_CONF_PATH" || { tail -n 20 "$LOG/slurmd.log" >&2 || true; die "slurmd failed to start"; }
    say "slurmd started"
}

node_idle() {
    local st; st="$(sinfo -h -n localhost -o %t 2>/dev/null | head -n1)"
    [[ "$st" == idle* || "$st" == mix* || "$st" == alloc* ]]
}

cmd_start() {
    [[ $EUID -eq 0 ]] || die "start needs root (the daemons run as root from $DIR)"
    if alive "$MUNGE/munged.pid" && alive "$RUN/mariadb.pid" && alive "$RUN/slurmdbd.pid" \
        && alive "$RUN/slurmctld.pid" && alive "$RUN/slurmd.pid" && node_idle; then
        say "already running (SLURM_CONF=$SLURM_CONF_PATH)"
        return 0
    fi
    write_configs
    start_munge
    start_mariadb
    start_slurmdbd
    start_slurmctld
    start_slurmd
    # A node left DOWN/DRAIN by an earlier unclean stop is brought back.
    local st; st="$(sinfo -h -n localhost -o %t 2>/dev/null | head -n1 || true)"
    if [[ "$st" == down* || "$st" == drain* ]]; then
        scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true
    fi
    wait_for "$TIMEOUT" "node localhost to become idle (sinfo)" "$LOG/slurmd.log" node_idle
    say "cluster up: $(sinfo -h -o '%P %D %t %c CPUs %G' | head -n1)"
    say "export SLURM_CONF=$SLURM_CONF_PATH"
}

queue_empty() { [[ -z "$(squeue -h -o %i 2>/dev/null)" ]]; }

cmd_stop() {
    if alive "$RUN/slurmctld.pid"; then
        scancel --full $(squeue -h -o %i 2>/dev/null | tr '\n' ' ') >/dev/null 2>&1 || true
        local deadline=$((SECONDS + 30))
        until queue_empty; do
            ((SECONDS >= deadline)) && { say "queue did not drain in 30s; stopping anyway"; break; }
            sleep 0.5
        done
    fi
    stop_pidfile slurmd "$RUN/slurmd.pid"
    stop_pidfile slurmctld "$RUN/slurmctld.pid"
    stop_pidfile slurmdbd "$RUN/slurmdbd.pid"
    stop_pidfile MariaDB "$RUN/mariadb.pid"
    stop_pidfile munged "$MUNGE/munged.pid"
    say "cluster stopped"
}

cmd_status() {
    local rc=0 name pidf
    for pair in "munged:$MUNGE/munged.pid" "mariadb:$RUN/mariadb.pid" "slurmdbd:$RUN/slurmdbd.pid" \
        "slurmctld:$RUN/slurmctld.pid" "slurmd:$RUN/slurmd.pid"; do
        name="${pair%%:*}"; pidf="${pair#*:}"
        if alive "$pidf"; then
            printf '%-10s running (pid %s)\n' "$name" "$(pid_of "$pidf")"
        else
            printf '%-10s stopped\n' "$name"; rc=1
        fi
    done
    echo "SLURM_CONF=$SLURM_CONF_PATH"
    if ((rc == 0)); then sinfo -o '%P %D %t %c %m %G' || rc=1; fi
    return $rc
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    conf) echo "$SLURM_CONF_PATH" ;;
    *) echo "usage: bash slurm/cluster.sh install|start|stop|status|conf" >&2; exit 2 ;;
esac
