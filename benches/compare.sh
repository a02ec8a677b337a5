#!/usr/bin/env bash
# Side-by-side benchmark: lifeline against pgBackRest (Debian 2.45, compress-type zst,
# process-max 2) on the same pgbench database, in the same run. Run as root:
#   bash benches/compare.sh            # SCALE=50 (about 1.35 GiB of PGDATA after the updates)
#   SCALE=10 SEGMENTS=16 bash benches/compare.sh
#   SCALE=200 bash benches/compare.sh  # about 3 GiB of PGDATA
# Prints one line per measurement with the lifeline/pgBackRest ratio (lower is better). The
# last lines measure a delta restore after a 2 % change against a full restore of the same backup.
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
cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/lifeline" "$W/lifeline"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$W/repo" "$W/repo2" "$W/br" "$W/br2" "$W/brlog" "$W/brlock" "$W/segs"
. "$ROOT/benches/lib.sh"
write_pgbackrest_conf "repo1-path=$W/br"
chown -R postgres:postgres "$W"
as_pg() { runuser -u postgres -- "$@"; }
now() { date +%s.%N; }
# Whole bytes: awk's default output turns sums over 2^31 into 3.15936e+09, which bash cannot add.
bytes() { { du -sb "$@" 2>/dev/null || true; } | awk '{s+=$1} END {printf "%.0f\n", s}'; }
warm() { find "$1" -type f -print0 | xargs -0 cat > /dev/null; } # read a directory into the page cache
# Wait until PostgreSQL's archiver has pushed every ready segment to both tools: at larger
# scales pgbench leaves a backlog (each segment goes through both archive_commands), and a
# backup waits for its own WAL behind it, so whichever tool ran first would pay for it.
archived() {
  local i
  for i in $(seq 1 1200); do
    ls "$W/data/pg_wal/archive_status" | grep -q '\.ready$' || return 0
    sleep 0.5
  done
  echo "the archiver still has ready segments after 10 minutes" >&2
  return 1
}
LL="$W/lifeline --backup-dir $W/repo"
BR="pgbackrest --config=$W/pgbackrest.conf --stanza=bench"
export DB_HOST=127.0.0.1 DB_PORT=$PORT DB_USER=postgres DB_NAME=postgres LIFELINE_LOG=warn

start_pgbench_cluster 1GB
echo "PGDATA: $(( $(bytes "$W/data/base" "$W/data/global") >> 20 )) MiB (pgbench scale $SCALE)"

report() { # name lifeline pgbackrest unit
  awk -v n="$1" -v a="$2" -v b="$3" -v u="$4" 'BEGIN { printf "%-40s lifeline %10.3f %-4s pgBackRest %10.3f %-4s ratio %.2f\n", n, a, u, b, u, (b > 0 ? a / b : 0) }'
}
# timed CMD...: runs it; sets T (wall seconds), RSS (peak KiB of the process tree) and CPU (%).
# Everyone's dirty data is flushed and the disk left to settle first, so no run pays for the
# writeback or the discards of the one before.
timed() {
  archived
  sync
  disk_settle
  /usr/bin/time -f "%e %M %P" -o "$W/time.out" "$@"
  read -r T RSS CPU < "$W/time.out"
}
LLB="env DB_HOST=$DB_HOST DB_PORT=$PORT DB_USER=postgres DB_NAME=postgres LIFELINE_LOG=warn $LL backup postgres"
stored() { bytes "$W/repo/packs" "$W/repo/backups"; }

# Full backup.
timed runuser -u postgres -- $LLB >/dev/null; ll_t=$T; ll_rss=$RSS; ll_cpu=$CPU
timed runuser -u postgres -- $BR backup --type=full; br_t=$T; br_rss=$RSS; br_cpu=$CPU
ll_full=$(stored); br_full=$(bytes "$W/br/backup")
report "full backup time" "$ll_t" "$br_t" s
report "full backup peak memory" "$(echo "$ll_rss / 1024" | bc -l)" "$(echo "$br_rss / 1024" | bc -l)" MiB
echo "full backup CPU use: lifeline $ll_cpu, pgBackRest $br_cpu (200% = both cores)"
report "full backup stored" "$(echo "$ll_full / 1048576" | bc -l)" "$(echo "$br_full / 1048576" | bc -l)" MiB

# A second backup of the unchanged database (pgBackRest: incremental).
timed runuser -u postgres -- $LLB >/dev/null; ll_t=$T
timed runuser -u postgres -- $BR backup --type=incr; br_t=$T
ll_same=$(( $(stored) - ll_full )); br_same=$(( $(bytes "$W/br/backup") - br_full ))
report "unchanged database, backup time" "$ll_t" "$br_t" s
report "unchanged database, new bytes" "$(echo "$ll_same / 1048576" | bc -l)" "$(echo "$br_same / 1048576" | bc -l)" MiB

# A backup after updating 1 % of the rows.
as_pg $PG/psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtc "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= $SCALE * 1000; CHECKPOINT" postgres
ll_before=$(stored); br_before=$(bytes "$W/br/backup")
timed runuser -u postgres -- $LLB >/dev/null; ll_t=$T
timed runuser -u postgres -- $BR backup --type=incr; br_t=$T
report "backup after 1% update, time" "$ll_t" "$br_t" s
report "backup after 1% update, new bytes" "$(echo "($(stored) - $ll_before) / 1048576" | bc -l)" "$(echo "($(bytes "$W/br/backup") - $br_before) / 1048576" | bc -l)" MiB

