# Shared by the comparison scripts (sourced, not run). Expects PG, W, PORT, SCALE, LL (lifeline
# with its repository flags), BR (pgbackrest with its stanza) and as_pg to be set.

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

# initdb a cluster in $W/data archiving to both tools, start it and load pgbench at $SCALE.
start_pgbench_cluster() { # max_wal_size
  as_pg $PG/initdb -D "$W/data" --auth=trust -U postgres >/dev/null
  cat >> "$W/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = '$W'
archive_mode = on
archive_command = '$LL wal push %p && $BR archive-push %p'
max_wal_size = $1
CONF
  as_pg $PG/pg_ctl -D "$W/data" -l "$W/pg.log" -w start >/dev/null
  as_pg $BR stanza-create
  as_pg $PG/pgbench -h 127.0.0.1 -p "$PORT" -U postgres -i -s "$SCALE" -q postgres 2>/dev/null
  as_pg $PG/psql -h 127.0.0.1 -p "$PORT" -U postgres -qAtc "CHECKPOINT" postgres
}
