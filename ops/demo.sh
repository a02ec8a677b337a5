#!/usr/bin/env bash
# The main job end to end on a scratch cluster, with the embedded default (a local repository
# and the SQLite catalog): archive WAL, take a base backup, make a disaster, restore to the
# second before it, start the restored server and compare. Run as root: bash ops/demo.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG=/usr/lib/postgresql/15/bin
if [ ! -x "$PG/initdb" ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15
fi
id postgres >/dev/null 2>&1 || useradd --system --home /var/lib/postgresql postgres
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
W=$(mktemp -d /tmp/lifeline-demo.XXXXXX); chmod 755 "$W"
cleanup() {
  for d in data restored; do runuser -u postgres -- $PG/pg_ctl -D "$W/$d" -m fast stop >/dev/null 2>&1 || true; done
  rm -rf "$W"
}
trap cleanup EXIT
cp "$ROOT/target/release/lifeline" "$W/lifeline"; mkdir "$W/repo"; chown -R postgres:postgres "$W"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(free_port); PORT2=$(free_port)
as_pg() { runuser -u postgres -- env BACKUP_DIR="$W/repo" DB_HOST=127.0.0.1 DB_USER=postgres DB_NAME=postgres TZ=UTC "$@"; }
sql() { as_pg $PG/psql -h 127.0.0.1 -p "$1" -U postgres -qAtX -c "$2" postgres; }

echo "== a scratch cluster archiving with: archive_command = '$W/lifeline wal push %p'"
as_pg $PG/initdb -D "$W/data" --auth=trust -U postgres >/dev/null
cat >> "$W/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$W'
archive_mode = on
archive_command = '$W/lifeline --backup-dir $W/repo wal push %p'
CONF
as_pg $PG/pg_ctl -D "$W/data" -l "$W/data.log" -w start >/dev/null
as_pg $PG/pgbench -h 127.0.0.1 -p "$PORT" -U postgres -i -s 5 -q postgres 2>/dev/null

echo "== nightly backup"
as_pg DB_PORT=$PORT "$W/lifeline" backup postgres
as_pg $PG/pgbench -h 127.0.0.1 -p "$PORT" -U postgres -T 3 postgres >/dev/null 2>&1
sleep 1.1
before=$(sql "$PORT" "SELECT count(*), sum(abalance) FROM pgbench_accounts")
TARGET=$(sql "$PORT" "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')")
sleep 1.1
echo "== the disaster, after $TARGET UTC: DELETE FROM pgbench_accounts"
sql "$PORT" "DELETE FROM pgbench_accounts" >/dev/null
sql "$PORT" "SELECT pg_switch_wal()" >/dev/null
sleep 3
as_pg "$W/lifeline" status

echo "== point-in-time restore to $TARGET"
as_pg "$W/lifeline" restore postgres --type pitr --until "$TARGET" --data-dir "$W/restored"
echo "port = $PORT2" >> "$W/restored/postgresql.auto.conf"
as_pg $PG/pg_ctl -D "$W/restored" -l "$W/restored.log" -w start >/dev/null
for _ in $(seq 600); do
  [ "$(sql "$PORT2" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] && break
  sleep 0.2
done
[ "$(sql "$PORT2" "SELECT pg_is_in_recovery()" 2>/dev/null)" = f ] || { tail -20 "$W/restored.log"; echo "RESULT: FAIL, recovery did not finish"; exit 1; }
after=$(sql "$PORT2" "SELECT count(*), sum(abalance) FROM pgbench_accounts")
echo "accounts at the target: $before; after the restore: $after"
[ "$before" = "$after" ] && echo "RESULT: PASS, the restored data is the data at $TARGET UTC" || { echo "RESULT: FAIL"; exit 1; }
