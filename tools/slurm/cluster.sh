#!/usr/bin/env bash
# A single-node SLURM cluster on 127.0.0.1, for testing the workflow's SLURM profile.
#
#   tools/slurm/cluster.sh start  [STATE_DIR]   install what is missing, start the daemons (idempotent)
#   tools/slurm/cluster.sh stop   [STATE_DIR]   cancel leftover jobs, stop every daemon by its PID (always safe)
#   tools/slurm/cluster.sh status [STATE_DIR]   which daemons run; exit 0 only when all of them do
#   tools/slurm/cluster.sh env    [STATE_DIR]   print `export SLURM_CONF=...` for the cluster's clients
#
# STATE_DIR (default $SEGBENCH_SLURM_DIR, else /tmp/segbench-slurm) holds the configuration,
# the munge key, the MariaDB data, the daemons' PID files and logs. Ports: $SEGBENCH_SLURM_PORT
# (default 16817) for slurmctld, +1 slurmd, +2 slurmdbd, +3 MariaDB; all bound to 127.0.0.1.
#
# Daemons: munged, MariaDB + slurmdbd (so that `sacct` works: the Snakemake SLURM plugin polls
# job states with sacct and hangs when it fails), slurmctld, slurmd; all run as root, no systemd.
# Debian 12 packages (slurmctld slurmd slurm-client slurmdbd munge mariadb-server-core
# mariadb-client-core) are installed with apt-get when missing (root only), without starting
# their system services.
#
# Side effects outside STATE_DIR, undone by `stop` where they are ours: /etc/slurm/slurm.conf
# becomes a symlink to STATE_DIR/etc/slurm.conf (the plugin runs `srun` inside each job with
# SLURM_CONF removed from the environment, so the default path must work); if the short hostname
# does not resolve, a `127.0.0.1 <hostname>` line is added to /etc/hosts (kept). The daemons and
# srun bind to the address the hostname resolves to, so start refuses a non-loopback one.
# Facts behind the settings: the project's shared notes on SLURM.
set -euo pipefail

