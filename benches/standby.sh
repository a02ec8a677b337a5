#!/usr/bin/env bash
# Base backup from a streaming standby (`backup postgres --from-standby`) against the same
# backup read from the primary, on one pgbench database in the same run. Run as root:
#   bash benches/standby.sh            # SCALE=50 (about 770 MiB of PGDATA), ROUNDS=4
#   SCALE=10 ROUNDS=1 bash benches/standby.sh
#
# Setup: a primary (wal_level=replica, archive_mode=on, archive_command = lifeline wal push)
# loaded with `pgbench -i -s $SCALE` and checkpointed, and a standby made from it with
# `pg_basebackup -R -X stream`, streaming on another port. Both run here, so "primary host"
# and "standby host" below are attributions, not machines: what reads the primary's files
# (its PostgreSQL processes, and lifeline when it reads the primary's PGDATA) counts for the
# primary's host; what reads the standby's (its PostgreSQL processes, and lifeline when it
# reads the standby's data directory) counts for the standby's host.
#
# Method, per round (even rounds run the two backups in the other order):
#   - every backup goes into a fresh repository, so neither deduplicates against the other and
#     both write the same ~36 MiB: before each backup the primary's archive_command is switched
#     to that repository (ALTER SYSTEM + pg_reload_conf), then CHECKPOINT and pg_switch_wal,
#     and the switched segment is waited for in the new repository (the archiver now writes
#     there, so the backup's own WAL lands in its repository); then the standby is waited for
#     until it has replayed to the primary's current LSN (both idle, caught up);
#   - the page cache is warmed for both data directories (every file read once), then `sync`,
#     so neither backup pays for disk reads or for the writeback of what came before;
#   - backup P: `lifeline --backup-dir REPO backup postgres` with PGDATA = the primary's;
#     backup S: `lifeline --backup-dir REPO --config standby.toml backup postgres --from-standby`;
#   - wall time: of the lifeline process (bash's $EPOCHREALTIME around it);
#   - lifeline's reads: rchar and read_bytes of the process that runs it, from
#     `bash -c '...; /proc/$$/io'` before and after: Linux adds a reaped child's I/O counters
#     (all its threads) to the parent's, so the shell's counters afterwards include lifeline's
#     (checked below: backup P's rchar must reach 90 % of the primary's data files);
#   - PostgreSQL's reads: rchar and read_bytes of each postmaster and all its descendants
#     (backends, walsender/walreceiver, startup, archiver and the archive_command it runs)
#     from /proc/<pid>/io before and after; a child that exits in between is added to the
#     postmaster when reaped, so the sums stay exact. Sampled after the archiver has archived
#     the backup's last segment.
# rchar counts what read(2), pread(2) and readv(2) returned, from the page cache or not, but not
# recv(2), which libpq and tokio use on sockets: network traffic is not in these figures.
# read_bytes counts only what came from the block device (near zero here, the cache being
# warm). The database is idle during the backups (no write load): a loaded primary would add
# its own reads to both backups.
set -euo pipefail
SCALE=${SCALE:-50}
ROUNDS=${ROUNDS:-4}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PG=/usr/lib/postgresql/15/bin
cargo build --release --quiet --manifest-path "$ROOT/Cargo.toml"

