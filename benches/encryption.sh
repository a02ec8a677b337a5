#!/usr/bin/env bash
# What encryption costs: lifeline into a plain repository against lifeline into an encrypted
# one (XChaCha20-Poly1305 sealed objects, keyed chunk ids, Argon2id-wrapped key), on the same
# pgbench database in the same run, compression zstd (the default) for both. Run as root:
#   bash benches/encryption.sh            # SCALE=50 (about 770 MiB of PGDATA), SEGMENTS=32
#   SCALE=10 SEGMENTS=16 bash benches/encryption.sh
# Builds with `cargo build --release` (honours CARGO_TARGET_DIR).
#
# Setup: `repo init` makes $W/enc and $W/enc2 encrypted (passphrase file of mode 600, owned by
# postgres); the cluster archives every segment to the four repositories (plain, enc, plain2,
# enc2) in parallel, so each backup finds its WAL in its own repository and none waits longer. Every lifeline runs as
# postgres with HOME=/var/lib/postgresql, where the host-local key cache lives.
# Measured, one line per metric with the encrypted/plain ratio (goal: under 1.10):
#   - full backup (`lifeline backup postgres`) time and peak memory, data files read from the
#     page cache by both: two rounds, plain first into the first pair of repositories, then
#     encrypted first into a second pair (both pairs archive all WAL); best of the two; and the
#     bytes stored (packs + backup manifests);
#   - restore (`lifeline restore postgres --type full --data-dir X`, files only): two rounds,
#     the first plain first, the second encrypted first; best of the two;
#   - `wal push` per 16 MiB segment, one process per segment as archive_command runs it, of the
#     same SEGMENTS real segments into fresh repositories: plain, encrypted with the key cache
#     warm (the normal case: `repo init` left the unwrapped key in the cache) and encrypted with
#     `key-cache = false` (every process runs Argon2id, 64 MiB, 3 passes); two rounds in
#     alternating order, best of the two; and the archived bytes per segment.
set -euo pipefail
SCALE=${SCALE:-50}
SEGMENTS=${SEGMENTS:-32}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG=/usr/lib/postgresql/15/bin
PGHOME=$(getent passwd postgres | cut -d: -f6)
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"

W=$(mktemp -d /tmp/lifeline-enc-bench.XXXXXX)
chmod 755 "$W"
trap 'runuser -u postgres -- $PG/pg_ctl -D "$W/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$W"' EXIT
cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/lifeline" "$W/lifeline"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$W/plain" "$W/enc" "$W/plain2" "$W/enc2" "$W/segs"
. "$ROOT/benches/lib.sh"
as_pg() { runuser -u postgres -- env HOME="$PGHOME" "$@"; }
now() { date +%s.%N; }
bytes() { { du -sb "$@" 2>/dev/null || true; } | awk '{s+=$1} END {print s+0}'; }
mib() { echo "$1 / 1048576" | bc -l; }
kib() { echo "$1 / 1024" | bc -l; }
min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a < b ? a : b) }'; }

# The passphrase (mode 600, owned by the user running lifeline) and the configuration that
# turns the key cache off.
head -c 24 /dev/urandom | base64 > "$W/passphrase"
chmod 600 "$W/passphrase"
nocache_conf() { # repository
  printf 'backup-dir = "%s"\npassphrase-file = "%s"\nkey-cache = false\n' "$1" "$W/passphrase" > "$1.toml"
}
LL="$W/lifeline --backup-dir $W/plain"
LLE="$W/lifeline --backup-dir $W/enc --passphrase-file $W/passphrase"
LL2="$W/lifeline --backup-dir $W/plain2"
LLE2="$W/lifeline --backup-dir $W/enc2 --passphrase-file $W/passphrase"
# Every segment goes to all four repositories at once (so that no backup waits for its last
# segment longer than another): start_pgbench_cluster's archive_command is
# "$LL wal push %p && $BR archive-push %p" after "$BR stanza-create"; for that call LL is a
# script that pushes into all four in parallel, and BR a no-op.
cat > "$W/archive-all" <<SH
#!/bin/bash
[ "\$1 \$2" = "wal push" ] || exit 2
pids=()
for ll in "$LL" "$LLE" "$LL2" "$LLE2"; do \$ll wal push "\$3" & pids+=(\$!); done
for p in "\${pids[@]}"; do wait \$p || exit 1; done
SH
chmod 755 "$W/archive-all"
chown -R postgres:postgres "$W"
export LIFELINE_LOG=warn
as_pg $LLE repo init >/dev/null
as_pg $LLE2 repo init >/dev/null

