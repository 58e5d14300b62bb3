#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for trying `study submit --slurm` and for its tests.
#   bash scripts/slurm-local.sh start    # install slurm-wlm and munge if missing, configure, start; idempotent
#   bash scripts/slurm-local.sh status   # the daemons and `sinfo`
#   bash scripts/slurm-local.sh stop     # stop slurmd, slurmctld and munged (the configuration stays)
# Runs as root (it installs Debian packages and starts daemons), with no systemd: the daemons are
# started directly. Partitions: `debug` (the default) and `urgent`, a higher tier whose jobs preempt
# debug's, which are requeued (PreemptMode=REQUEUE): preemption can be tried on one machine.
# SLURM_LOCAL_CONF: the config folder this script owns [default: /etc/slurm, where the slurm commands
# look]; another folder needs SLURM_CONF=$SLURM_LOCAL_CONF/slurm.conf exported for them.
# SLURM_LOCAL_STATE: state, logs and pid files [default: /var/lib/slurm-local].
set -euo pipefail
CONF_DIR="${SLURM_LOCAL_CONF:-/etc/slurm}"
STATE="${SLURM_LOCAL_STATE:-/var/lib/slurm-local}"
CONF="$CONF_DIR/slurm.conf"
MARK="# written by scaling-study's scripts/slurm-local.sh"
NODE="$(hostname -s)"
export SLURM_CONF="$CONF"

say() { echo "slurm-local: $*"; }
die() { echo "slurm-local: error: $*" >&2; exit 1; }

running() {  # running NAME: the daemon NAME of this configuration is alive
  local pidfile="$STATE/run/$1.pid"
  [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

install_packages() {
  local missing=""
  for p in slurm-wlm munge; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  [ -z "$missing" ] && return
  [ "$(id -u)" -eq 0 ] || die "installing$missing needs root"
  say "installing$missing"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq $missing >/dev/null
}

write_config() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    die "$CONF exists and was not written by this script; set SLURM_LOCAL_CONF to another folder"
  fi
  local cpus mem_mb
  cpus="$(nproc)"
  mem_mb="$(free -m | awk '/^Mem:/ {print $2}')"
  mem_mb=$((mem_mb * 9 / 10))  # what slurmd finds must not be less than the node's RealMemory
  mkdir -p "$CONF_DIR" "$STATE/ctld" "$STATE/d" "$STATE/run" "$STATE/log"
  cat >"$CONF.new" <<EOF
$MARK: edit that script, not this file
ClusterName=study-local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# a requeued job waits cred_expire + 1 seconds before it may start again (default 120)
AuthInfo=cred_expire=10
CredType=cred/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# no cgroups here (containers, sandboxes): processes are tracked by their parents, tasks not bound
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# a preempted job (one of partition urgent's needs its CPUs) is requeued, not cancelled; JobRequeue=1:
# a batch job may be requeued (node failure, \`scontrol requeue\`) unless it asks --no-requeue
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
JobRequeue=1
# seconds between SIGTERM and SIGKILL when a job is cancelled, preempted or out of time
KillWait=30
OverTimeLimit=0
MinJobAge=600
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
Waittime=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 DefMemPerCPU=$((mem_mb / cpus / 2))
PartitionName=urgent Nodes=$NODE MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF DefMemPerCPU=$((mem_mb / cpus / 2))
EOF
  if [ -f "$CONF" ] && cmp -s "$CONF" "$CONF.new"; then
    rm "$CONF.new"
  else
    mv "$CONF.new" "$CONF"
    CHANGED=1
  fi
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key
  fi
  chown -R munge:munge /etc/munge
  chmod 0700 /etc/munge
  chmod 0400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 0755 /run/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    rm -f /run/munge/munged.pid /run/munge/munge.socket.2*
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
    munge -n | unmunge >/dev/null || die "munged did not start"
  fi
}

start_daemon() {  # start_daemon NAME: start slurmctld or slurmd unless it is running
  if running "$1"; then
    return
  fi
  "/usr/sbin/$1" -f "$CONF" >>"$STATE/log/$1.out" 2>&1 || die "$1 did not start: see $STATE/log/$1.log"
}

node_state() { sinfo -h -n "$NODE" -o %T 2>/dev/null | head -1 | tr -d '*~#'; }

start() {
  install_packages
  CHANGED=0
  write_config
  start_munge
  if [ "$CHANGED" = 1 ] && running slurmctld; then  # a new configuration: the daemons reread it
    scontrol reconfigure || true
  fi
  start_daemon slurmctld
  for _ in $(seq 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.3; done
  scontrol ping | grep -q UP || die "slurmctld does not answer: see $STATE/log/slurmctld.log"
  start_daemon slurmd
  local state=""
  for _ in $(seq 100); do
    state="$(node_state)"
    case "$state" in
      idle|mixed|allocated|completing) break ;;
      down|drained|draining|drain|fail|failing|"down+drain")
        scontrol update nodename="$NODE" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.3
  done
  case "$state" in
    idle|mixed|allocated|completing) ;;
    *) die "node $NODE is ${state:-unknown}, not idle: see $STATE/log/slurmd.log and \`scontrol show node\`" ;;
  esac
  say "cluster up: node $NODE ($(nproc) CPUs), partitions debug (default) and urgent (preempts debug)"
  sinfo
}

stop() {
  for daemon in slurmd slurmctld; do
    if running "$daemon"; then
      local pid
      pid="$(cat "$STATE/run/$daemon.pid")"
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      say "stopped $daemon"
    fi
  done
  if [ -s /run/munge/munged.pid ] && kill -0 "$(cat /run/munge/munged.pid)" 2>/dev/null; then
    kill "$(cat /run/munge/munged.pid)"
    say "stopped munged"
  fi
}

status() {
  local up=0
  for daemon in slurmctld slurmd; do
    if running "$daemon"; then say "$daemon running (pid $(cat "$STATE/run/$daemon.pid"))"; else say "$daemon stopped"; up=1; fi
  done
  [ "$up" = 0 ] && sinfo
  return "$up"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
