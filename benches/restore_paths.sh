#!/usr/bin/env bash
# Restore through the page cache (the default) against O_DIRECT (`LIFELINE_DIRECT_IO=true`):
# a pgbench cluster (SCALE, default 200) and one backup, then ROUNDS (default 3) rounds, the two
# ways alternating, each timed from nothing to a server's first answer: the restore into a new
# directory, the start until promotion, and one full scan of pgbench_accounts (what the restore
# left in the page cache, or not). Run as root:
#   bash benches/restore_paths.sh
# Which way wins depends on the machine's memory: on a VM whose free memory the host takes back,
# every page the restore caches must first be got back (benches/README.md, "Restore with
# O_DIRECT"); `free -g` is printed first for that reason.
set -euo pipefail
SCALE=${SCALE:-200}
ROUNDS=${ROUNDS:-3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG=/usr/lib/postgresql/15/bin
. "$ROOT/benches/lib.sh"
default_binaries
W=$(mktemp -d /tmp/lifeline-restore-paths.XXXXXX)
chmod 755 "$W"
trap 'runuser -u postgres -- $PG/pg_ctl -D "$W/data" -m immediate stop >/dev/null 2>&1 || true; runuser -u postgres -- $PG/pg_ctl -D "$W/copy" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
cp "${BINARIES%% *}" "$W/lifeline"
mkdir "$W/repo"
chown -R postgres:postgres "$W"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
COPY_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg() { runuser -u postgres -- "$@"; }
now() { date +%s.%N; }
LL="$W/lifeline --backup-dir $W/repo"

start_cluster "$LL wal push %p" 1GB
load_pgbench "$SCALE"
as_pg env DB_HOST=127.0.0.1 DB_PORT="$PORT" DB_USER=postgres DB_NAME=postgres LIFELINE_LOG=warn $LL backup postgres >/dev/null
as_pg $PG/pg_ctl -D "$W/data" -m fast -w stop >/dev/null
echo "PGDATA: $(du -sm "$W/data" | cut -f1) MiB (pgbench scale $SCALE)"
free -g | head -2

sql() { as_pg $PG/psql -h 127.0.0.1 -p "$COPY_PORT" -U postgres -qAtc "$1" postgres; }
one() { # one NAME DIRECT
  rm -rf "$W/copy"; sync
  local t0 t1 t2 t3
  t0=$(now)
  as_pg env LIFELINE_LOG=warn LIFELINE_DIRECT_IO="$2" $LL restore postgres --type full --data-dir "$W/copy" >/dev/null
  t1=$(now)
  echo "port = $COPY_PORT" >> "$W/copy/postgresql.auto.conf"
  as_pg $PG/pg_ctl -D "$W/copy" -l "$W/copy.log" -w -t 300 -o "-c unix_socket_directories=$W" start >/dev/null
  until [ "$(sql 'SELECT pg_is_in_recovery()' 2>/dev/null)" = f ]; do sleep 0.1; done
  t2=$(now)
  sql "SET max_parallel_workers_per_gather = 0; SELECT sum(abalance) FROM pgbench_accounts" >/dev/null
  t3=$(now)
  as_pg $PG/pg_ctl -D "$W/copy" -m fast -w stop >/dev/null
  printf '%-11s restore %6.2f s   start to promoted %5.2f s   first full scan %6.2f s   total %6.2f s\n' "$1" \
    "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" "$(echo "$t3 - $t2" | bc)" "$(echo "$t3 - $t0" | bc)"
}
for round in $(seq "$ROUNDS"); do
  echo "round $round"
  one "O_DIRECT" true
  one "page cache" false
done