# Restore of the latest backup (files only; recovery excluded for both). Writing into memory
# this VM has never touched is slow for whoever gets it, so the rounds alternate which tool
# goes first; later rounds reuse page cache freed by the earlier ones. Round 1 is "cold".
# Each copy is removed once timed, so the disk holds one restored copy at a time (6 GiB at
# scale 200 otherwise).
restore_ll() { timed runuser -u postgres -- env LIFELINE_LOG="${BENCH_LOG:-warn}" $LL restore postgres --type full --data-dir "$W/ll-restore" >/dev/null; ll_t=$T; ll_rss=$RSS; ll_cpu=$CPU; rm -rf "$W/ll-restore"; }
restore_br() { timed runuser -u postgres -- $BR restore --pg1-path="$W/br-restore" --type=immediate; br_t=$T; br_rss=$RSS; br_cpu=$CPU; rm -rf "$W/br-restore"; }
for round in 1 2 3 4; do
  rm -rf "$W/ll-restore" "$W/br-restore"
  if [ $((round % 2)) = 1 ]; then restore_br; restore_ll; first=pgBackRest; else restore_ll; restore_br; first=lifeline; fi
  report "restore time (round $round, $first first)" "$ll_t" "$br_t" s
  echo "  CPU use: lifeline $ll_cpu, pgBackRest $br_cpu"
done
report "restore peak memory" "$(echo "$ll_rss / 1024" | bc -l)" "$(echo "$br_rss / 1024" | bc -l)" MiB
rm -rf "$W/ll-restore" "$W/br-restore"

# wal push: the same real segments into fresh repositories, one process per segment.
for name in $(ls "$W/repo/wal/"*/00000001/ | grep -E '^[0-9A-F]{24}$' | tail -n "$SEGMENTS"); do
  as_pg $LL wal fetch "$name" "$W/segs/$name"
done
sed -i "s#repo1-path=$W/br\$#repo1-path=$W/br2#" "$W/pgbackrest.conf"
as_pg $BR stanza-create
n=$(ls "$W/segs" | wc -l)
# One shell as postgres runs the whole loop, so runuser's own cost is not counted per segment.
# Two rounds into fresh repositories, alternating which tool goes first: whoever follows the
# restores above also pays for the disk still discarding their freed blocks.
push_ll() { rm -rf "$W/repo2"; mkdir -m 700 "$W/repo2"; chown postgres:postgres "$W/repo2"; archived; sync
  t0=$(now); as_pg bash -c "cd $W/data && for f in $W/segs/*; do $W/lifeline --backup-dir $W/repo2 wal push \$f; done"; t1=$(now)
  ll_ms=$(echo "($t1 - $t0) * 1000 / $n" | bc -l); }
push_br() { rm -rf "$W"/br2/archive/bench/*-*/*; archived; sync
  t0=$(now); as_pg bash -c "cd $W/data && for f in $W/segs/*; do $BR archive-push \$f; done"; t1=$(now)
  br_ms=$(echo "($t1 - $t0) * 1000 / $n" | bc -l); }
push_ll; push_br
report "wal push per 16 MiB segment (lifeline first)" "$ll_ms" "$br_ms" ms
push_br; push_ll
report "wal push per 16 MiB segment (pgBackRest first)" "$ll_ms" "$br_ms" ms
report "wal archive bytes per segment" "$(echo "$(bytes "$W/repo2/wal") / $n / 1048576" | bc -l)" "$(echo "$(bytes "$W/br2/archive") / $n / 1048576" | bc -l)" MiB

# Delta restore after a 2 % change. 2 % of the accounts change (a contiguous range: the pages
# that hold them, and the new row versions at the end, as pgbench's updates land) and each tool
# backs up again. Then, one tool at a time (one copy on disk), its backup from before the change
# is restored into a directory (the old copy) and its new backup restored onto it with --delta.
# A full restore of the new backup into an empty directory is the yardstick. Each old copy is
# read once before its delta, so that both tools start from it in the page cache (as a server
# that has just stopped leaves its files, whatever way the copy was written).
sed -i "s#repo1-path=$W/br2\$#repo1-path=$W/br#" "$W/pgbackrest.conf"
ll_old=$(as_pg $LL list --service postgresql --json | python3 -c 'import json, sys; print(max((b for b in json.load(sys.stdin) if b["kind"] == "base"), key=lambda b: b["finished_at"])["backup_id"])')
br_old=$(as_pg $BR info --output=json | python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["backup"][-1]["label"])')
as_pg $PG/psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtc "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid <= $SCALE * 2000; CHECKPOINT" postgres
archived
runuser -u postgres -- $LLB >/dev/null
runuser -u postgres -- $BR backup --type=incr >/dev/null
as_pg $LL restore postgres --type full --from "$ll_old" --data-dir "$W/ll-restore" >/dev/null
warm "$W/ll-restore"
timed runuser -u postgres -- env LIFELINE_LOG=warn $LL restore postgres --type full --delta --data-dir "$W/ll-restore" >"$W/delta.out"; ll_delta=$T; ll_drss=$RSS
rm -rf "$W/ll-restore"
as_pg $BR restore --set="$br_old" --pg1-path="$W/br-restore" --type=immediate
warm "$W/br-restore"
timed runuser -u postgres -- $BR restore --delta --pg1-path="$W/br-restore" --type=immediate; br_delta=$T; br_drss=$RSS
rm -rf "$W/br-restore"
report "delta restore after a 2% change" "$ll_delta" "$br_delta" s
report "delta restore peak memory" "$(echo "$ll_drss / 1024" | bc -l)" "$(echo "$br_drss / 1024" | bc -l)" MiB
echo "lifeline $(grep -o 'delta: [^)]*' "$W/delta.out")"
restore_ll; restore_br
report "full restore of the same backup" "$ll_t" "$br_t" s
echo "delta / full restore: lifeline $(echo "$ll_delta / $ll_t" | bc -l | cut -c1-4), pgBackRest $(echo "$br_delta / $br_t" | bc -l | cut -c1-4)"
