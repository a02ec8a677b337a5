#!/usr/bin/env bash
# Side-by-side benchmark: lifeline against pgBackRest (Debian 2.45, compress-type zst,
# process-max 2) on the same pgbench database, in the same run. Run as root:
#   bash benches/compare.sh            # SCALE=50 (about 1.35 GiB of PGDATA after the updates)
#   SCALE=10 SEGMENTS=16 bash benches/compare.sh
# Prints one line per measurement with the lifeline/pgBackRest ratio (lower is better).
set -euo pipefail
SCALE=${SCALE:-50}
SEGMENTS=${SEGMENTS:-32}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG=/usr/lib/postgresql/15/bin
command -v pgbackrest >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbackrest; }
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"

W=$(mktemp -d /tmp/lifeline-bench.XXXXXX)
chmod 755 "$W"
trap 'runuser -u postgres -- $PG/pg_ctl -D "$W/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
cp "$ROOT/target/release/lifeline" "$W/lifeline"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$W/repo" "$W/repo2" "$W/br" "$W/br2" "$W/brlog" "$W/brlock" "$W/segs"
cat > "$W/pgbackrest.conf" <<CONF
[global]
repo1-path=$W/br
compress-type=zst
process-max=2
log-path=$W/brlog
lock-path=$W/brlock
start-fast=y
log-level-console=warn
[bench]
pg1-path=$W/data
pg1-port=$PORT
pg1-socket-path=$W
CONF
chown -R postgres:postgres "$W"
as_pg() { runuser -u postgres -- "$@"; }
now() { date +%s.%N; }
bytes() { { du -sb "$@" 2>/dev/null || true; } | awk '{s+=$1} END {print s+0}'; }
LL="$W/lifeline --backup-dir $W/repo"
BR="pgbackrest --config=$W/pgbackrest.conf --stanza=bench"
export DB_HOST=127.0.0.1 DB_PORT=$PORT DB_USER=postgres DB_NAME=postgres LIFELINE_LOG=warn

as_pg $PG/initdb -D "$W/data" --auth=trust -U postgres >/dev/null
cat >> "$W/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$W'
archive_mode = on
archive_command = '$LL wal push %p && $BR archive-push %p'
max_wal_size = 1GB
CONF
as_pg $PG/pg_ctl -D "$W/data" -l "$W/pg.log" -w start >/dev/null
as_pg $BR stanza-create
as_pg $PG/pgbench -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$SCALE" -q postgres 2>/dev/null
as_pg $PG/psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtc "CHECKPOINT" postgres
echo "PGDATA: $(( $(bytes "$W/data/base" "$W/data/global") >> 20 )) MiB (pgbench scale $SCALE)"

report() { # name lifeline pgbackrest unit
  awk -v n="$1" -v a="$2" -v b="$3" -v u="$4" 'BEGIN { printf "%-38s lifeline %10.3f %-4s pgBackRest %10.3f %-4s ratio %.2f\n", n, a, u, b, u, (b > 0 ? a / b : 0) }'
}

# Full backup.
t0=$(now); as_pg env PATH="$PATH" DB_HOST=$DB_HOST DB_PORT=$PORT DB_USER=postgres DB_NAME=postgres LIFELINE_LOG=warn $LL backup postgres >/dev/null; t1=$(now)
as_pg $BR backup --type=full; t2=$(now)
ll_full=$(bytes "$W/repo/packs" "$W/repo/backups"); br_full=$(bytes "$W/br/backup")
report "full backup time" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" s
report "full backup stored" "$(echo "$ll_full / 1048576" | bc -l)" "$(echo "$br_full / 1048576" | bc -l)" MiB

# Second backup after updating 1 % of the rows.
as_pg $PG/psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtc "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= $SCALE * 1000; CHECKPOINT" postgres
t0=$(now); as_pg env DB_HOST=$DB_HOST DB_PORT=$PORT DB_USER=postgres DB_NAME=postgres LIFELINE_LOG=warn $LL backup postgres >/dev/null; t1=$(now)
as_pg $BR backup --type=incr; t2=$(now)
ll_second=$(( $(bytes "$W/repo/packs" "$W/repo/backups") - ll_full ))
br_second=$(( $(bytes "$W/br/backup") - br_full ))
report "backup after 1% update, time" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" s
report "backup after 1% update, new bytes" "$(echo "$ll_second / 1048576" | bc -l)" "$(echo "$br_second / 1048576" | bc -l)" MiB

# Restore of the latest backup (files only; recovery excluded for both).
t0=$(now); as_pg $LL restore postgres --type full --data-dir "$W/ll-restore" >/dev/null; t1=$(now)
as_pg $BR restore --pg1-path="$W/br-restore" --type=immediate; t2=$(now)
report "restore time" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)" s
rm -rf "$W/ll-restore" "$W/br-restore"

# wal push: the same real segments into fresh repositories, one process per segment.
for name in $(ls "$W/repo/wal/"*/00000001/ | grep -E '^[0-9A-F]{24}$' | tail -n "$SEGMENTS"); do
  as_pg $LL wal fetch "$name" "$W/segs/$name"
done
sed -i "s#repo1-path=$W/br\$#repo1-path=$W/br2#" "$W/pgbackrest.conf"
as_pg $BR stanza-create
n=$(ls "$W/segs" | wc -l)
# One shell as postgres runs the whole loop, so runuser's own cost is not counted per segment.
t0=$(now); as_pg bash -c "cd $W/data && for f in $W/segs/*; do $W/lifeline --backup-dir $W/repo2 wal push \$f; done"; t1=$(now)
as_pg bash -c "cd $W/data && for f in $W/segs/*; do $BR archive-push \$f; done"; t2=$(now)
report "wal push per 16 MiB segment" "$(echo "($t1 - $t0) * 1000 / $n" | bc -l)" "$(echo "($t2 - $t1) * 1000 / $n" | bc -l)" ms
report "wal archive bytes per segment" "$(echo "$(bytes "$W/repo2/wal") / $n / 1048576" | bc -l)" "$(echo "$(bytes "$W/br2/archive") / $n / 1048576" | bc -l)" MiB
