#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine for the `slurm` tests and the SLURM benchmark.
#
#   bash tests/slurm/start.sh        # install (when missing), configure, start; prints what it did
#   bash tests/slurm/stop.sh         # stop every daemon this script started (by pid)
#
# What runs: munged (as user munge), mariadbd (as user mysql, 127.0.0.1 only) + slurmdbd (so that
# `sacct` answers, as on a real cluster), slurmctld and slurmd (as root). Nothing starts them
# automatically on this kind of machine. Debian packages: slurm-wlm munge mariadb-server slurmdbd
# (installed with apt-get when a binary is missing and we are root; ~15-40 s).
#
# Idempotent: a daemon that is already running (its pid file names a live process) is left alone,
# configs are rewritten only when they are ours (first line is the marker below). State, spool,
# logs, pid files and the database live under $CYTOSCREEN_SLURM_DIR (default /tmp/cytoscreen-slurm);
# the configs go to /etc/slurm, where the SLURM clients (sinfo, sbatch, sacct) look for them.
#
# Exit codes: 0 the cluster is up (`sinfo` shows the node idle, `sacct` answers);
#             3 SLURM cannot run here (not root, no apt-get, packages not installable): a reason to skip;
#             1 anything else (a bug or a broken set-up: fail, and read the logs it prints).
#
# Environment: CYTOSCREEN_SLURM_DIR (state folder), CYTOSCREEN_SLURM_DB_PORT (mariadb port, 3317),
# CYTOSCREEN_SLURM_MEM_MB (node RealMemory, default 80 % of MemTotal),
# CYTOSCREEN_SLURM_GPUS (gres/gpu the node advertises, default 2, backed by /dev/null, /dev/zero, ...:
# jobs that ask for GPUs are scheduled and find no CUDA device, which tests the GPU request path on
# a CPU machine; 0 advertises none),
# CYTOSCREEN_SLURM_INSTALL=0 (never call apt-get).
set -uo pipefail

MARKER="# written by cytoscreen tests/slurm/start.sh"
DIR="${CYTOSCREEN_SLURM_DIR:-/tmp/cytoscreen-slurm}"
DB_PORT="${CYTOSCREEN_SLURM_DB_PORT:-3317}"
GPUS="${CYTOSCREEN_SLURM_GPUS:-2}"
CLUSTER=cytoscreen
ACCOUNT=cytoscreen
PARTITION=debug
ETC=/etc/slurm
PACKAGES=(slurm-wlm munge mariadb-server slurmdbd)

