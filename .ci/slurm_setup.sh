#!/usr/bin/env bash
# A throw-away one-node SLURM cluster for tests/test_slurm.py (CI, as root, Debian/Ubuntu).
#
#   .ci/slurm_setup.sh install   apt-get install slurmctld slurmd slurm-client munge
#   .ci/slurm_setup.sh start     write a one-node config under $SHARPGEN_SLURM_DIR and start
#                                munged, slurmctld, slurmd (on their own ports, so a real SLURM
#                                on the machine is never touched); waits until the node is idle
#   .ci/slurm_setup.sh stop      stop exactly the daemons `start` started (their pid files)
#   .ci/slurm_setup.sh env       print `export SLURM_CONF=...` for the client commands
#
# The cluster: one node (this host) with Gres=gpu:1 backed by /dev/null (no real GPU needed),
# partitions `ci_cpu` (default) and `ci_gpu` (names differ from profiles/slurm on purpose:
# the test overrides them as a user would), no accounting (so `sacct` cannot see jobs: the Snakemake
# SLURM plugin must use `squeue`, which works because MinJobAge is long), no cgroups
# (proctrack/linuxproc, task/none), select/cons_tres so that `sbatch --gpus=1` is understood.
# Clients find it through SLURM_CONF=$SHARPGEN_SLURM_DIR/slurm.conf.
set -euo pipefail

DIR="${SHARPGEN_SLURM_DIR:-/tmp/sharpgen-slurm}"
CTLD_PORT="${SHARPGEN_SLURM_CTLD_PORT:-16817}"
SLURMD_PORT="${SHARPGEN_SLURM_SLURMD_PORT:-16818}"
MUNGE_SOCKET="$DIR/munge/munge.socket.2"
CPU_PART="${SHARPGEN_SLURM_CPU_PARTITION:-ci_cpu}"
GPU_PART="${SHARPGEN_SLURM_GPU_PARTITION:-ci_gpu}"

die() { echo "slurm_setup: $*" >&2; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root (it installs packages and starts daemons)"; }

cmd_install() {
    need_root
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        echo "slurm_setup: SLURM and munge already installed"
        return 0
    fi
    command -v apt-get >/dev/null || die "apt-get not found: install slurmctld slurmd slurm-client munge by hand"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
    echo "slurm_setup: installed $(slurmctld -V)"
}

write_config() {
    local host node
    host="$(hostname -s)"
    # the node's real CPUs/sockets/cores/memory, as slurmd sees them (a mismatch drains the node)
    node="$(slurmd -C | grep '^NodeName=' | head -1)"
    [ -n "$node" ] || node="NodeName=$host CPUs=$(nproc) RealMemory=1000"
    # advertise at least SHARPGEN_SLURM_CPUS CPUs (default 8) so that independent tiny jobs run
    # side by side on a small CI machine (SlurmdParameters=config_overrides below)
    local want="${SHARPGEN_SLURM_CPUS:-8}" have
    have="$(echo "$node" | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p')"
    if [ -n "$have" ] && [ "$have" -lt "$want" ]; then
        node="NodeName=$host CPUs=$want RealMemory=$(echo "$node" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')"
    fi
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge" "$DIR/log"
    cat > "$DIR/slurm.conf" <<EOF
ClusterName=sharpgen-ci
SlurmctldHost=$host
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
GresTypes=gpu
# keep finished jobs visible to squeue for 15 min (the plugin's squeue status query needs it)
MinJobAge=900
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=60
MpiDefault=none
MailProg=/bin/true
$node Gres=gpu:1 State=UNKNOWN
PartitionName=$CPU_PART Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=$GPU_PART Nodes=$host MaxTime=INFINITE State=UP
EOF
    cat > "$DIR/gres.conf" <<EOF
NodeName=$host Name=gpu File=/dev/null
EOF
}

start_munge() {
    if [ -S "$MUNGE_SOCKET" ] && munge -n -S "$MUNGE_SOCKET" >/dev/null 2>&1; then
        return 0
    fi
    local key=/etc/munge/munge.key
    if [ ! -s "$key" ]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom bs=1 count=1024 of="$key" 2>/dev/null
    fi
    chown munge:munge "$key" 2>/dev/null || true
    chmod 400 "$key"
    chown munge:munge "$DIR/munge" 2>/dev/null || true
    chmod 755 "$DIR/munge"
    mkdir -p /var/lib/munge /var/log/munge
    chown munge:munge /var/lib/munge /var/log/munge 2>/dev/null || true
    local as=()
    if id munge >/dev/null 2>&1; then as=(runuser -u munge --); fi
    "${as[@]}" munged --socket="$MUNGE_SOCKET" --pid-file="$DIR/munge/munged.pid" \
        --log-file="$DIR/munge/munged.log" --seed-file="$DIR/munge/munged.seed"
    for _ in $(seq 50); do
        munge -n -S "$MUNGE_SOCKET" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "munged did not start (see $DIR/munge/munged.log)"
}

# srun inside a job reads the DEFAULT config path: the jobstep plugin strips SLURM_* variables,
# SLURM_CONF included, from the job step's environment. So link ours there, but never replace a
# slurm.conf that is not ours (a real SLURM installation).
ETC_CONF=/etc/slurm/slurm.conf
link_default_config() {
    if [ -e "$ETC_CONF" ] || [ -L "$ETC_CONF" ]; then
        if [ "$(readlink "$ETC_CONF" || true)" != "$DIR/slurm.conf" ]; then
            die "$ETC_CONF exists and is not this test cluster's; refusing to replace it"
        fi
    fi
    mkdir -p /etc/slurm
    ln -sfn "$DIR/slurm.conf" "$ETC_CONF"
}

unlink_default_config() {
    if [ -L "$ETC_CONF" ] && [ "$(readlink "$ETC_CONF")" = "$DIR/slurm.conf" ]; then
        rm -f "$ETC_CONF"
    fi
}

cmd_start() {
    need_root
    command -v slurmctld >/dev/null || die "slurmctld not installed (run: $0 install)"
    write_config
    link_default_config
    export SLURM_CONF="$DIR/slurm.conf"
    start_munge
    # -i: ignore saved state from a previous run of this throw-away cluster
    slurmctld -i -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    local state=""
    for _ in $(seq 60); do
        state="$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)"
        if [ "$state" = "idle" ]; then
            echo "slurm_setup: node idle; export SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.5
    done
    echo "--- slurmctld.log"; tail -20 "$DIR/log/slurmctld.log" 2>/dev/null || true
    echo "--- slurmd.log"; tail -20 "$DIR/log/slurmd.log" 2>/dev/null || true
    die "node not idle after 30 s (state: '${state:-no answer}')"
}

stop_pidfile() {
    local f="$1" pid
    [ -s "$f" ] || return 0
    pid="$(cat "$f")"
    if kill -0 "$pid" 2>/dev/null; then
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$f"
}

cmd_stop() {
    export SLURM_CONF="$DIR/slurm.conf"
    stop_pidfile "$DIR/slurmd.pid"
    stop_pidfile "$DIR/slurmctld.pid"
    stop_pidfile "$DIR/munge/munged.pid"
    unlink_default_config
    echo "slurm_setup: stopped"
}

case "${1:-}" in
    install) cmd_install ;;
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) echo "export SLURM_CONF=$DIR/slurm.conf" ;;
    *) die "usage: $0 install|start|stop|env" ;;
esac