LL_SAVED=$LL LL="$W/archive-all" BR=true
start_pgbench_cluster 1GB
LL=$LL_SAVED
echo "PGDATA: $(( $(bytes "$W/data/base" "$W/data/global") >> 20 )) MiB (pgbench scale $SCALE)"
echo "lifeline $(git -C "$ROOT" rev-parse --short HEAD), $(nproc) CPUs, $($PG/postgres --version)"

report() { # name plain encrypted unit
  awk -v n="$1" -v a="$2" -v b="$3" -v u="$4" 'BEGIN { r = (a > 0 ? b / a : 0); printf "%-44s plain %10.3f %-4s encrypted %10.3f %-4s ratio %.2f%s\n", n, a, u, b, u, r, (r < 1.10 ? "" : "  (over 1.10)") }'
}
# timed CMD...: runs it; sets T (wall seconds), RSS (peak KiB of the process tree) and CPU (%).
# Everyone's dirty data is flushed first, so no run pays for the writeback of the one before.
timed() {
  sync
  /usr/bin/time -f "%e %M %P" -o "$W/time.out" "$@"
  read -r T RSS CPU < "$W/time.out"
}
DBENV="env HOME=$PGHOME DB_HOST=127.0.0.1 DB_PORT=$PORT DB_USER=postgres DB_NAME=postgres LIFELINE_LOG=warn"
stored() { bytes "$1/packs" "$1/backups"; }

# Full backup, each into its repository; both read the data files from the page cache. Round
# 1: plain then encrypted; round 2, into the second pair: encrypted then plain.
find "$W/data" -type f -exec cat {} + > /dev/null
backup() { timed runuser -u postgres -- $DBENV "$@" backup postgres >/dev/null; }
backup $LL; p_t=$T; p_rss=$RSS; p_cpu=$CPU
backup $LLE; e_t=$T; e_rss=$RSS; e_cpu=$CPU
report "full backup time (round 1, plain first)" "$p_t" "$e_t" s
p_best=$p_t; e_best=$e_t
backup $LLE2; e_t=$T; e_rss=$(( e_rss > RSS ? e_rss : RSS ))
backup $LL2; p_t=$T; p_rss=$(( p_rss > RSS ? p_rss : RSS ))
report "full backup time (round 2, encrypted first)" "$p_t" "$e_t" s
report "full backup time, best of 2" "$(min "$p_best" "$p_t")" "$(min "$e_best" "$e_t")" s
report "full backup peak memory" "$(kib "$p_rss")" "$(kib "$e_rss")" MiB
echo "full backup CPU use (round 1): plain $p_cpu, encrypted $e_cpu (200% = both cores)"
report "full backup stored (packs + backups)" "$(mib "$(stored "$W/plain")")" "$(mib "$(stored "$W/enc")")" MiB
report "repository, all of it (with archived WAL)" "$(mib "$(bytes "$W/plain/packs" "$W/plain/backups" "$W/plain/wal")")" "$(mib "$(bytes "$W/enc/packs" "$W/enc/backups" "$W/enc/wal")")" MiB

