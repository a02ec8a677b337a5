#!/usr/bin/env bash
# Peak memory against the database's size: for each pgbench scale given, a new cluster, two full
# backups into a new repository (the second builds on the first) and two full restores, each
# under `/usr/bin/time -f %M`. Run as
# root:
#   bash benches/memory.sh 50 200 400
#   BINARIES="/tmp/old/lifeline /tmp/new/lifeline" bash benches/memory.sh 50 400   # compare builds
#   HEAP=1 bash benches/memory.sh 400   # a third restore under heaptrack: its peak heap, exact
#   RESTORE_WINDOW=1024 HEAP=1 bash benches/memory.sh 50 400   # restores plan 1024 writes at a
#       time (LIFELINE_RESTORE_PLAN_WINDOW): past one window, the peak no longer grows
#   BLOCK_SIZE=8192 ... bash benches/memory.sh 50 200   # backups in 8 KiB blocks (block-size):
#       32 times the per-block metadata of the default, for what grows with it to show
# What should stay flat is the restore's peak: the data in flight is bounded, the manifest's block
# lists are kept on disk, and what is planned at a time is one window of files (by default 256 Ki
# writes of a 256 KiB block: 64 GiB; an 88-byte entry and a 40-byte write per block in it).
# The backup keeps its block lists, the manifest it writes and its chunk index on disk too
# (unnamed files beside the catalog), and reads the previous backup's manifest file by file.
set -euo pipefail
trap 'echo "benches/memory.sh: line $LINENO failed (exit $?); a scale 400 run needs about 20 GiB free" >&2' ERR
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG=/usr/lib/postgresql/15/bin
(($#)) || set -- 50 200
. "$ROOT/benches/lib.sh"
default_binaries

W=$(mktemp -d /tmp/lifeline-memory.XXXXXX)
chmod 755 "$W"
trap 'runuser -u postgres -- $PG/pg_ctl -D "$W/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
as_pg() { runuser -u postgres -- "$@"; }
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
peak() { # peak KiB and seconds of CMD..., as "12.3 MiB 4.5 s"
  /usr/bin/time -f "%M %e" -o "$W/time.out" "$@" >/dev/null || { cat "$W/time.out" >&2; return 1; }
  awk '{ printf "%.1f MiB %.2f s", $1 / 1024, $2 }' "$W/time.out"
}

for scale in "$@"; do
  as_pg $PG/pg_ctl -D "$W/data" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "${W:?}"/*
  n=0
  archive=""
  for bin in $BINARIES; do
    n=$((n + 1))
    cp "$bin" "$W/lifeline$n"
    mkdir -m 700 "$W/repo$n"
    archive+="$W/lifeline$n --backup-dir $W/repo$n wal push %p && "
  done
  chown -R postgres:postgres "$W"
  start_cluster "${archive}true" 4GB
  load_pgbench "$scale"
  data=$(du -sm "$W/data/base" | cut -f1)
  for i in $(seq 1 $n); do
    env="BACKUP_DIR=$W/repo$i LIFELINE_LOG=warn"
    if [ -n "${BLOCK_SIZE:-}" ]; then
      echo "block-size = $BLOCK_SIZE" > "$W/lifeline.toml"
      env+=" LIFELINE_CONFIG=$W/lifeline.toml"
    fi
    backup() {
      peak runuser -u postgres -- env $env DB_HOST=127.0.0.1 DB_PORT=$PORT DB_USER=postgres \
        DB_NAME=postgres PGDATA="$W/data" "$W/lifeline$i" backup postgres
    }
    backup=$(backup)
    # The second builds on the first: it indexes the first's chunks from its manifest.
    second=$(backup)
    restores=""
    [ -z "${RESTORE_WINDOW:-}" ] || env+=" LIFELINE_RESTORE_PLAN_WINDOW=$RESTORE_WINDOW"
    for round in 1 2; do
      rm -rf "$W/restored"
      restores+="$(peak runuser -u postgres -- env $env "$W/lifeline$i" restore postgres --type full \
        --data-dir "$W/restored"); "
    done
    rm -rf "$W/restored"
    if [ "${HEAP:-}" = 1 ]; then
      rm -f "$W"/heap.*
      runuser -u postgres -- env $env heaptrack -o "$W/heap" "$W/lifeline$i" restore postgres \
        --type full --data-dir "$W/restored" >/dev/null 2>&1
      rm -rf "$W/restored"
      restores+="peak heap $(heaptrack_print -f "$W"/heap.* | sed -n 's/^peak heap memory consumption: //p'); "
    fi
    echo "scale $scale ($data MiB in base/), $(echo $BINARIES | cut -d' ' -f"$i"): backup $backup; second backup $second; restores $restores"
  done
done
