# Shared by the benchmark scripts (sourced, not run). Its functions expect ROOT, PG, W, PORT and as_pg;
# the pgBackRest helpers also SCALE, LL (lifeline with its repository flags) and BR (pgbackrest
# with its stanza).

# The builds a comparison runs: $BINARIES as given, or this checkout's release build.
default_binaries() {
  if [ -z "${BINARIES:-}" ]; then
    cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"
    BINARIES="${CARGO_TARGET_DIR:-$ROOT/target}/release/lifeline"
  fi
}

# Wait (up to 60 s) until the disk under $W has done no I/O for a whole second. The file
# system here is mounted with `discard`: the blocks a removed copy held are discarded after the
# `rm -rf` returns, and a timed run that starts meanwhile writes behind them (a restore of 3 GiB
# took 4.6-5.3 s instead of 2.9 s right after one). Whoever runs next then pays for no one else.
disk_settle() {
  local dev stat last now waited=0
  dev=$(findmnt -no SOURCE -T "$W" 2>/dev/null || true)
  stat="/sys/class/block/$(basename "${dev:-none}")/stat"
  [ -r "$stat" ] || return 0
  last=$(cat "$stat")
  while [ "$waited" -lt 60 ]; do
    sleep 1
    now=$(cat "$stat")
    [ "$now" = "$last" ] && return 0
    last=$now
    waited=$((waited + 1))
  done
}

# $W/pgbackrest.conf for the stanza "bench" on $W/data at $PORT; the arguments are the
# repository's lines (repo1-path=..., repo1-retention-full=...), one per argument.
write_pgbackrest_conf() {
  {
    echo "[global]"
    printf '%s\n' "$@"
    cat <<CONF
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
  } > "$W/pgbackrest.conf"
}

# initdb a cluster in $W/data with this archive_command and max_wal_size, and start it.
start_cluster() { # archive_command max_wal_size
  as_pg $PG/initdb -D "$W/data" --auth=trust -U postgres >/dev/null
  cat >> "$W/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$W'
archive_mode = on
archive_command = '$1'
max_wal_size = $2
CONF
  as_pg $PG/pg_ctl -D "$W/data" -l "$W/pg.log" -w start >/dev/null
}

# Load pgbench at this scale and checkpoint.
load_pgbench() { # scale
  as_pg $PG/pgbench -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$1" -q postgres 2>/dev/null
  as_pg $PG/psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtc "CHECKPOINT" postgres
}

# initdb a cluster in $W/data archiving to both tools, start it and load pgbench at $SCALE.
start_pgbench_cluster() { # max_wal_size
  start_cluster "$LL wal push %p && $BR archive-push %p" "$1"
  as_pg $BR stanza-create
  load_pgbench "$SCALE"
}
