#!/usr/bin/env bash
# `wal push` of real segments, one process per segment as PostgreSQL's archiver runs it, builds
# alternating round by round. Per build and round: the wall time per segment, the time from the
# "pushing" to the "compressed" log line (reading, hashing and compressing: the part a build
# changes, and the part a busy disk does not), and the bytes stored. Run as root:
#   BINARIES="/tmp/old/lifeline /tmp/new/lifeline" bash benches/wal_push.sh
#   SEGS=/dir/of/segments ROUNDS=6 BINARIES="..." bash benches/wal_push.sh
# Without SEGS, a pgbench cluster (scale 50, then 30 s of pgbench) provides its last 30 segments.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG=/usr/lib/postgresql/15/bin
ROUNDS=${ROUNDS:-4}
. "$ROOT/benches/lib.sh"
default_binaries

W=$(mktemp -d /tmp/lifeline-walpush.XXXXXX)
chmod 755 "$W"
trap 'runuser -u postgres -- $PG/pg_ctl -D "$W/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
as_pg() { runuser -u postgres -- "$@"; }

if [ -z "${SEGS:-}" ]; then
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$W/archived" "$W/segs"
  chown -R postgres:postgres "$W"
  start_cluster "cp %p $W/archived/%f" 4GB
  load_pgbench 50
  as_pg $PG/pgbench -h 127.0.0.1 -p "$PORT" -U postgres -T 30 -c 4 postgres >/dev/null 2>&1
  as_pg $PG/psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtc "SELECT pg_switch_wal()" postgres >/dev/null
  sleep 2
  as_pg $PG/pg_ctl -D "$W/data" -m fast -w stop >/dev/null
  ls "$W/archived" | grep -E '^[0-9A-F]{24}$' | tail -n 30 | while read -r f; do cp "$W/archived/$f" "$W/segs/"; done
  SEGS=$W/segs
fi
segs=("$SEGS"/*)
echo "${#segs[@]} segments from $SEGS"

n=0
for bin in $BINARIES; do
  n=$((n + 1))
  cp "$bin" "$W/lifeline$n"
done
mkdir -p "$W/cwd"
for round in $(seq "$ROUNDS"); do
  for i in $(seq "$n"); do
    repo=$W/repo$i
    rm -rf "$repo"
    mkdir -m 700 "$repo"
    sync
    t0=$(date +%s%N)
    # The debug log's timestamps give each segment's compression phase.
    for f in "${segs[@]}"; do
      (cd "$W/cwd" && LIFELINE_LOG=debug "$W/lifeline$i" --backup-dir "$repo" wal push "$f" 2> "$W/log") ||
        { cat "$W/log" >&2; exit 1; }
      grep -E ' (pushing|compressed) ' "$W/log" | grep -oE '[0-9]{2}:[0-9]{2}\.[0-9]+Z' | tr '\n' ' '
      echo
    done > "$W/phases"
    t1=$(date +%s%N)
    awk -v b="$(echo "$BINARIES" | cut -d' ' -f"$i")" -v r="$round" -v wall=$(((t1 - t0) / 1000)) \
      -v bytes="$(du -sb "$repo/wal" | cut -f1)" '
      function s(t) { split(t, p, ":"); return p[1] * 60 + p[2] }
      NF == 2 { c += s($2) - s($1); k++ }
      END { printf "round %d %s: wall %.2f ms/segment, compression phase %.2f ms, %d bytes stored\n",
            r, b, wall / 1000 / NR, c * 1000 / k, bytes }' "$W/phases"
  done
done