W=$(mktemp -d /tmp/lifeline-standby-bench.XXXXXX)
chmod 755 "$W"
trap 'for d in standby primary; do runuser -u postgres -- $PG/pg_ctl -D "$W/$d" -m immediate stop >/dev/null 2>&1 || true; done; rm -rf "$W"' EXIT
cp "${CARGO_TARGET_DIR:-$ROOT/target}/release/lifeline" "$W/lifeline"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PPORT=$(free_port)
SPORT=$(free_port)
while [ "$SPORT" = "$PPORT" ]; do SPORT=$(free_port); done
chown postgres:postgres "$W"
as_pg() { runuser -u postgres -- "$@"; }
sql() { as_pg $PG/psql -h 127.0.0.1 -p "$1" -U postgres -qAtX -v ON_ERROR_STOP=1 -c "$2" postgres; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
archive_command() { echo "\"$W/lifeline\" --backup-dir \"$1\" wal push \"%p\""; }
export DB_HOST=127.0.0.1 DB_PORT=$PPORT DB_USER=postgres DB_NAME=postgres LIFELINE_LOG=warn

# Reads of a postmaster and its descendants: `snap PID` prints one line per process (pid, role,
# rchar, read_bytes); `delta ROOT BEFORE AFTER` prints "rchar read_bytes" and, on a second
# line, the rchar per role (exited processes under the postmaster that reaped them).
cat > "$W/pgio.py" <<'PY'
import os, sys
def io(pid):
    v = dict(l.split(': ') for l in open(f'/proc/{pid}/io').read().split('\n') if l)
    return int(v['rchar']), int(v['read_bytes'])
def role(pid, root):
    if pid == root:
        return 'postmaster+exited'
    cmd = open(f'/proc/{pid}/cmdline', 'rb').read().replace(b'\0', b' ').decode(errors='replace').strip()
    if not cmd.startswith('postgres: '):
        return 'archive_command'
    rest = cmd[len('postgres: '):]
    for name in ('checkpointer', 'background writer', 'walwriter', 'autovacuum launcher',
                 'archiver', 'logical replication launcher', 'walsender', 'walreceiver', 'startup'):
        if rest.startswith(name):
            return name.replace(' ', '_')
    return 'backend'
def snap(root):
    kids = {}
    for d in os.listdir('/proc'):
        if d.isdigit():
            try:
                ppid = int(open(f'/proc/{d}/stat').read().rsplit(')', 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(d))
    todo = [root]
    while todo:
        pid = todo.pop()
        todo += kids.get(pid, [])
        try:
            r, b = io(pid)
            print(pid, role(pid, root), r, b)
        except (OSError, KeyError):
            pass
def load(path):
    out = {}
    for line in open(path):
        pid, role, r, b = line.split()
        out[int(pid)] = (role, int(r), int(b))
    return out
if sys.argv[1] == 'snap':
    snap(int(sys.argv[2]))
else:
    root, before, after = int(sys.argv[2]), load(sys.argv[3]), load(sys.argv[4])
    total_r = sum(v[1] for v in after.values()) - sum(v[1] for v in before.values())
    total_b = sum(v[2] for v in after.values()) - sum(v[2] for v in before.values())
    roles = {}
    for pid, (role, r, b) in after.items():
        roles[role] = roles.get(role, 0) + r - (before[pid][1] if pid in before else 0)
    for pid, (role, r, b) in before.items():
        if pid not in after:
            roles['postmaster+exited'] = roles.get('postmaster+exited', 0) - r
    print(total_r, total_b)
    print(' '.join(f'{k}={v / 1048576:.1f}' for k, v in sorted(roles.items(), key=lambda kv: -kv[1]) if abs(v) >= 52429))
PY
# Runs its arguments (lifeline) and prints "start end rchar read_bytes": times from
# $EPOCHREALTIME, bytes from this shell's /proc/$$/io, which takes in the reaped child's.
cat > "$W/measure.sh" <<'SH'
io() { local k v; while read -r k v; do case $k in rchar:) r=$v ;; read_bytes:) b=$v ;; esac; done < /proc/$$/io; echo "$r $b"; }
read -r r0 b0 < <(io)
t0=$EPOCHREALTIME
"$@" > /dev/null
t1=$EPOCHREALTIME
read -r r1 b1 < <(io)
echo "$t0 $t1 $((r1 - r0)) $((b1 - b0))"
SH
chown postgres:postgres "$W/pgio.py" "$W/measure.sh"

# The primary.
as_pg $PG/initdb -D "$W/primary" --auth=trust -U postgres >/dev/null
mkdir "$W/repo-load" && chown postgres:postgres "$W/repo-load"
cat >> "$W/primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PPORT
unix_socket_directories = '$W'
wal_level = replica
max_wal_senders = 4
archive_mode = on
archive_command = '$(archive_command "$W/repo-load")'
max_wal_size = 1GB
CONF
as_pg $PG/pg_ctl -D "$W/primary" -l "$W/primary.log" -w start >/dev/null
as_pg $PG/pgbench -h 127.0.0.1 -p "$PPORT" -U postgres -i -s "$SCALE" -q postgres 2>/dev/null
sql "$PPORT" "CHECKPOINT"

