#!/usr/bin/env bash
# Redis RDB backups: lifeline against `redis-cli --rdb` piped through `zstd -3` (what a cron
# script does), on the same dataset, in the same run. Run as root:
#   bash benches/redis.sh            # KEYS=1000000 session-like values of about 200 bytes
# Measures one snapshot's time and stored bytes, then 7 nightly snapshots with CHURN percent
# (default 2) of the keys rewritten each night: lifeline's repository against 7 compressed copies.
set -euo pipefail
KEYS=${KEYS:-1000000}
CHURN=${CHURN:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
command -v zstd >/dev/null || { apt-get update -qq && apt-get install -y -qq zstd; }
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"

W=$(mktemp -d /tmp/lifeline-redisbench.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
trap 'redis-cli -p $PORT shutdown nosave >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
mkdir -p "$W/redis" "$W/repo" "$W/copies"
# Disk-based sync: a diskless master waits repl-diskless-sync-delay (5 s) for more replicas
# before it streams, for redis-cli --rdb and lifeline alike.
redis-server --port "$PORT" --bind 127.0.0.1 --dir "$W/redis" --save "" --appendonly no \
  --repl-diskless-sync no --daemonize yes --logfile "$W/redis.log"
until redis-cli -p "$PORT" ping >/dev/null 2>&1; do sleep 0.1; done
R() { redis-cli -p "$PORT" "$@"; }

# Session-like values: a user id, timestamps and a token; different for every key.
FILL='local n = tonumber(ARGV[1]); local from = tonumber(ARGV[2]); local tag = ARGV[3]
for i = from, from + n - 1 do
  redis.call("SET", "session:" .. i, string.format(
    "{\"user\":%d,\"created\":%d,\"seen\":%d,\"token\":\"%x%x%x\",\"cart\":[%d,%d,%d],\"v\":\"%s\"}",
    i % 50000, 1700000000 + i, 1700000000 + i * 7 % 86400, i * 2654435761 % 4294967296,
    i * 40503 % 65536, i * 69069 % 4294967296, i % 97, i % 89, i % 83, tag))
end
return n'
for ((from = 0; from < KEYS; from += 100000)); do
  R EVAL "$FILL" 0 100000 "$from" night0 >/dev/null
done
echo "dataset: $(R DBSIZE) keys, $(( $(R INFO memory | awk -F: '/^used_memory:/ {print $2}' | tr -d '\r') >> 20 )) MiB in memory"

report() { # name lifeline other unit
  awk -v n="$1" -v a="$2" -v b="$3" -v u="$4" 'BEGIN { printf "%-44s lifeline %9.2f %-4s redis-cli|zstd %9.2f %-4s ratio %.2f\n", n, a, u, b, u, (b > 0 ? a / b : 0) }'
}
now() { date +%s.%N; }
repo_bytes() { du -sb "$W/repo/packs" "$W/repo/backups" 2>/dev/null | awk '{s+=$1} END {print s+0}'; }
LL="${CARGO_TARGET_DIR:-$ROOT/target}/release/lifeline --backup-dir $W/repo"
export REDIS_PORT=$PORT LIFELINE_LOG=warn

backup_both() { # night
  sync
  local t0 t1 t2
  t0=$(now); $LL backup redis >/dev/null; t1=$(now)
  redis-cli -p "$PORT" --rdb - 2>/dev/null | zstd -q -3 -T2 -o "$W/copies/dump-$1.rdb.zst"; t2=$(now)
  LL_T=$(echo "$t1 - $t0" | bc -l); CP_T=$(echo "$t2 - $t1" | bc -l)
}

backup_both 1
RDB=$(redis-cli -p "$PORT" --rdb "$W/plain.rdb" >/dev/null 2>&1; stat -c %s "$W/plain.rdb"); rm -f "$W/plain.rdb"
echo "RDB size: $(( RDB >> 20 )) MiB"
report "one snapshot, time" "$LL_T" "$CP_T" s
report "one snapshot, throughput" "$(echo "$RDB / 1048576 / $LL_T" | bc -l)" "$(echo "$RDB / 1048576 / $CP_T" | bc -l)" MiB/s
report "one snapshot, stored" "$(echo "$(repo_bytes) / 1048576" | bc -l)" "$(echo "$(stat -c %s "$W/copies/dump-1.rdb.zst") / 1048576" | bc -l)" MiB

# A second snapshot of unchanged data: only the RDB header and its trailing checksum differ.
before=$(repo_bytes)
$LL backup redis >/dev/null
report "second snapshot, data unchanged, new bytes" "$(echo "($(repo_bytes) - $before) / 1048576" | bc -l)" "$(echo "$(stat -c %s "$W/copies/dump-1.rdb.zst") / 1048576" | bc -l)" MiB

CHANGED=$(( KEYS * CHURN / 100 ))
for night in 2 3 4 5 6 7; do
  # CHURN % of the sessions rewritten, spread over the key space.
  R EVAL 'local n = tonumber(ARGV[1]); local step = tonumber(ARGV[2]); local tag = ARGV[3]
    for j = 0, n - 1 do local i = (j * step + tonumber(ARGV[4])) % tonumber(ARGV[5])
      redis.call("SET", "session:" .. i, string.format("{\"user\":%d,\"seen\":%d,\"v\":\"%s\"}", i % 50000, j, tag)) end
    return n' 0 "$CHANGED" 7919 "night$night" "$night" "$KEYS" >/dev/null
  backup_both "$night"
done
COPIES=$(du -sb "$W/copies" | awk '{print $1}')
# (lifeline's figure includes the unchanged second snapshot above: a few KiB.)
report "7 nightly snapshots, $CHURN% churn, stored" "$(echo "$(repo_bytes) / 1048576" | bc -l)" "$(echo "$COPIES / 1048576" | bc -l)" MiB
report "7th snapshot, time" "$LL_T" "$CP_T" s
