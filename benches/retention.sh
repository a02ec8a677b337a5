#!/usr/bin/env bash
# Thirty simulated days of nightly base backups under the default retention (7 daily, 4 weekly,
# 12 monthly, WAL for 7 days), against pgBackRest keeping the same number of full backups and
# the same PITR window, on the same pgbench database in the same run. Run as root:
#   bash benches/retention.sh              # SCALE=10, DAYS=30, CHANGE=2 (% of rows a day)
#   SCALE=20 DAYS=45 PATTERN=clustered bash benches/retention.sh
# Each simulated day changes CHANGE % of the accounts: PATTERN=random (default) runs that many
# pgbench transactions (rows spread over the whole table, plus their history inserts: the worst
# case for sharing chunks), PATTERN=clustered updates one contiguous run of rows (a hot range)
# and inserts as many history rows; then `lifeline backup postgres` and `lifeline prune` under
# libfaketime at 01:00 and 04:00 of that day (the days start the day after tomorrow, so every
# pack is older than the prune grace period, as it is after real nights), and a pgBackRest
# full backup. pgBackRest's retention is a count: at the end it expires to as many full backups
# as lifeline keeps (repo1-retention-full) and to WAL for the newest 7 (repo1-retention-archive).
# Prints repository bytes: lifeline against the sum of its retained backups' sizes, and
# lifeline against pgBackRest (lower is better).
set -euo pipefail
SCALE=${SCALE:-10}
PATTERN=${PATTERN:-random}
DAYS=${DAYS:-30}
CHANGE=${CHANGE:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG=/usr/lib/postgresql/15/bin
command -v pgbackrest >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbackrest; }
command -v faketime >/dev/null || { apt-get update -qq && apt-get install -y -qq faketime; }
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"

W=$(mktemp -d /tmp/lifeline-retention.XXXXXX)
chmod 755 "$W"
trap 'runuser -u postgres -- $PG/pg_ctl -D "$W/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/lifeline" "$W/lifeline"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$W/repo" "$W/br" "$W/brlog" "$W/brlock"
. "$ROOT/benches/lib.sh"
write_pgbackrest_conf "repo1-path=$W/br" "repo1-retention-full=9999"
chown -R postgres:postgres "$W"
as_pg() { runuser -u postgres -- "$@"; }
bytes() { { du -sb "$@" 2>/dev/null || true; } | awk '{s+=$1} END {print s+0}'; }
mib() { echo "$1 / 1048576" | bc -l; }
LL="$W/lifeline --backup-dir $W/repo"
BR="pgbackrest --config=$W/pgbackrest.conf --stanza=bench"
export DB_HOST=127.0.0.1 DB_PORT=$PORT DB_USER=postgres DB_NAME=postgres LIFELINE_LOG=warn
# Only the wall clock is simulated; tokio's timers keep the real monotonic clock.
export FAKETIME_DONT_FAKE_MONOTONIC=1

start_pgbench_cluster 1GB
echo "PGDATA: $(( $(bytes "$W/data/base" "$W/data/global") >> 20 )) MiB (pgbench scale $SCALE); $CHANGE % of rows changed a day, $PATTERN"

transactions=$(( SCALE * 100000 * CHANGE / 100 ))
first_day=$(date -u -d '+2 days' +%F)
for day in $(seq 0 $((DAYS - 1))); do
  date=$(date -u -d "$first_day + $day days" +%F)
  if [ "$PATTERN" = clustered ]; then
    first=$(( (RANDOM * 32768 + RANDOM) % (SCALE * 100000 - transactions) + 1 ))
    as_pg $PG/psql -h 127.0.0.1 -p "$PORT" -U postgres -qAt -c "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN $first AND $((first + transactions - 1))" \
      -c "INSERT INTO pgbench_history SELECT 1, 1, aid, 1, now() FROM generate_series($first, $((first + transactions - 1))) aid" postgres
  else
    as_pg env PGOPTIONS='-c synchronous_commit=off' $PG/pgbench -h 127.0.0.1 -p "$PORT" -U postgres \
      -n -c 2 -j 2 -t $((transactions / 2)) postgres >/dev/null
  fi
  as_pg $PG/psql -h 127.0.0.1 -p "$PORT" -U postgres -qAt -c VACUUM -c CHECKPOINT postgres
  as_pg faketime "$date 01:00:00" $LL backup postgres >/dev/null
  as_pg faketime "$date 04:00:00" $LL prune >/dev/null
  as_pg $BR backup --type=full
  printf 'day %2d (%s): lifeline %7.1f MiB, pgBackRest %7.1f MiB\n' $((day + 1)) "$date" \
    "$(mib "$(bytes "$W/repo/packs" "$W/repo/backups" "$W/repo/wal")")" "$(mib "$(bytes "$W/br/backup" "$W/br/archive")")"
done

kept=$($LL list --json | python3 -c 'import json,sys; b=[x for x in json.load(sys.stdin) if x["kind"]=="base"]; print(len(b), sum(x["size_bytes"] for x in b))')
read -r kept_count kept_bytes <<< "$kept"
as_pg $BR expire --repo1-retention-full="$kept_count" --repo1-retention-archive=7
ll_repo=$(bytes "$W/repo/packs" "$W/repo/backups" "$W/repo/wal")
ll_wal=$(bytes "$W/repo/wal")
br_repo=$(bytes "$W/br/backup" "$W/br/archive")
br_wal=$(bytes "$W/br/archive")
br_count=$($BR info --output=json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)[0]["backup"]))')

echo "after $DAYS nights: lifeline keeps $kept_count backups ($($LL list | awk 'NR>1 {print $(NF-1)}' | sort | uniq -c | tr '\n' ' ')), pgBackRest $br_count"
$LL list
printf '%-48s %10.1f MiB\n' "sum of lifeline's retained backups' sizes" "$(mib "$kept_bytes")"
printf '%-48s %10.1f MiB  (%.3f of the sum; WAL %.1f MiB)\n' "lifeline repository" "$(mib "$ll_repo")" \
  "$(echo "$ll_repo / $kept_bytes" | bc -l)" "$(mib "$ll_wal")"
printf '%-48s %10.1f MiB  (WAL %.1f MiB)\n' "pgBackRest repository" "$(mib "$br_repo")" "$(mib "$br_wal")"
printf '%-48s %10.2f\n' "ratio lifeline / pgBackRest" "$(echo "$ll_repo / $br_repo" | bc -l)"
printf '%-48s %10.2f\n' "ratio without WAL" "$(echo "($ll_repo - $ll_wal) / ($br_repo - $br_wal)" | bc -l)"