usage() { echo "usage: $0 {start|stop|status|env} [STATE_DIR]" >&2; exit 2; }
[ $# -ge 1 ] || usage
action=$1
state=${2:-${SEGBENCH_SLURM_DIR:-/tmp/segbench-slurm}}
[ "$action" = start ] && mkdir -p "$state"
case $state in /*) ;; *) state=$PWD/$state ;; esac
port=${SEGBENCH_SLURM_PORT:-16817}
ctld_port=$port
slurmd_port=$((port + 1))
dbd_port=$((port + 2))
db_port=$((port + 3))
cluster=segbench
etc=$state/etc
run=$state/run
logs=$state/log
munge_dir=$state/munge
db_dir=$state/mysql
db_socket=$run/mysqld.sock
munge_socket=$run/munge.socket  # the key stays in the private $munge_dir; the socket needs a searchable directory
export SLURM_CONF=$etc/slurm.conf
SYSTEM_CONF=/etc/slurm/slurm.conf
APT_PACKAGES="slurmctld slurmd slurm-client slurmdbd munge mariadb-server-core mariadb-client-core"
# daemon name -> PID file, in start order
DAEMONS="munged mysqld slurmdbd slurmctld slurmd"
pidfile() { echo "$run/$1.pid"; }

log() { echo "cluster.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

pid_of() {  # the PID of a running daemon of ours, or nothing (a reused PID of another program does not count)
  local f pid comm
  f=$(pidfile "$1")
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' < "$f")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
  case $1 in mysqld) [ "$comm" = mariadbd ] || [ "$comm" = mysqld ] ;; *) [ "$comm" = "$1" ] ;; esac || return 1
  echo "$pid"
}

wait_until() {  # wait_until SECONDS WHAT COMMAND...: poll COMMAND every 0.2 s
  local seconds=$1 what=$2 deadline
  shift 2
  deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "timed out after ${seconds}s waiting for $what; logs in $logs"
      tail -n 20 "$logs"/*.log >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.2
  done
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

install_packages() {
  local missing="" p
  for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -n "$missing" ] || return 0
  [ "$(id -u)" = 0 ] || die "missing Debian packages:$missing (run: sudo apt-get install$missing)"
  log "installing$missing"
  # Keep the packages' own services (a system munged, slurmctld, ...) from starting.
  local own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local rc=0
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing; } \
    > "$state/apt.log" 2>&1 || rc=$?
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
  [ $rc = 0 ] || { tail -n 30 "$state/apt.log" >&2; die "apt-get install failed (log: $state/apt.log)"; }
}

check_hostname() {
  # With CommunicationParameters=NoInAddrAny the daemons and srun bind to the address that the
  # hostname resolves to: it must resolve, and to loopback.
  local address
  host=$(hostname -s)
  if ! getent hosts "$host" >/dev/null; then
    [ "$(id -u)" = 0 ] || die "hostname $host does not resolve; add '127.0.0.1 $host' to /etc/hosts"
    log "hostname $host does not resolve: adding '127.0.0.1 $host' to /etc/hosts"
    echo "127.0.0.1 $host" >> /etc/hosts
  fi
  address=$(getent hosts "$host" | awk '{print $1; exit}')
  case $address in
    127.*|::1) ;;
    *) die "hostname $host resolves to $address, not to loopback: SLURM would listen there; map it to 127.0.0.1 in /etc/hosts" ;;
  esac
}

write_configs() {
  mkdir -p "$etc" "$run" "$logs" "$state/spool/ctld" "$state/spool/d"
  chmod 755 "$state"
  local node
  # The node as slurmd sees it (CPUs, sockets, cores, memory), so that it registers as valid.
  node=$(slurmd -C | head -n 1)
  [[ $node == NodeName=* ]] || die "slurmd -C printed no node description: $node"
  cat > "$etc/slurm.conf.new" <<EOF
# Written by tools/slurm/cluster.sh: a single-node test cluster on loopback.
ClusterName=$cluster
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$munge_socket
CredType=cred/munge
StateSaveLocation=$state/spool/ctld
SlurmdSpoolDir=$state/spool/d
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$(pidfile slurmd)
SlurmctldLogFile=$logs/slurmctld.log
SlurmdLogFile=$logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
AccountingStoragePass=$munge_socket
AccountingStoreFlags=job_comment
ReturnToService=2
MinJobAge=300
KillWait=5
InactiveLimit=0
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  mv "$etc/slurm.conf.new" "$etc/slurm.conf"
  if [ ! -s "$state/db.password" ]; then
    (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$state/db.password")
  fi
  (umask 077; cat > "$etc/slurmdbd.conf" <<EOF
# Written by tools/slurm/cluster.sh.
AuthType=auth/munge
AuthInfo=socket=$munge_socket
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$dbd_port
CommunicationParameters=NoInAddrAny
SlurmUser=root
PidFile=$(pidfile slurmdbd)
LogFile=$logs/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=$(cat "$state/db.password")
StorageLoc=slurm_acct_db
EOF
  )
  chmod 600 "$etc/slurmdbd.conf"
}

link_system_conf() {
  mkdir -p /etc/slurm
  if [ -L "$SYSTEM_CONF" ]; then
    [ "$(readlink "$SYSTEM_CONF")" = "$etc/slurm.conf" ] && return 0
    log "replacing the symlink $SYSTEM_CONF -> $(readlink "$SYSTEM_CONF")"
  elif [ -e "$SYSTEM_CONF" ]; then
    die "$SYSTEM_CONF exists and is not a symlink (a real cluster's configuration?); not replacing it"
  fi
  ln -sfn "$etc/slurm.conf" "$SYSTEM_CONF"
}

check_port_free() {  # check_port_free PORT DAEMON: refuse to start next to a stranger on our port
  if port_open "$1"; then
    die "port $1 (for $2) is already in use on 127.0.0.1; set SEGBENCH_SLURM_PORT to another base"
  fi
}

start_munged() {
  pid_of munged >/dev/null && return 0
  mkdir -p "$munge_dir"
  chmod 700 "$munge_dir"
  if [ ! -s "$munge_dir/munge.key" ]; then
    dd if=/dev/urandom of="$munge_dir/munge.key" bs=1024 count=1 status=none
  fi
  chmod 400 "$munge_dir/munge.key"
  rm -f "$munge_socket" "$munge_socket.lock"
  munged --key-file="$munge_dir/munge.key" --socket="$munge_socket" \
    --pid-file="$(pidfile munged)" --log-file="$logs/munged.log" --seed-file="$munge_dir/munge.seed" \
    </dev/null >>"$logs/munged.log" 2>&1 || die "munged did not start (log: $logs/munged.log)"
  wait_until 10 munged munge --socket="$munge_socket" -n
}

db() { mariadb --no-defaults --socket="$db_socket" -u root "$@"; }

start_mysqld() {
  pid_of mysqld >/dev/null && return 0
  check_port_free "$db_port" MariaDB
  if [ ! -d "$db_dir/mysql" ]; then
    rm -rf "$db_dir"
    mariadb-install-db --no-defaults --datadir="$db_dir" --user=root --auth-root-authentication-method=socket \
      --skip-test-db >"$logs/mysql-install.log" 2>&1 || { tail -n 20 "$logs/mysql-install.log" >&2; die "mariadb-install-db failed"; }
  fi
  setsid mariadbd --no-defaults --datadir="$db_dir" --socket="$db_socket" --port="$db_port" \
    --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$(pidfile mysqld)" --user=root \
    --log-error="$logs/mysqld.log" --innodb-buffer-pool-size=64M --innodb-log-file-size=48M \
    </dev/null >>"$logs/mysqld.log" 2>&1 &
  wait_until 60 MariaDB db -e "SELECT 1"
  db -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$(cat "$state/db.password")';
         ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$(cat "$state/db.password")';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
}

start_slurmdbd() {
  pid_of slurmdbd >/dev/null && return 0
  check_port_free "$dbd_port" slurmdbd
  slurmdbd </dev/null >>"$logs/slurmdbd.log" 2>&1 || die "slurmdbd did not start (log: $logs/slurmdbd.log)"
  wait_until 60 slurmdbd port_open "$dbd_port"
}

start_slurmctld() {
  pid_of slurmctld >/dev/null && return 0
  check_port_free "$ctld_port" slurmctld
  slurmctld -f "$SLURM_CONF" </dev/null >>"$logs/slurmctld.log" 2>&1 || die "slurmctld did not start (log: $logs/slurmctld.log)"
  wait_until 30 slurmctld scontrol ping
}

start_slurmd() {
  pid_of slurmd >/dev/null && return 0
  check_port_free "$slurmd_port" slurmd
  slurmd -f "$SLURM_CONF" </dev/null >>"$logs/slurmd.log" 2>&1 || die "slurmd did not start (log: $logs/slurmd.log)"
}

node_ready() {
  local s
  s=$(sinfo -h -n "$host" -o %T 2>/dev/null) || return 1
  case $s in
    idle*|mixed*|allocated*|completing*) return 0 ;;
    down*|drain*|fail*) scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true; return 1 ;;
    *) return 1 ;;
  esac
}

accounting_ready() {
  sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$cluster" &&
    sacct -n -X -S now-1minutes -o JobID >/dev/null 2>&1
}

start() {
  install_packages
  check_hostname
  write_configs
  link_system_conf
  start_munged
  start_mysqld
  start_slurmdbd
  start_slurmctld
  start_slurmd
  wait_until 60 "node $host to be idle" node_ready
  wait_until 60 "the cluster to register with slurmdbd" accounting_ready
  log "cluster '$cluster' up on 127.0.0.1 (state: $state); clients: export SLURM_CONF=$SLURM_CONF"
}

stop_daemons() {  # stop_daemons NAME...: TERM them together, KILL what still runs after 20 s
  local name pid pids="" i alive entry
  for name in "$@"; do
    if pid=$(pid_of "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids="$pids $name:$pid"
    fi
  done
  for i in $(seq 100); do
    alive=""
    for entry in $pids; do kill -0 "${entry#*:}" 2>/dev/null && alive="$alive $entry"; done
    [ -n "$alive" ] || break
    sleep 0.2
  done
  for entry in $alive; do
    log "${entry%%:*} (PID ${entry#*:}) did not stop; killing it"
    kill -KILL "${entry#*:}" 2>/dev/null || true
  done
  for name in "$@"; do rm -f "$(pidfile "$name")"; done
}

stop() {
  if [ -d "$run" ] && pid_of slurmctld >/dev/null && command -v scancel >/dev/null; then
    local jobs i
    jobs=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      log "cancelling leftover jobs: $(echo $jobs)"
      # shellcheck disable=SC2086
      timeout 10 scancel $jobs 2>/dev/null || true
      for i in $(seq 50); do
        [ -z "$(timeout 5 squeue -h -o %A -t RUNNING,COMPLETING,PENDING 2>/dev/null || true)" ] && break
        sleep 0.2
      done
    fi
  fi
  if [ -d "$run" ]; then
    stop_daemons slurmd slurmctld   # slurmctld saves its state, and may still talk to slurmdbd
    stop_daemons slurmdbd mysqld munged
  fi
  if [ -L "$SYSTEM_CONF" ] && [ "$(readlink "$SYSTEM_CONF")" = "$etc/slurm.conf" ]; then
    rm -f "$SYSTEM_CONF"
  fi
  log "stopped (state kept in $state)"
}

status() {
  local daemon pid down=0
  for daemon in $DAEMONS; do
    if pid=$(pid_of "$daemon"); then
      echo "$daemon: running (PID $pid)"
    else
      echo "$daemon: stopped"
      down=1
    fi
  done
  if [ $down = 0 ]; then
    timeout 10 sinfo || down=1
  fi
  return $down
}

case $action in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) echo "export SLURM_CONF=$SLURM_CONF" ;;
  *) usage ;;
esac