say() { echo "slurm/start.sh: $*"; }
cannot() { echo "slurm/start.sh: SLURM cannot run here: $*" >&2; exit 3; }
fail() {
  echo "slurm/start.sh: error: $*" >&2
  for log in "$DIR"/log/*.log; do
    [ -f "$log" ] || continue
    echo "---- last lines of $log" >&2
    tail -n 15 "$log" >&2
  done
  exit 1
}
# wait_for SECONDS DESCRIPTION COMMAND...: poll COMMAND every second until it succeeds
wait_for() {
  local secs=$1 what=$2
  shift 2
  for _ in $(seq "$secs"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  fail "timed out after ${secs}s waiting for $what"
}
alive() { [ -f "$1" ] && kill -0 "$(cat "$1" 2>/dev/null)" 2>/dev/null; }
# write_conf PATH MODE: write stdin to PATH unless PATH exists and is not ours
write_conf() {
  local path=$1 mode=$2 tmp
  if [ -f "$path" ] && ! head -n 1 "$path" | grep -qF "$MARKER"; then
    fail "$path exists and was not written by this script; move it away to use the test cluster"
  fi
  tmp=$(mktemp)
  { echo "$MARKER"; cat; } >"$tmp"
  if [ -f "$path" ] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
  else
    install -m "$mode" "$tmp" "$path" && rm -f "$tmp"
    CHANGED=1
    say "wrote $path"
  fi
}

[ "$(id -u)" -eq 0 ] || cannot "needs root (daemons, /etc/slurm, apt-get); run it as root"
HOST=$(hostname -s)
CHANGED=0

# ---- 1. packages
missing=()
for bin in slurmctld slurmd slurmdbd sbatch sacct munged mariadbd; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$bin")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "${CYTOSCREEN_SLURM_INSTALL:-1}" != 0 ] || cannot "missing ${missing[*]} and CYTOSCREEN_SLURM_INSTALL=0"
  command -v apt-get >/dev/null 2>&1 || cannot "missing ${missing[*]} and no apt-get to install ${PACKAGES[*]}"
  say "installing ${PACKAGES[*]} (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt_install() { timeout 600 apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >"${TMPDIR:-/tmp}/cytoscreen-slurm-apt.log" 2>&1; }
  if ! apt_install; then
    say "apt-get install failed; running apt-get update first"
    timeout 300 apt-get update -qq >/dev/null 2>&1 || true
    apt_install || cannot "apt-get install ${PACKAGES[*]} failed (see ${TMPDIR:-/tmp}/cytoscreen-slurm-apt.log)"
  fi
  say "installed ${PACKAGES[*]}"
fi
export PATH="/usr/sbin:/usr/bin:$PATH"

mkdir -p "$DIR"/{state,spool,log,run} "$ETC"
chmod 755 "$DIR" "$DIR"/run "$DIR"/log

# ---- 2. configuration
MEM_TOTAL_MB=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
MEM_MB="${CYTOSCREEN_SLURM_MEM_MB:-$((MEM_TOTAL_MB * 8 / 10))}"
CPUS=$(nproc)
if [ ! -f "$DIR/db_password" ]; then
  head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/db_password"
  chmod 600 "$DIR/db_password"
fi
DB_PASS=$(cat "$DIR/db_password")
GRES_LINE=""
GRES_NODE=""
GPU_FILES=""
if [ "$GPUS" -gt 0 ]; then
  # gres/gpu needs one device file per GPU; harmless character devices stand in for them
  GPU_FILES=$(printf '%s\n' /dev/null /dev/zero /dev/full /dev/urandom | head -n "$GPUS" | paste -sd, -)
  GRES_LINE="GresTypes=gpu"
  GRES_NODE="Gres=gpu:$GPUS"
fi

write_conf "$ETC/slurm.conf" 644 <<EOF
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$HOST
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
MinJobAge=300
InactiveLimit=0
KillWait=10
$GRES_LINE
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB $GRES_NODE State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL Default=NO MaxTime=INFINITE State=UP
EOF

if [ "$GPUS" -gt 0 ]; then
  write_conf "$ETC/gres.conf" 644 <<EOF
NodeName=$HOST Name=gpu File=$GPU_FILES
EOF
fi

write_conf "$ETC/slurmdbd.conf" 600 <<EOF
AuthType=auth/munge
DbdHost=$HOST
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF

# ---- 3. already up with this configuration?
if [ "$CHANGED" = 1 ]; then
  # a new configuration: restart the SLURM daemons (munged and mariadbd keep running)
  for name in slurmd slurmctld slurmdbd; do
    if alive "$DIR/run/$name.pid"; then
      pid=$(cat "$DIR/run/$name.pid")
      kill -TERM "$pid"
      for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -KILL "$pid" 2>/dev/null || true
      rm -f "$DIR/run/$name.pid"
      say "stopped $name (pid $pid) to load the new configuration"
    fi
  done
elif alive "$DIR/run/slurmctld.pid" && alive "$DIR/run/slurmd.pid" && alive "$DIR/run/slurmdbd.pid" \
  && timeout 10 sinfo -h -n "$HOST" -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)' \
  && timeout 10 sacct -n -X -S now-1minutes >/dev/null 2>&1; then
  say "already running (node $HOST, partition $PARTITION, state in $DIR)"
  exit 0
fi

# ---- 4. munge
if [ ! -s /etc/munge/munge.key ]; then
  install -d -o munge -g munge -m 700 /etc/munge
  runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key || fail "could not create the munge key"
  say "created /etc/munge/munge.key"
fi
install -d -o munge -g munge -m 755 /run/munge
install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
if alive /run/munge/munged.pid && munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "munged already running (pid $(cat /run/munge/munged.pid))"
else
  runuser -u munge -- munged --force || fail "munged did not start (see /var/log/munge/munged.log)"
  wait_for 20 "munge to answer" bash -c 'munge -n </dev/null | unmunge'
  say "started munged (pid $(cat /run/munge/munged.pid))"
fi

# ---- 5. mariadb + slurmdbd (accounting, so that sacct answers)
MYSQL=(mariadb --no-defaults --socket="$DIR/run/mysqld.sock" -uroot)
if alive "$DIR/run/mariadb.pid"; then
  say "mariadbd already running (pid $(cat "$DIR/run/mariadb.pid"))"
else
  if [ ! -d "$DIR/mysql/mysql" ]; then
    install -d -o mysql -g mysql -m 750 "$DIR/mysql"
    timeout 120 mariadb-install-db --no-defaults --user=mysql --datadir="$DIR/mysql" --skip-test-db \
      --auth-root-authentication-method=socket >"$DIR/log/mariadb-install.log" 2>&1 \
      || fail "mariadb-install-db failed (see $DIR/log/mariadb-install.log)"
    say "initialised the accounting database in $DIR/mysql"
  fi
  chown mysql:mysql "$DIR/run"
  touch "$DIR/log/mariadb.log" && chown mysql:mysql "$DIR/log/mariadb.log"
  setsid mariadbd --no-defaults --user=mysql --datadir="$DIR/mysql" --socket="$DIR/run/mysqld.sock" \
    --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$DIR/run/mariadb.pid" \
    --log-error="$DIR/log/mariadb.log" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
  wait_for 60 "mariadbd to accept connections" "${MYSQL[@]}" -e "SELECT 1"
  say "started mariadbd on 127.0.0.1:$DB_PORT (pid $(cat "$DIR/run/mariadb.pid"))"
fi
"${MYSQL[@]}" -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
  CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
  CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
  GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" || fail "could not create the slurm database user"

if alive "$DIR/run/slurmdbd.pid"; then
  say "slurmdbd already running (pid $(cat "$DIR/run/slurmdbd.pid"))"
else
  slurmdbd || fail "slurmdbd did not start"
  wait_for 60 "slurmdbd to answer" timeout 10 sacctmgr -n show cluster
  say "started slurmdbd (pid $(cat "$DIR/run/slurmdbd.pid"))"
fi
if ! timeout 10 sacctmgr -n -P show cluster format=cluster | grep -qx "$CLUSTER"; then
  timeout 30 sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster $CLUSTER failed"
  say "added cluster $CLUSTER to the accounting database"
fi
if ! timeout 10 sacctmgr -n -P show account format=account | grep -qx "$ACCOUNT"; then
  timeout 30 sacctmgr -i add account "$ACCOUNT" cluster="$CLUSTER" description=tests organization=cytoscreen \
    >/dev/null || fail "sacctmgr add account $ACCOUNT failed"
  say "added account $ACCOUNT"
fi
ME=$(id -un)
if ! timeout 10 sacctmgr -n -P show assoc where user="$ME" account="$ACCOUNT" format=user | grep -qx "$ME"; then
  timeout 30 sacctmgr -i add user "$ME" account="$ACCOUNT" defaultaccount="$ACCOUNT" cluster="$CLUSTER" \
    >/dev/null || fail "sacctmgr add user $ME failed"
  say "added user $ME to account $ACCOUNT"
fi

# ---- 6. slurmctld + slurmd
if alive "$DIR/run/slurmctld.pid"; then
  say "slurmctld already running (pid $(cat "$DIR/run/slurmctld.pid"))"
  timeout 20 scontrol reconfigure >/dev/null 2>&1 || true
else
  slurmctld || fail "slurmctld did not start"
  wait_for 60 "slurmctld to answer" bash -c 'timeout 5 scontrol ping | grep -q UP'
  say "started slurmctld (pid $(cat "$DIR/run/slurmctld.pid"))"
fi
if alive "$DIR/run/slurmd.pid"; then
  say "slurmd already running (pid $(cat "$DIR/run/slurmd.pid"))"
else
  slurmd || fail "slurmd did not start"
  wait_for 30 "slurmd's pid file" test -s "$DIR/run/slurmd.pid"
  say "started slurmd (pid $(cat "$DIR/run/slurmd.pid"))"
fi
# a node left down or drained by an earlier run comes back
state=$(timeout 10 sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n 1)
case "$state" in
  down* | drain* | fail*)
    timeout 10 scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true
    say "resumed node $HOST (was $state)" ;;
esac
wait_for 90 "node $HOST to be idle (sinfo)" bash -c "timeout 5 sinfo -h -n $HOST -o %T | grep -qE '^(idle|mixed|allocated)'"
wait_for 30 "sacct to answer" timeout 10 sacct -n -X -S now-1minutes
say "SLURM is up: node $HOST ($CPUS CPUs, ${MEM_MB} MB, $GPUS stand-in GPUs), partitions $PARTITION (default) and gpu," \
  "account $ACCOUNT, accounting via slurmdbd; logs in $DIR/log; stop with tests/slurm/stop.sh"