# The standby: a copy streaming from the primary, on its own port.
as_pg $PG/pg_basebackup -h 127.0.0.1 -p "$PPORT" -U postgres -D "$W/standby" -R -X stream -c fast
echo "port = $SPORT" >> "$W/standby/postgresql.auto.conf"
as_pg $PG/pg_ctl -D "$W/standby" -l "$W/standby.log" -w start >/dev/null
cat > "$W/standby.toml" <<TOML
[standby]
host = "127.0.0.1"
port = $SPORT
data-dir = "$W/standby"
TOML
chown postgres:postgres "$W/standby.toml"

wait_replayed() { # until the standby has replayed to where the primary is now
  local target i
  target=$(sql "$PPORT" "SELECT pg_current_wal_lsn()")
  for i in $(seq 1200); do
    [ "$(sql "$SPORT" "SELECT pg_last_wal_replay_lsn() >= '$target'")" = t ] && return 0
    sleep 0.1
  done
  echo "the standby did not replay to $target in 2 minutes" >&2
  return 1
}
wait_archived() { # SEGMENT REPO: the archiver has archived it, into that repository
  local i
  for i in $(seq 600); do
    if [ "$(sql "$PPORT" "SELECT coalesce(last_archived_wal >= '$1', false) FROM pg_stat_archiver")" = t ]; then
      find "$2/wal" -name "$1*" 2>/dev/null | grep -q . && return 0
      echo "segment $1 was archived, but not into $2" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "segment $1 was not archived in a minute" >&2
  return 1
}
use_repo() { # REPO: a fresh repository, which the primary now archives to
  mkdir "$1" && chown postgres:postgres "$1"
  sql "$PPORT" "ALTER SYSTEM SET archive_command = '$(archive_command "$1")'" >/dev/null
  sql "$PPORT" "SELECT pg_reload_conf()" >/dev/null
  sleep 1
  sql "$PPORT" "CHECKPOINT"
  wait_archived "$(sql "$PPORT" "SELECT pg_walfile_name(pg_switch_wal())")" "$1"
  wait_replayed
}
warm() { # both data directories into the page cache
  find "$W/primary" "$W/standby" -type f -print0 2>/dev/null | xargs -0 cat > /dev/null 2>&1 || true
}

wait_replayed
pgdata=$(du -sb "$W/primary/base" "$W/primary/global" | awk '{s += $1} END {print s}')
echo "PGDATA: $(mib "$pgdata") MiB of data files (pgbench scale $SCALE); primary on port $PPORT, standby on $SPORT"
echo "Page cache warmed for both data directories before each backup (every file read once), then sync: timings compare reads from memory, not disk."
echo "No write load: the database is idle during the backups."

