#!/usr/bin/env bash
# Restore drill: time from nothing to a verified server, lifeline against pgBackRest on the same
# pgbench database in the same run. Run as root:
#   bash benches/drill.sh            # SCALE=50 (about 770 MiB of PGDATA), WAL_MB=512 after the backup
# lifeline: `lifeline drill` (restore the newest backup and all archived WAL into a scratch
# directory, start it on a free port, wait for promotion, count every table, mark the backup).
# pgBackRest: `pgbackrest restore` (default target: end of the archive) into a scratch
# directory, pg_ctl start on a free port, wait for promotion, the same counts, stop.
# Prints both wall times and their ratio (lower is better).
set -euo pipefail
SCALE=${SCALE:-50}
WAL_MB=${WAL_MB:-512}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG=/usr/lib/postgresql/15/bin
command -v pgbackrest >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbackrest; }
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"

W=$(mktemp -d /tmp/lifeline-drill-bench.XXXXXX)
chmod 755 "$W"
trap 'runuser -u postgres -- $PG/pg_ctl -D "$W/data" -m immediate stop >/dev/null 2>&1 || true; runuser -u postgres -- $PG/pg_ctl -D "$W/br-restore" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/lifeline" "$W/lifeline"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PORT2=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$W/repo" "$W/br" "$W/brlog" "$W/brlock" "$W/drills"
. "$ROOT/benches/lib.sh"
write_pgbackrest_conf "repo1-path=$W/br"
echo "drill-dir = \"$W/drills\"" > "$W/lifeline.toml"
chown -R postgres:postgres "$W"
as_pg() { runuser -u postgres -- "$@"; }
now() { date +%s.%N; }
LL="$W/lifeline --backup-dir $W/repo --config $W/lifeline.toml"
BR="pgbackrest --config=$W/pgbackrest.conf --stanza=bench"
export DB_HOST=127.0.0.1 DB_PORT=$PORT DB_USER=postgres DB_NAME=postgres LIFELINE_LOG=warn

start_pgbench_cluster 1GB
as_pg env DB_HOST=127.0.0.1 DB_PORT=$PORT DB_USER=postgres DB_NAME=postgres LIFELINE_LOG=warn $LL backup postgres >/dev/null
as_pg $BR backup --type=full
# WAL after the backups, which both must replay.
as_pg $PG/pgbench -h 127.0.0.1 -p "$PORT" -U postgres -n -c 2 -j 2 -T 3600 postgres >/dev/null 2>&1 &
BENCH=$!
start_lsn=$(as_pg $PG/psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtc "SELECT pg_current_wal_lsn()" postgres)
while [ "$(as_pg $PG/psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtc "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$start_lsn') > $WAL_MB * 1048576" postgres)" = f ]; do sleep 1; done
# $! is runuser's pid: stop pgbench itself, then the wrapper is done.
pkill -x pgbench || true
wait $BENCH 2>/dev/null || true
as_pg $PG/psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtc "SELECT pg_switch_wal()" postgres >/dev/null
sleep 5
counts="SELECT (SELECT count(*) FROM pgbench_accounts), (SELECT count(*) FROM pgbench_history)"
expected=$(as_pg $PG/psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtc "$counts" postgres)
as_pg $PG/pg_ctl -D "$W/data" -m fast -w stop >/dev/null
echo "PGDATA $(du -sm "$W/data" | cut -f1) MiB (pgbench scale $SCALE), $WAL_MB MiB of WAL after the backup; rows: $expected"

t0=$(now)
as_pg env DB_HOST=127.0.0.1 DB_PORT=$PORT DB_USER=postgres DB_NAME=postgres LIFELINE_LOG=warn $LL drill > "$W/drill.out"
t1=$(now)
grep -E "RESULT|drill of|RTO" "$W/drill.out"

t2=$(now)
as_pg $BR restore --pg1-path="$W/br-restore" >/dev/null
echo "port = $PORT2" >> "$W/br-restore/postgresql.auto.conf"
as_pg $PG/pg_ctl -D "$W/br-restore" -l "$W/br.log" -W start >/dev/null
until [ "$(as_pg $PG/psql -h 127.0.0.1 -p "$PORT2" -U postgres -qAtc "SELECT pg_is_in_recovery()" postgres 2>/dev/null)" = f ]; do sleep 0.2; done
got=$(as_pg $PG/psql -h 127.0.0.1 -p "$PORT2" -U postgres -qAtc "$counts" postgres)
as_pg $PG/pg_ctl -D "$W/br-restore" -m immediate -w stop >/dev/null
t3=$(now)
[ "$got" = "$expected" ] || echo "pgBackRest restore rows differ: $got vs $expected"
awk -v a="$(echo "$t1 - $t0" | bc -l)" -v b="$(echo "$t3 - $t2" | bc -l)" 'BEGIN { printf "time to a verified server: lifeline drill %.2f s, pgBackRest restore+recover+count %.2f s, ratio %.2f\n", a, b, a / b }'
