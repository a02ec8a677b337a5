#!/usr/bin/env bash
# Sustained archiving: pgbench writes at full speed for DURATION seconds (each client inserts
# 20,000 rows of 200 bytes into its own table, then truncates it: about 5 MiB of WAL per
# transaction, synchronous_commit off) while PostgreSQL's archiver runs each tool's archive_command; does archiving keep up (no growing backlog of
# .ready segments)? Modes, in the same run on the same cluster: lifeline one segment at a time
# (wal-push-ahead 0), lifeline with look-ahead (the default), pgBackRest archive-push, and
# pgBackRest archive-push with archive-async. Run as root:
#   bash benches/archive_throughput.sh            # DURATION=30 CLIENTS=2
# Prints per mode: WAL written, segments archived during the run, the largest and the final
# backlog, and how long the backlog took to drain after pgbench stopped.
set -euo pipefail
DURATION=${DURATION:-30}
SCALE=1
CLIENTS=${CLIENTS:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG=/usr/lib/postgresql/15/bin
command -v pgbackrest >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbackrest; }
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"

W=$(mktemp -d /tmp/lifeline-archive-bench.XXXXXX)
chmod 755 "$W"
trap 'runuser -u postgres -- $PG/pg_ctl -D "$W/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/lifeline" "$W/lifeline"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$W/repo" "$W/br" "$W/brlog" "$W/brlock" "$W/brspool"
. "$ROOT/benches/lib.sh"
write_pgbackrest_conf "repo1-path=$W/br" "spool-path=$W/brspool"
chown -R postgres:postgres "$W"
as_pg() { runuser -u postgres -- "$@"; }
LL="$W/lifeline --backup-dir $W/repo"
BR="pgbackrest --config=$W/pgbackrest.conf --stanza=bench"
sql() { as_pg $PG/psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtc "$1" postgres; }
ready() { find "$W/data/pg_wal/archive_status" -name '*.ready' | wc -l; }

start_pgbench_cluster 4GB
sql "ALTER SYSTEM SET archive_timeout = 0"
sql "ALTER SYSTEM SET synchronous_commit = off"
for c in $(seq 0 $((CLIENTS - 1))); do sql "CREATE TABLE bulk_$c (id int, pad text)"; done
cat > "$W/bulk.sql" <<'SQL'
INSERT INTO bulk_:client_id SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g;
TRUNCATE bulk_:client_id;
SQL
chown postgres "$W/bulk.sql"

drain() { # waits until nothing is ready; prints the seconds it took
  local t0 n=0
  t0=$(date +%s.%N)
  sql "SELECT pg_switch_wal()" >/dev/null
  while [ "$(ready)" -gt 0 ]; do sleep 0.5; n=$((n + 1)); [ $n -lt 1200 ] || { echo "never drained" >&2; exit 1; }; done
  echo "$(date +%s.%N) - $t0" | bc -l
}

run_mode() { # name archive_command
  sql "ALTER SYSTEM SET archive_command = '$2'" >/dev/null
  sql "SELECT pg_reload_conf()" >/dev/null
  sleep 1
  drain >/dev/null
  local a0 l0 max=0 now
  a0=$(sql "SELECT archived_count FROM pg_stat_archiver")
  l0=$(sql "SELECT pg_current_wal_lsn()")
  as_pg $PG/pgbench -h 127.0.0.1 -p "$PORT" -U postgres -c "$CLIENTS" -j 2 -T "$DURATION" -n -f "$W/bulk.sql" postgres >/dev/null 2>&1 &
  local bench=$!
  while kill -0 $bench 2>/dev/null; do
    now=$(ready); [ "$now" -gt "$max" ] && max=$now
    sleep 2
  done
  wait $bench || true
  local end written archived drained
  end=$(ready)
  written=$(sql "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$l0') / 16777216.0, 1)")
  archived=$(( $(sql "SELECT archived_count FROM pg_stat_archiver") - a0 ))
  drained=$(drain)
  printf "%-36s WAL written %6s segments, archived during the run %4d, backlog max %4d end %4d, drained in %6.1f s\n" \
    "$1" "$written" "$archived" "$max" "$end" "$drained"
}

echo "pgbench bulk inserts, $CLIENTS clients, $DURATION s per mode, $(nproc) cores"
run_mode "lifeline, one at a time" "env LIFELINE_WAL_PUSH_AHEAD=0 LIFELINE_LOG=warn $LL wal push %p"
run_mode "lifeline, look-ahead (default)" "env LIFELINE_LOG=warn $LL wal push %p"
run_mode "pgBackRest archive-push" "$BR archive-push %p"
run_mode "pgBackRest archive-push, async" "$BR --archive-async archive-push %p"