ROWS=()
declare -A TIME PHOST
backup() { # NAME (P: from the primary, S: from the standby) ROUND
  local name=$1 round=$2 repo="$W/repo-$1$2" ppid spid out t0 t1 llr llb seg pr pb sr sb proles sroles
  use_repo "$repo"
  warm
  sync
  ppid=$(head -1 "$W/primary/postmaster.pid")
  spid=$(head -1 "$W/standby/postmaster.pid")
  local archived0 wal0
  archived0=$(sql "$PPORT" "SELECT archived_count FROM pg_stat_archiver")
  wal0=$(sql "$PPORT" "SELECT pg_current_wal_lsn()")
  python3 "$W/pgio.py" snap "$ppid" > "$W/p.before"
  python3 "$W/pgio.py" snap "$spid" > "$W/s.before"
  if [ "$name" = P ]; then
    out=$(as_pg env PGDATA="$W/primary" bash "$W/measure.sh" "$W/lifeline" --backup-dir "$repo" backup postgres)
  else
    out=$(as_pg bash "$W/measure.sh" "$W/lifeline" --backup-dir "$repo" --config "$W/standby.toml" backup postgres --from-standby)
  fi
  read -r t0 t1 llr llb <<< "$out"
  # The backup waited for its WAL in the repository; the archiver's statistics follow once
  # its archive_command has been reaped.
  seg=$(find "$repo/wal" -type f -name '0000000*' -printf '%f\n' | cut -c1-24 | sort | tail -1)
  wait_archived "$seg" "$repo"
  sleep 0.5
  python3 "$W/pgio.py" snap "$ppid" > "$W/p.after"
  python3 "$W/pgio.py" snap "$spid" > "$W/s.after"
  local archived wal
  archived=$(( $(sql "$PPORT" "SELECT archived_count FROM pg_stat_archiver") - archived0 ))
  wal=$(sql "$PPORT" "SELECT round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$wal0') / 1048576, 1)")
  { read -r pr pb; read -r proles; } < <(python3 "$W/pgio.py" delta "$ppid" "$W/p.before" "$W/p.after")
  { read -r sr sb; read -r sroles; } < <(python3 "$W/pgio.py" delta "$spid" "$W/s.before" "$W/s.after")
  local t host_p host_pb host_s host_sb
  t=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  if [ "$name" = P ]; then
    host_p=$((llr + pr)); host_pb=$((llb + pb)); host_s=$sr; host_sb=$sb
    # The check that a reaped child's counters reach the shell: lifeline read every data file.
    if [ "$llr" -lt $((pgdata * 9 / 10)) ]; then
      echo "WARNING: lifeline's rchar ($(mib "$llr") MiB) is well below the data files' size ($(mib "$pgdata") MiB): child I/O accounting did not reach the shell" >&2
    fi
  else
    host_p=$pr; host_pb=$pb; host_s=$((llr + sr)); host_sb=$((llb + sb))
  fi
  TIME[$name$round]=$t
  PHOST[$name$round]=$host_p
  ROWS+=("| $name$round, from the $([ "$name" = P ] && echo primary || echo standby) | $t s | $(mib "$llr") / $(mib "$llb") | $(mib "$pr") / $(mib "$pb") | $(mib "$sr") / $(mib "$sb") | **$(mib "$host_p")** / $(mib "$host_pb") | $(mib "$host_s") / $(mib "$host_sb") |")
  echo "backup $name$round: $t s, lifeline rchar $(mib "$llr") MiB; primary WAL advanced $wal MiB, $archived files archived; PostgreSQL rchar MiB by process, primary: ${proles:-none}; standby: ${sroles:-none}"
  # Where the backup was read, as lifeline recorded it (`list`, column SOURCE).
  local source want
  source=$(as_pg "$W/lifeline" --backup-dir "$repo" list 2>/dev/null | awk 'NR == 2 { print $5 }')
  want=$([ "$name" = P ] && echo primary || echo standby)
  [ "$source" = "$want" ] || echo "WARNING: backup $name$round was read from '$source', not the $want" >&2
}

for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) = 1 ]; then backup P "$round"; backup S "$round"; else backup S "$round"; backup P "$round"; fi
done

echo
echo "MiB read, rchar / read_bytes (rchar: read(2) and pread(2) bytes, page cache included, socket recv(2) not; read_bytes: from the disk)"
echo
echo "| backup | time | lifeline | primary's PostgreSQL | standby's PostgreSQL | primary host | standby host |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${ROWS[@]}"
echo
for round in $(seq "$ROUNDS"); do
  awk -v r="$round" -v tp="${TIME[P$round]}" -v ts="${TIME[S$round]}" -v hp="${PHOST[P$round]}" -v hs="${PHOST[S$round]}" \
    'BEGIN { printf "round %d, standby/primary: primary host rchar %.3f, time %.2f\n", r, hs / hp, ts / tp }'
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
mp=$(median $(for r in $(seq "$ROUNDS"); do echo "${TIME[P$r]}"; done))
ms=$(median $(for r in $(seq "$ROUNDS"); do echo "${TIME[S$r]}"; done))
hp=$(median $(for r in $(seq "$ROUNDS"); do echo "${PHOST[P$r]}"; done))
hs=$(median $(for r in $(seq "$ROUNDS"); do echo "${PHOST[S$r]}"; done))
awk -v n="$ROUNDS" -v mp="$mp" -v ms="$ms" -v hp="$hp" -v hs="$hs" 'BEGIN { printf "median of %s rounds: time %.2f s from the primary, %.2f s from the standby (ratio %.2f); primary host rchar %.1f MiB, %.1f MiB (ratio %.3f)\n", n, mp, ms, ms / mp, hp / 1048576, hs / 1048576, hs / hp }'
