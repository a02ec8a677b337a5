#!/usr/bin/env bash
# lifeline against pgBackRest with both repositories on one S3-compatible server (moto_server
# behind nginx terminating HTTPS with a private CA: pgBackRest speaks only HTTPS to S3, and
# werkzeug's own TLS ends connections without close_notify, which OpenSSL 3 refuses), on the
# same pgbench database, in the same run. Run as root:
#   bash benches/s3.sh              # SCALE=50; about 1 GiB of WAL replayed by PITR
# Measures base backup and restore throughput, then the time PostgreSQL takes to recover
# (start to promoted) through about 1 GiB of archived WAL: lifeline without and with `wal fetch`
# prefetch, pgBackRest with synchronous and asynchronous archive-get.
set -euo pipefail
SCALE=${SCALE:-50}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG=/usr/lib/postgresql/15/bin
command -v pgbackrest >/dev/null || { apt-get update -qq && apt-get install -y -qq pgbackrest; }
command -v moto_server >/dev/null || pip install -q 'moto[server]'
command -v nginx >/dev/null || { apt-get update -qq && apt-get install -y -qq nginx; }
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"

W=$(mktemp -d /tmp/lifeline-s3bench.XXXXXX)
chmod 755 "$W"
cleanup() {
  for d in "$W"/data "$W"/r-*; do
    [ -d "$d" ] && runuser -u postgres -- $PG/pg_ctl -D "$d" -m immediate stop >/dev/null 2>&1 || true
  done
  [ -n "${MOTO:-}" ] && kill "$MOTO" 2>/dev/null || true
  [ -f "$W/nginx.pid" ] && kill "$(cat "$W/nginx.pid")" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/lifeline" "$W/lifeline"
PORT=$(free_port)
MPORT=$(free_port)   # HTTPS (nginx)
HPORT=$(free_port)   # moto_server, plain HTTP behind it

# A private CA and a certificate for 127.0.0.1: pgBackRest speaks only HTTPS to S3, so both do.
(cd "$W" && {
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > server.ext
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=bench CA" -keyout ca.key -out ca.pem 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr 2>/dev/null
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext -out server.pem 2>/dev/null
})
# The environment's CA bundle, if any, would override the configuration file's.
export AWS_CA_BUNDLE="$W/ca.pem"
moto_server -H 127.0.0.1 -p "$HPORT" >/dev/null 2>&1 &
MOTO=$!
cat > "$W/nginx.conf" <<CONF
pid $W/nginx.pid;
error_log $W/nginx.err;
worker_processes 2;
events { worker_connections 1024; }
http {
  access_log off;
  client_max_body_size 0;
  proxy_request_buffering off;
  proxy_buffering off;
  client_body_temp_path $W/nginx-body;
  proxy_temp_path $W/nginx-proxy;
  upstream moto { server 127.0.0.1:$HPORT; keepalive 32; }
  server {
    listen 127.0.0.1:$MPORT ssl;
    ssl_certificate $W/server.pem;
    ssl_certificate_key $W/server.key;
    location / {
      proxy_pass http://moto;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
    }
  }
}
CONF
nginx -c "$W/nginx.conf"
for _ in $(seq 100); do curl -sf --cacert "$W/ca.pem" "https://127.0.0.1:$MPORT/" >/dev/null && break; sleep 0.2; done
for b in lifeline pgbackrest; do curl -sf --cacert "$W/ca.pem" -X PUT "https://127.0.0.1:$MPORT/$b" >/dev/null; done

mkdir -p "$W/state" "$W/brlog" "$W/brlock" "$W/brspool"
cat > "$W/lifeline.toml" <<CONF
backup-dir = "$W/state"
s3-bucket = "lifeline/bench"
s3-endpoint = "https://127.0.0.1:$MPORT"
s3-region = "us-east-1"
s3-ca-file = "$W/ca.pem"
aws-access-key-id = "bench"
aws-secret-access-key = "bench-secret"
CONF
. "$ROOT/benches/lib.sh"
write_pgbackrest_conf \
  "repo1-type=s3" \
  "repo1-path=/repo" \
  "repo1-s3-bucket=pgbackrest" \
  "repo1-s3-endpoint=localhost" \
  "repo1-storage-port=$MPORT" \
  "repo1-s3-region=us-east-1" \
  "repo1-s3-key=bench" \
  "repo1-s3-key-secret=bench-secret" \
  "repo1-s3-uri-style=path" \
  "repo1-storage-ca-file=$W/ca.pem" \
  "spool-path=$W/brspool"
chmod 600 "$W/lifeline.toml" "$W/pgbackrest.conf"
chown -R postgres:postgres "$W"
as_pg() { runuser -u postgres -- "$@"; }
now() { date +%s.%N; }
psql_at() { as_pg $PG/psql -h 127.0.0.1 -p "$1" -U postgres -qAtX -c "$2" postgres; }
LL="$W/lifeline --config $W/lifeline.toml"
BR="pgbackrest --config=$W/pgbackrest.conf --stanza=bench"
export LIFELINE_LOG=warn

start_pgbench_cluster 4GB
DATA_MIB=$(( $(du -sb "$W/data/base" "$W/data/global" | awk '{s+=$1} END {printf "%.0f\n", s}') >> 20 ))
echo "PGDATA: $DATA_MIB MiB (pgbench scale $SCALE); S3: moto_server over HTTPS on loopback"

report() { # name lifeline pgbackrest unit
  awk -v n="$1" -v a="$2" -v b="$3" -v u="$4" 'BEGIN { printf "%-44s lifeline %9.2f %-5s pgBackRest %9.2f %-5s ratio %.2f\n", n, a, u, b, u, (b > 0 ? a / b : 0) }'
}
# timed CMD...: sets T (wall seconds) and RSS (peak KiB of the largest process it waited for).
timed() { sync; /usr/bin/time -f "%e %M" -o "$W/time.out" "$@" >/dev/null; read -r T RSS < "$W/time.out"; }
mib() { echo "$1 / 1024" | bc -l; }

timed runuser -u postgres -- env DB_HOST=127.0.0.1 DB_PORT="$PORT" DB_USER=postgres $LL backup postgres; ll=$T; ll_rss=$RSS
timed runuser -u postgres -- $BR backup --type=full; br=$T; br_rss=$RSS
report "full backup time" "$ll" "$br" s
report "full backup peak memory" "$(mib "$ll_rss")" "$(mib "$br_rss")" MiB
report "full backup throughput" "$(echo "$DATA_MIB / $ll" | bc -l)" "$(echo "$DATA_MIB / $br" | bc -l)" MiB/s

# About WAL_MIB (default 1024) MiB of WAL after the backup, archived by both.
LSN0=$(psql_at "$PORT" "SELECT pg_current_wal_lsn()")
first=1
while [ $(( $(psql_at "$PORT" "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$LSN0')::bigint") >> 20 )) -lt "${WAL_MIB:-1024}" ]; do
  psql_at "$PORT" "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN $first AND $first + 499999"
  first=$(( first + 500000 ))
done
WAL_MIB=$(( $(psql_at "$PORT" "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$LSN0')::bigint") >> 20 ))
sleep 1.1
TARGET=$(psql_at "$PORT" "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00'")
sleep 1.1
psql_at "$PORT" "CREATE TABLE after_target AS SELECT 1 AS x"
LAST=$(psql_at "$PORT" "SELECT pg_walfile_name(pg_current_wal_lsn())")
psql_at "$PORT" "SELECT pg_switch_wal()" >/dev/null
until [ "$(psql_at "$PORT" "SELECT coalesce(last_archived_wal, '') >= '$LAST' FROM pg_stat_archiver")" = t ]; do sleep 0.5; done
EXPECT=$(psql_at "$PORT" "SELECT sum(abalance) FROM pgbench_accounts")
echo "WAL to replay: $WAL_MIB MiB ($(psql_at "$PORT" "SELECT count(*) FROM pg_ls_waldir()") segments in pg_wal); target $TARGET"

# Restore of the files (recovery excluded), alternating who goes first.
for round in 1 2; do
  rm -rf "$W/r-ll" "$W/r-br"
  restore_ll() { timed runuser -u postgres -- $LL restore postgres --type full --data-dir "$W/r-ll"; ll=$T; ll_rss=$RSS; }
  restore_br() { timed runuser -u postgres -- $BR restore --pg1-path="$W/r-br" --type=immediate; br=$T; br_rss=$RSS; }
  if [ "$round" = 1 ]; then restore_br; restore_ll; else restore_ll; restore_br; fi
  report "restore time (round $round)" "$ll" "$br" s
  report "restore peak memory (round $round)" "$(mib "$ll_rss")" "$(mib "$br_rss")" MiB
  report "restore throughput (round $round)" "$(echo "$DATA_MIB / $ll" | bc -l)" "$(echo "$DATA_MIB / $br" | bc -l)" MiB/s
done
rm -rf "$W/r-ll" "$W/r-br"

# PITR through the WAL: start to promoted, with the archive on S3.
recover() { # dir env...: start the restored cluster and time it until it accepts writes
  local dir=$1; shift
  local port; port=$(free_port)
  printf "port = %s\narchive_mode = off\n" "$port" >> "$dir/postgresql.auto.conf"
  rm -f "$dir.log"
  local t0; t0=$(now)
  as_pg env "$@" $PG/pg_ctl -D "$dir" -l "$dir.log" start >/dev/null
  until [ "$(psql_at "$port" "SELECT NOT pg_is_in_recovery()" 2>/dev/null)" = t ]; do sleep 0.1; done
  T=$(echo "$(now) - $t0" | bc -l)
  local got; got=$(psql_at "$port" "SELECT sum(abalance) FROM pgbench_accounts")
  [ "$got" = "$EXPECT" ] || { echo "recovered data differs ($got, expected $EXPECT)"; exit 1; }
  as_pg $PG/pg_ctl -D "$dir" -m immediate stop >/dev/null
}
pitr_ll() { # prefetch
  rm -rf "$W/r-ll"
  as_pg $LL restore postgres --type pitr --until "$TARGET" --data-dir "$W/r-ll" >/dev/null
  recover "$W/r-ll" LIFELINE_WAL_PREFETCH="$1" LIFELINE_LOG=info
  SPOOLED="$(grep -c 'from the prefetch spool' "$W/r-ll.log" || true) of $(grep -c 'restored log file' "$W/r-ll.log" || true)"
}
pitr_br() { # async
  rm -rf "$W/r-br" "$W/brspool"/*
  sed -i "/^archive-async=/d" "$W/pgbackrest.conf"
  sed -i "s/^start-fast=y\$/start-fast=y\narchive-async=$1/" "$W/pgbackrest.conf"
  as_pg $BR restore --pg1-path="$W/r-br" --type=time --target="$TARGET" --target-action=promote >/dev/null
  recover "$W/r-br"
}
pitr_ll 0; ll0=$T
pitr_br n; br0=$T
pitr_ll 8; ll8=$T; spooled8=$SPOOLED
pitr_br y; br8=$T
report "PITR recovery of $WAL_MIB MiB WAL, no read-ahead" "$ll0" "$br0" s
report "PITR recovery, read-ahead (prefetch 8 / async)" "$ll8" "$br8" s
echo "lifeline read-ahead: $spooled8 segments served from the spool"
echo "lifeline prefetch speed-up: $(echo "$ll0 / $ll8" | bc -l | cut -c1-4)x; pgBackRest async speed-up: $(echo "$br0 / $br8" | bc -l | cut -c1-4)x"