# Restore of that backup (files only). Round 1 plain first, round 2 encrypted first (the
# first restore of a round may get memory the VM has not touched yet, which is slower).
restore_p() { rm -rf "$W/r-plain"; timed runuser -u postgres -- $DBENV $LL restore postgres --type full --data-dir "$W/r-plain" >/dev/null; p_t=$T; p_rss=$RSS; }
restore_e() { rm -rf "$W/r-enc"; timed runuser -u postgres -- $DBENV $LLE restore postgres --type full --data-dir "$W/r-enc" >/dev/null; e_t=$T; e_rss=$RSS; }
p_best=1e9; e_best=1e9
for round in 1 2; do
  if [ "$round" = 1 ]; then restore_p; restore_e; first=plain; else restore_e; restore_p; first=encrypted; fi
  report "restore time (round $round, $first first)" "$p_t" "$e_t" s
  p_best=$(min "$p_best" "$p_t"); e_best=$(min "$e_best" "$e_t")
done
report "restore time, best of 2" "$p_best" "$e_best" s
report "restore peak memory" "$(kib "$p_rss")" "$(kib "$e_rss")" MiB
p_files=$(bytes "$W/r-plain/base" "$W/r-plain/global"); e_files=$(bytes "$W/r-enc/base" "$W/r-enc/global")
echo "restored base + global: plain $(( p_files >> 20 )) MiB, encrypted $(( e_files >> 20 )) MiB"
rm -rf "$W/r-plain" "$W/r-enc"

# wal push: the same real segments into fresh repositories, one process per segment; one shell
# as postgres runs the whole loop, so runuser's own cost is not counted per segment.
for name in $(ls "$W/plain/wal/"*/00000001/ | grep -E '^[0-9A-F]{24}$' | tail -n "$SEGMENTS"); do
  as_pg $LL wal fetch "$name" "$W/segs/$name"
done
n=$(ls "$W/segs" | wc -l)
push() { # lifeline's repository flags...: sets T (ms per segment) and RSS
  timed runuser -u postgres -- env HOME="$PGHOME" LIFELINE_LOG=warn bash -c "cd $W/data && for f in $W/segs/*; do $W/lifeline $* wal push \$f; done"
  T=$(echo "$T * 1000 / $n" | bc -l)
}
p_best=1e9; e_best=1e9; x_best=1e9
for round in 1 2; do
  for r in plain enc nocache; do rm -rf "$W/w-$r"; mkdir "$W/w-$r"; done
  nocache_conf "$W/w-nocache"
  chown -R postgres:postgres "$W"
  as_pg $W/lifeline --backup-dir "$W/w-enc" --passphrase-file "$W/passphrase" repo init >/dev/null
  as_pg $W/lifeline --config "$W/w-nocache.toml" repo init >/dev/null
  if [ "$round" = 1 ]; then order="plain enc nocache"; else order="nocache enc plain"; fi
  for r in $order; do
    case $r in
      plain) push --backup-dir "$W/w-plain"; p_t=$T; p_rss=$RSS ;;
      enc) push --backup-dir "$W/w-enc" --passphrase-file "$W/passphrase"; e_t=$T; e_rss=$RSS ;;
      nocache) push --config "$W/w-nocache.toml"; x_t=$T; x_rss=$RSS ;;
    esac
  done
  report "wal push per segment, key cache (round $round)" "$p_t" "$e_t" ms
  report "wal push per segment, no key cache (round $round)" "$p_t" "$x_t" ms
  p_best=$(min "$p_best" "$p_t"); e_best=$(min "$e_best" "$e_t"); x_best=$(min "$x_best" "$x_t")
done
echo "wal push: $n segments of 16 MiB, one process each, best of 2 rounds:"
report "wal push per 16 MiB segment, key cache" "$p_best" "$e_best" ms
report "wal push per 16 MiB segment, key-cache=false" "$p_best" "$x_best" ms
report "wal push peak memory, key cache" "$(kib "$p_rss")" "$(kib "$e_rss")" MiB
report "wal push peak memory, key-cache=false" "$(kib "$p_rss")" "$(kib "$x_rss")" MiB
report "wal archive bytes per segment" "$(mib "$(( $(bytes "$W/w-plain/wal") / n ))")" "$(mib "$(( $(bytes "$W/w-enc/wal") / n ))")" MiB
echo "Argon2id per process (no-cache minus cached push): $(echo "$x_best - $e_best" | bc -l | xargs printf '%.1f') ms"
