#!/usr/bin/env bash
# Stop the one-node SLURM cluster that tests/slurm/start.sh started: cancel its jobs, then end
# slurmd, slurmctld, slurmdbd, mariadbd and munged by the pids in their pid files (TERM, then KILL
# after 20 s). Prints what it did; safe to run when nothing is running.
#
#   bash tests/slurm/stop.sh           # stop; keep state and logs in $CYTOSCREEN_SLURM_DIR
#   bash tests/slurm/stop.sh --purge   # also delete that folder and the configs start.sh wrote
set -uo pipefail

MARKER="# written by cytoscreen tests/slurm/start.sh"
DIR="${CYTOSCREEN_SLURM_DIR:-/tmp/cytoscreen-slurm}"
ETC=/etc/slurm
export PATH="/usr/sbin:/usr/bin:$PATH"

say() { echo "slurm/stop.sh: $*"; }

# stop NAME PIDFILE: TERM the pid, wait up to 20 s, then KILL
stop() {
  local name=$1 pidfile=$2 pid
  if [ ! -f "$pidfile" ]; then
    say "$name: no pid file ($pidfile), not running"
    return 0
  fi
  pid=$(cat "$pidfile" 2>/dev/null)
  if [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null; then
    say "$name: pid ${pid:-?} not running"
    rm -f "$pidfile"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 20); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null
    say "$name: killed pid $pid (did not stop on TERM within 20 s)"
  else
    say "$name: stopped pid $pid"
  fi
  rm -f "$pidfile"
}

if [ -f "$DIR/run/slurmctld.pid" ] && kill -0 "$(cat "$DIR/run/slurmctld.pid")" 2>/dev/null; then
  jobs=$(timeout 10 squeue -h -o %i 2>/dev/null | wc -l)
  if [ "$jobs" -gt 0 ]; then
    timeout 20 scancel --full "$(timeout 10 squeue -h -o %i | paste -sd' ' -)" >/dev/null 2>&1 \
      || timeout 20 scancel -u "$(id -un)" >/dev/null 2>&1 || true
    say "cancelled $jobs queued or running job(s)"
    sleep 2
  fi
fi
stop slurmd "$DIR/run/slurmd.pid"
stop slurmctld "$DIR/run/slurmctld.pid"
stop slurmdbd "$DIR/run/slurmdbd.pid"
stop mariadbd "$DIR/run/mariadb.pid"
# munged is shared by anything on the machine that uses munge; start.sh started it only when
# it was not running, so it is stopped here only when its pid file is where start.sh left it.
stop munged /run/munge/munged.pid

if [ "${1:-}" = "--purge" ]; then
  for conf in "$ETC/slurm.conf" "$ETC/slurmdbd.conf" "$ETC/gres.conf"; do
    if [ -f "$conf" ] && head -n 1 "$conf" | grep -qF "$MARKER"; then
      rm -f "$conf" && say "removed $conf"
    fi
  done
  rm -rf "$DIR" && say "removed $DIR"
fi
