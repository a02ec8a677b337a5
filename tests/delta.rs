//! Delta restore (`restore postgres --delta`) onto a stopped data directory of the same
//! cluster: what already matches the backup is kept, what differs rewritten, what the backup
//! does not hold removed, and the result is the same directory a full restore makes, which
//! recovers row for row. Another cluster's directory, a running server, a directory that is
//! not a data directory, one holding WAL never archived, one with another file system mounted
//! inside and one another restore holds are refused untouched. A delta restore that fails, or
//! is killed with -9, leaves the directory unable to start, and running it again finishes it.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};

use common::{Pg, Scratch, backup, code, succeeded, text};

/// Every entry under `dir` (links not followed): its kind and, for a file, the blake3 of its
/// content; `postgresql.auto.conf` without the line that dates the restore.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).expect("read dir").flatten() {
            let path = entry.path();
            let rel = path.strip_prefix(dir).expect("under dir").to_path_buf();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let what = if meta.file_type().is_symlink() {
                format!(
                    "link to {}",
                    std::fs::read_link(&path).expect("link").display()
                )
            } else if meta.is_dir() {
                pending.push(path);
                format!("dir {:o}", meta.mode() & 0o7777)
            } else if meta.file_type().is_fifo() {
                format!("fifo {:o}", meta.mode() & 0o7777)
            } else {
                let mut bytes = std::fs::read(&path).expect("read");
                if rel == Path::new("postgresql.auto.conf") {
                    let text = String::from_utf8_lossy(&bytes);
                    bytes = text
                        .lines()
                        .filter(|l| !l.starts_with("# Added by lifeline restore"))
                        .collect::<Vec<_>>()
                        .join("\n")
                        .into_bytes();
                }
                format!(
                    "file {:o} {}",
                    meta.mode() & 0o7777,
                    blake3::hash(&bytes).to_hex()
                )
            };
            out.insert(rel, what);
        }
    }
    out
}

/// The MiB figure before `label` in the restore's delta line.
fn mib(said: &str, label: &str) -> u64 {
    let (before, _) = said
        .split_once(label)
        .unwrap_or_else(|| panic!("no {label:?} in: {said}"));
    before
        .rsplit(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure before {label:?} in: {said}"))
}

/// A cluster with a table of about 30 MiB, vacuumed, (many blocks), a table to shrink and one to drop.
fn cluster_with_data(scratch: &Scratch) -> Pg {
    let pg = Pg::running(scratch, "primary");
    common::seed(&pg);
    pg.psql("CREATE TABLE big (id int PRIMARY KEY, payload text)");
    pg.psql("INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 200000) g");
    pg.psql("CREATE TABLE shrinks (id int, payload text)");
    pg.psql("INSERT INTO shrinks SELECT g, repeat('s', 500) FROM generate_series(1, 20000) g");
    pg.psql("CREATE TABLE dropped (id int)");
    pg.psql("INSERT INTO dropped SELECT generate_series(1, 1000)");
    // Settled, as a table that has been around is: a first VACUUM would set bits in every
    // page after the backup.
    pg.psql("VACUUM FREEZE");
    pg.psql("CHECKPOINT");
    pg
}

/// What happens to an old primary after its backup: rows changed in place, a table extended,
/// one truncated by VACUUM, one dropped, one created; then it stops.
fn diverge(pg: &Pg) {
    // Rows too long for the gaps VACUUM left in every page, as pgbench's are: the changes
    // stay in the pages they touch and at the end (short rows would land all over the table).
    pg.psql("UPDATE big SET payload = repeat('changed', 40) WHERE id BETWEEN 1000 AND 3000");
    pg.psql(
        "INSERT INTO big SELECT g, repeat(md5(g::text), 3) FROM generate_series(200001, 230000) g",
    );
    pg.psql("DELETE FROM shrinks WHERE id > 2000");
    pg.psql("VACUUM shrinks");
    pg.psql("DROP TABLE dropped");
    pg.psql("CREATE TABLE created AS SELECT generate_series(1, 5000) AS id");
    pg.psql("DELETE FROM accounts WHERE id > 4000");
    pg.psql("CHECKPOINT");
    pg.stop();
}

fn relation_path(pg: &Pg, table: &str) -> PathBuf {
    pg.data
        .join(pg.psql(&format!("SELECT pg_relation_filepath('{table}')")))
}

#[test]
fn delta_restore_keeps_what_matches_and_equals_a_full_restore() {
    let scratch = Scratch::new();
    let pg = cluster_with_data(&scratch);
    let before = pg.snapshot();
    backup(&scratch, &pg);
    let accounts = relation_path(&pg, "accounts");
    diverge(&pg);

    // Things the backup never held: an odd name, a directory, a signal file, a link to a
    // directory outside (its content must survive: links are removed, never followed), and a
    // second hard link to a relation file (the other name must keep its bytes).
    let outside = scratch.path("outside");
    std::fs::create_dir(&outside).expect("outside dir");
    std::fs::write(outside.join("keep me"), "not PostgreSQL's").expect("outside file");
    std::fs::write(pg.data.join("odd 'name' %\\ file"), "junk").expect("junk");
    std::fs::create_dir_all(pg.data.join("junk dir/below")).expect("junk dir");
    std::fs::write(pg.data.join("junk dir/below/file"), "junk").expect("junk");
    std::fs::write(pg.data.join("standby.signal"), "").expect("standby.signal");
    std::os::unix::fs::symlink(&outside, pg.data.join("pg_tblspc/99999")).expect("link");
    let other_name = scratch.path("hard link to accounts");
    std::fs::hard_link(&accounts, &other_name).expect("hard link");
    let other_before = std::fs::read(&other_name).expect("read");
    common::chown_postgres(&pg.data);

    let out = scratch.restore(&["--type", "full", "--delta"], &pg.data);
    let said = succeeded(&out, "delta restore");
    let (kept, written) = (
        mib(&said, "MiB already in place"),
        mib(&said, "MiB written"),
    );
    assert!(
        kept >= 20 && written < kept,
        "most of the unchanged table should be kept: {said}"
    );

    // The same backup restored in full: the two directories hold the same things.
    let full = scratch.path("full");
    succeeded(&scratch.restore(&["--type", "full"], &full), "full restore");
    assert_eq!(tree(&pg.data), tree(&full));
    assert_eq!(
        std::fs::read_to_string(outside.join("keep me")).expect("outside file survives"),
        "not PostgreSQL's"
    );
    assert_eq!(
        std::fs::read(&other_name).expect("other name"),
        other_before,
        "a file with a second hard link was written through"
    );

    let restored = Pg::recover(&scratch, pg.data.clone());
    assert_eq!(
        restored.snapshot(),
        before,
        "row for row after the delta restore"
    );
}

/// Restores planned a few writes at a time (`LIFELINE_RESTORE_PLAN_WINDOW`, each window of
/// files planned and written in turn, the small files' bundle cut per window, the block lists
/// read back from disk) put back the same directory as one plan, full and delta alike, and the
/// data row for row.
#[test]
fn restores_in_windows_of_a_few_writes_equal_one_plan() {
    let scratch = Scratch::new();
    let pg = cluster_with_data(&scratch);
    let before = pg.snapshot();
    backup(&scratch, &pg);
    diverge(&pg);
    let windows = [("LIFELINE_RESTORE_PLAN_WINDOW", "7")];
    let out = scratch.restore_with(&["--type", "full", "--delta"], &pg.data, &windows);
    let said = succeeded(&out, "delta restore in windows");
    assert!(mib(&said, "MiB already in place") >= 20, "{said}");
    let whole = scratch.path("one plan");
    succeeded(
        &scratch.restore(&["--type", "full"], &whole),
        "full restore",
    );
    let windowed = scratch.path("windows");
    let logged = [windows[0], ("LIFELINE_LOG", "debug")];
    let out = scratch.restore_with(&["--type", "full"], &windowed, &logged);
    succeeded(&out, "full restore in windows");
    let log = String::from_utf8_lossy(&out.stderr);
    let written = log.matches("writing a window of files").count();
    assert!(written > 100, "{written} windows");
    // The windows read their block lists back from a file with no name: none is left.
    assert!(log.contains("its block lists kept on disk"), "{log}");
    assert_eq!(tree(&windowed), tree(&whole));
    assert_eq!(tree(&pg.data), tree(&whole));
    let zero = scratch.restore_with(
        &["--type", "full"],
        &scratch.path("never"),
        &[("LIFELINE_RESTORE_PLAN_WINDOW", "0")],
    );
    assert!(!zero.status.success());
    let err = String::from_utf8_lossy(&zero.stderr);
    assert!(err.contains("restore-plan-window"), "{err}");
    assert!(!scratch.path("never").exists());
    let restored = Pg::recover(&scratch, windowed);
    assert_eq!(
        restored.snapshot(),
        before,
        "row for row after a restore in windows"
    );
}

#[test]
fn delta_restore_refuses_what_it_must_not_touch_and_restores_into_an_empty_directory() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    common::seed(&pg);
    backup(&scratch, &pg);

    // The server still runs on it.
    let out = scratch.restore(&["--type", "full", "--delta"], &pg.data);
    assert_ne!(code(&out), 0);
    assert!(text(&out).contains("postmaster.pid"), "{}", text(&out));
    // And still runs once its postmaster.pid is removed by hand.
    let pid_file = pg.data.join("postmaster.pid");
    let pid_aside = scratch.path("postmaster.pid aside");
    std::fs::rename(&pid_file, &pid_aside).expect("move postmaster.pid aside");
    let out = scratch.restore(&["--type", "full", "--delta"], &pg.data);
    std::fs::rename(&pid_aside, &pid_file).expect("postmaster.pid back");
    assert_ne!(code(&out), 0, "not refused: {}", text(&out));
    assert!(
        text(&out).contains("a PostgreSQL process"),
        "{}",
        text(&out)
    );

    // Stopped with a segment never archived: it may hold the last commits.
    let before = pg.snapshot();
    pg.stop();
    let untouched = tree(&pg.data);
    let ready = pg
        .data
        .join("pg_wal/archive_status/000000010000000000000099.ready");
    std::fs::write(&ready, "").expect("ready file");
    let out = scratch.restore(&["--type", "full", "--delta"], &pg.data);
    assert_ne!(code(&out), 0);
    assert!(text(&out).contains("never archived"), "{}", text(&out));
    std::fs::remove_file(&ready).expect("remove ready file");
    assert_eq!(
        tree(&pg.data),
        untouched,
        "a refused delta restore changed the directory"
    );

    // Another file system mounted inside it, which the backup does not hold.
    {
        let mounted = pg.data.join("mounted disk");
        std::fs::create_dir(&mounted).expect("mount point");
        let _mount = Mounted::tmpfs(&mounted);
        std::fs::write(mounted.join("keep.txt"), "theirs").expect("file on the mount");
        refused_untouched(
            &scratch,
            &["--type", "full", "--delta"],
            &pg.data,
            "another file system mounted",
        );
    }
    std::fs::remove_dir(pg.data.join("mounted disk")).expect("unmounted mount point");
    // A bind mount of a directory outside (same device), deeper inside a directory it would
    // remove.
    let outside = scratch.path("outside");
    std::fs::create_dir(&outside).expect("outside dir");
    std::fs::write(outside.join("keep.txt"), "theirs").expect("file outside");
    {
        let mounted = pg.data.join("junk/deeper");
        std::fs::create_dir_all(&mounted).expect("mount point");
        common::chown_postgres(&pg.data.join("junk"));
        let _mount = Mounted::bind(&outside, &mounted);
        refused_untouched(
            &scratch,
            &["--type", "full", "--delta"],
            &pg.data,
            "another file system mounted",
        );
    }
    std::fs::remove_dir_all(pg.data.join("junk")).expect("unmounted mount point");
    // A file bound over one the backup holds (a configuration file mounted in, as containers
    // do): written in place, the backup's copy would land in the file outside.
    let hba_outside = scratch.path("hba outside");
    std::fs::write(&hba_outside, "# theirs\n").expect("file outside");
    common::chown_postgres(&hba_outside);
    {
        let _mount = Mounted::bind(&hba_outside, &pg.data.join("pg_hba.conf"));
        refused_untouched(
            &scratch,
            &["--type", "full", "--delta"],
            &pg.data,
            "another file system mounted",
        );
    }
    assert_eq!(
        std::fs::read_to_string(&hba_outside).ok().as_deref(),
        Some("# theirs\n")
    );
    assert_eq!(
        std::fs::read_to_string(outside.join("keep.txt"))
            .ok()
            .as_deref(),
        Some("theirs")
    );

    // A directory it could not empty (read-only, as a slip of chmod leaves it): found before
    // anything is changed, not once the directory can no longer start.
    let locked = pg.data.join("old logs/2026");
    std::fs::create_dir_all(&locked).expect("locked dir");
    std::fs::write(locked.join("postgresql.log"), "old log").expect("file in it");
    common::chown_postgres(&pg.data.join("old logs"));
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o500)).expect("chmod");
    refused_untouched(
        &scratch,
        &["--type", "full", "--delta"],
        &pg.data,
        "cannot be changed by postgres",
    );
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::remove_dir_all(pg.data.join("old logs")).expect("remove the old logs");
    // The whole directory on a read-only mount (bound onto itself, then remounted read-only):
    // refused before anything, with the fix that applies.
    {
        let _bound = Mounted::bind(&pg.data, &pg.data);
        let remount = std::process::Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&pg.data)
            .output()
            .expect("run mount");
        assert!(remount.status.success(), "remount ro: {}", text(&remount));
        refused_untouched(
            &scratch,
            &["--type", "full", "--delta"],
            &pg.data,
            "is on a read-only file system",
        );
    }
    std::fs::write(pg.data.join("written after the mounts"), "").expect("read-write again");
    std::fs::remove_file(pg.data.join("written after the mounts")).expect("remove");
    // A directory the backup holds made root's, and a file root's alone (a `sudo` slip): the
    // directory's mode could not be set, nor the file compared.
    let (uid, gid) = common::postgres_ids();
    let base = pg.data.join("base");
    std::os::unix::fs::chown(&base, Some(0), Some(0)).expect("chown base to root");
    refused_untouched(
        &scratch,
        &["--type", "full", "--delta"],
        &pg.data,
        "belongs to root, not to postgres",
    );
    std::os::unix::fs::chown(&base, Some(uid), Some(gid)).expect("base back");
    let version = pg.data.join("PG_VERSION");
    std::os::unix::fs::chown(&version, Some(0), Some(0)).expect("chown PG_VERSION to root");
    std::fs::set_permissions(&version, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    refused_untouched(
        &scratch,
        &["--type", "full", "--delta"],
        &pg.data,
        "cannot be read by postgres",
    );
    std::os::unix::fs::chown(&version, Some(uid), Some(gid)).expect("PG_VERSION back");

    // `global` a link to another directory of the cluster: pg_control would be read and moved
    // aside there.
    let global = pg.data.join("global");
    let elsewhere = scratch.path("global elsewhere");
    std::fs::rename(&global, &elsewhere).expect("move global");
    std::os::unix::fs::symlink(&elsewhere, &global).expect("link global");
    refused_untouched(
        &scratch,
        &["--type", "full", "--delta"],
        &pg.data,
        "global is not a directory",
    );
    assert!(elsewhere.join("pg_control").is_file(), "pg_control moved");
    std::fs::remove_file(&global).expect("remove the link");
    std::fs::rename(&elsewhere, &global).expect("global back");

    // Another cluster's directory: refused, nothing changed.
    let other = Pg::init(&scratch, "other");
    refused_untouched(
        &scratch,
        &["--type", "full", "--delta"],
        &other.data,
        "belongs to cluster",
    );

    // Not a data directory at all.
    let stray = scratch.path("stray");
    std::fs::create_dir(&stray).expect("stray");
    std::fs::write(stray.join("notes.txt"), "mine").expect("notes");
    common::chown_postgres(&stray);
    let out = scratch.restore(&["--type", "full", "--delta"], &stray);
    assert_ne!(code(&out), 0);
    assert!(
        text(&out).contains("not a PostgreSQL data directory"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(stray.join("notes.txt"))
            .ok()
            .as_deref(),
        Some("mine")
    );

    // Nothing there yet: a delta restore is a full one.
    let restored = scratch.restore_and_recover(
        &["--type", "full", "--delta"],
        "new",
        "delta into a new directory",
    );
    assert_eq!(restored.snapshot(), before);

    // pg_wal on a file system of its own, with its own lost+found (root's, 0700, as mkfs
    // makes it): no mount to refuse, and lost+found is left alone.
    let pg_wal = pg.data.join("pg_wal");
    let _mount = Mounted::tmpfs(&pg_wal);
    let lost = pg_wal.join("lost+found");
    std::fs::create_dir(&lost).expect("lost+found");
    std::fs::set_permissions(&lost, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let out = scratch.restore(&["--type", "full", "--delta"], &pg.data);
    succeeded(&out, "the delta restore with pg_wal mounted on its own");
    assert!(pg_wal.join("archive_status").is_dir());
    assert!(lost.is_dir(), "lost+found was removed");
}

/// A FIFO owned by PostgreSQL's user at `path`, in place of whatever was there.
fn fifo_in_place_of(path: &Path) {
    if path.exists() {
        std::fs::remove_file(path).expect("remove what the FIFO replaces");
    }
    let out = std::process::Command::new("mkfifo")
        .arg(path)
        .output()
        .expect("run mkfifo");
    assert!(out.status.success(), "mkfifo {}: {out:?}", path.display());
    common::chown_postgres(path);
}

/// The restore `scratch.restore(args, data)` would run, as a child killed once `limit` has
/// passed: a restore that waits on a FIFO fails the test instead of hanging it.
fn restore_within(
    scratch: &Scratch,
    args: &[&str],
    data: &Path,
    limit: std::time::Duration,
) -> std::process::Output {
    let mut child = delta_command(scratch, args, data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the restore");
    let started = std::time::Instant::now();
    while child.try_wait().expect("poll").is_none() {
        if started.elapsed() > limit {
            child.kill().expect("kill the restore");
            panic!(
                "the restore into {} still ran after {limit:?}",
                data.display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("the restore's output")
}

#[test]
fn fifos_in_the_data_directory_are_replaced_or_refused_never_waited_on() {
    let scratch = Scratch::new();
    let pg = cluster_with_data(&scratch);
    let before = pg.snapshot();
    backup(&scratch, &pg);
    let shrinks = relation_path(&pg, "shrinks");
    diverge(&pg);
    let limit = std::time::Duration::from_secs(120);
    let delta = ["--type", "full", "--delta"];

    // A FIFO where pg_control should be: the cluster cannot be told, so nothing is touched.
    let control = pg.data.join("global/pg_control");
    let control_bytes = std::fs::read(&control).expect("pg_control");
    fifo_in_place_of(&control);
    let untouched = tree(&pg.data);
    let out = restore_within(&scratch, &delta, &pg.data, limit);
    assert_ne!(code(&out), 0, "not refused: {}", text(&out));
    assert!(text(&out).contains("not a regular file"), "{}", text(&out));
    assert_eq!(
        tree(&pg.data),
        untouched,
        "a refused restore changed the directory"
    );
    std::fs::remove_file(&control).expect("remove the FIFO");
    // A pg_control cut short: neither the cluster nor how its server stopped can be told.
    std::fs::write(&control, &control_bytes[..12]).expect("pg_control cut short");
    common::chown_postgres(&control);
    let untouched = tree(&pg.data);
    let out = restore_within(&scratch, &delta, &pg.data, limit);
    assert_ne!(code(&out), 0, "not refused: {}", text(&out));
    assert!(
        text(&out).contains("is damaged (12 bytes)"),
        "{}",
        text(&out)
    );
    assert_eq!(tree(&pg.data), untouched, "a refused restore changed it");
    std::fs::write(&control, control_bytes).expect("pg_control back");
    common::chown_postgres(&control);

    // FIFOs in place of a relation file the backup holds and under a name it does not:
    // replaced by the file, and removed.
    fifo_in_place_of(&shrinks);
    fifo_in_place_of(&pg.data.join("base/odd fifo"));
    let out = restore_within(&scratch, &delta, &pg.data, limit);
    succeeded(&out, "the delta restore over two FIFOs");
    let full = scratch.path("full");
    succeeded(&scratch.restore(&["--type", "full"], &full), "full restore");
    assert_eq!(tree(&pg.data), tree(&full));
    let restored = Pg::recover(&scratch, pg.data.clone());
    assert_eq!(
        restored.snapshot(),
        before,
        "row for row after the delta restore over FIFOs"
    );

    // A FIFO named as an unfinished restore's marker, in a directory a full restore is given:
    // refused as not empty, not waited on.
    let stray = scratch.path("stray");
    std::fs::create_dir(&stray).expect("stray dir");
    common::chown_postgres(&stray);
    fifo_in_place_of(&stray.join(".lifeline-restore-incomplete"));
    let out = restore_within(&scratch, &["--type", "full"], &stray, limit);
    assert_ne!(code(&out), 0, "not refused: {}", text(&out));
    assert!(text(&out).contains("is not empty"), "{}", text(&out));
}

#[test]
fn root_restoring_from_a_repository_of_its_own_gives_the_files_to_the_directory_owner() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    common::seed(&pg);
    let before = pg.snapshot();
    backup(&scratch, &pg);
    // A copy of the repository that root owns: lifeline has no other user to become.
    let repo = scratch.path("root's repository");
    common::copy_tree(&scratch.repo, &repo);
    let chowned = std::process::Command::new("chown")
        .args(["-R", "root:root"])
        .arg(&repo)
        .status()
        .expect("chown");
    assert!(chowned.success());

    // Into PostgreSQL's empty directory, with --delta (then a full restore) and without.
    let mut restored = Vec::new();
    for (name, args) in [
        ("with delta", &["--type", "full", "--delta"][..]),
        ("without", &["--type", "full"][..]),
    ] {
        let dir = scratch.path(name);
        std::fs::create_dir(&dir).expect("data dir");
        common::chown_postgres(&dir);
        let out = restore_as_root_from(&scratch, &repo, args, &dir);
        succeeded(&out, "a restore as root from root's repository");
        assert_eq!(
            not_postgres_owned(&scratch, &dir),
            Vec::<PathBuf>::new(),
            "{name}"
        );
        restored.push((name, dir));
    }
    // Recovery fetches WAL as PostgreSQL's user, from the repository the restore names.
    common::chown_postgres(&repo);
    for (name, dir) in restored {
        let pg = Pg::recover(&scratch, dir);
        assert_eq!(pg.snapshot(), before, "row for row, {name}");
        pg.stop();
    }
}

#[test]
fn a_primary_that_crashed_is_refused_until_its_unarchived_wal_is_given_up() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    common::seed(&pg);
    let before = pg.snapshot();
    backup(&scratch, &pg);
    let delta = ["--type", "full", "--delta"];

    // A copy restored and never started carries the backup's pg_control, which says "in
    // production", and its backup_label: it is taken.
    let copy = scratch.path("copy");
    succeeded(&scratch.restore(&["--type", "full"], &copy), "full restore");
    succeeded(
        &scratch.restore(&delta, &copy),
        "a delta restore onto a restored copy never started",
    );

    // Commits after the last archived segment, then a crash: they are in pg_wal only.
    pg.psql("CREATE TABLE after_the_backup AS SELECT generate_series(1, 100) AS id");
    pg.crash();
    refused_untouched(&scratch, &delta, &pg.data, "did not shut down cleanly");
    let out = scratch.restore(&["--type", "full", "--discard-unarchived-wal"], &copy);
    assert_ne!(code(&out), 0, "accepted without --delta: {}", text(&out));

    // Given up on purpose, as after a failover.
    let out = scratch.restore(
        &["--type", "full", "--delta", "--discard-unarchived-wal"],
        &pg.data,
    );
    succeeded(&out, "the delta restore giving up the unarchived WAL");
    let restored = Pg::recover(&scratch, pg.data.clone());
    assert_eq!(
        restored.snapshot(),
        before,
        "row for row after the delta restore"
    );
}

#[test]
fn a_failed_delta_restore_cannot_start_and_running_it_again_finishes_it() {
    // Encrypted: the blocks compare against keyed chunk ids.
    let scratch = Scratch::new().encrypted("delta restore passphrase");
    let pg = cluster_with_data(&scratch);
    let before = pg.snapshot();
    backup(&scratch, &pg);
    diverge(&pg);

    // The packs are unreachable: the restore fails once it has begun.
    let packs = scratch.repo.join("packs");
    let away = scratch.path("packs away");
    std::fs::rename(&packs, &away).expect("move packs away");
    let out = scratch.restore(&["--type", "full", "--delta", "--skip-verify"], &pg.data);
    assert_ne!(code(&out), 0);
    assert!(
        text(&out).contains("run the restore with --delta again"),
        "{}",
        text(&out)
    );
    assert!(
        !pg.data.join("global/pg_control").exists(),
        "a half-restored directory could start"
    );
    // A full restore will not take it over; it says how to finish.
    let out = scratch.restore(&["--type", "full"], &pg.data);
    assert_ne!(code(&out), 0);
    assert!(text(&out).contains("--delta"), "{}", text(&out));

    std::fs::rename(&away, &packs).expect("packs back");
    // Finished by root (lifeline becomes the repository's owner): everything stays PostgreSQL's.
    let out = restore_as_root(&scratch, &["--type", "full", "--delta"], &pg.data);
    let said = succeeded(&out, "the second delta restore, as root");
    assert_eq!(
        not_postgres_owned(&scratch, &pg.data),
        Vec::<PathBuf>::new()
    );
    assert!(mib(&said, "MiB already in place") >= 20, "{said}");
    let restored = Pg::recover(&scratch, pg.data.clone());
    assert_eq!(
        restored.snapshot(),
        before,
        "row for row after the finished delta restore"
    );
}

/// `lifeline restore postgres ARGS --data-dir DATA` run as root, in a clean environment.
fn restore_as_root(scratch: &Scratch, args: &[&str], data: &Path) -> std::process::Output {
    restore_as_root_from(scratch, &scratch.repo, args, data)
}

/// The same, from the repository at `repo`.
fn restore_as_root_from(
    scratch: &Scratch,
    repo: &Path,
    args: &[&str],
    data: &Path,
) -> std::process::Output {
    let mut cmd = std::process::Command::new(&scratch.bin);
    cmd.args(["restore", "postgres"])
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("BACKUP_DIR", repo);
    if let Some(config) = &scratch.config {
        cmd.env("LIFELINE_CONFIG", config);
    }
    cmd.output().expect("run the restore as root")
}

/// `dir` and the entries under it that PostgreSQL's user (the repository's owner) does not own.
fn not_postgres_owned(scratch: &Scratch, dir: &Path) -> Vec<PathBuf> {
    let postgres = std::fs::metadata(&scratch.repo).expect("repo").uid();
    std::iter::once(PathBuf::new())
        .chain(tree(dir).into_keys())
        .filter(|rel| {
            std::fs::symlink_metadata(dir.join(rel))
                .map(|m| m.uid())
                .ok()
                != Some(postgres)
        })
        .collect()
}

/// Run the restore into `dir`: it must fail, say `says`, and leave `dir` as it was.
fn refused_untouched(scratch: &Scratch, args: &[&str], dir: &Path, says: &str) {
    let untouched = tree(dir);
    let out = scratch.restore(args, dir);
    assert_ne!(code(&out), 0, "not refused: {}", text(&out));
    assert!(text(&out).contains(says), "{}", text(&out));
    assert_eq!(
        tree(dir),
        untouched,
        "a refused restore changed {}",
        dir.display()
    );
}

/// A tmpfs mounted at a directory until dropped.
struct Mounted(PathBuf);

impl Mounted {
    /// A tmpfs of PostgreSQL's user at `at`.
    fn tmpfs(at: &Path) -> Mounted {
        let (uid, gid) = common::postgres_ids();
        let options = format!("mode=0700,uid={uid},gid={gid}");
        Mounted::with(&["-t", "tmpfs", "-o", &options, "lifeline-test"], at)
    }

    /// The directory or file `from` bound at `at`: the same device, another mount.
    fn bind(from: &Path, at: &Path) -> Mounted {
        Mounted::with(&["--bind", from.to_str().expect("utf8 path")], at)
    }

    fn with(args: &[&str], at: &Path) -> Mounted {
        let out = std::process::Command::new("mount")
            .args(args)
            .arg(at)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "mount {args:?} (the tests run as root): {}",
            text(&out)
        );
        Mounted(at.to_path_buf())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).output();
    }
}

/// The data directory locked as a running restore holds it.
fn hold_like_a_restore(dir: &Path) -> std::fs::File {
    let file = std::fs::File::open(dir).expect("open the directory");
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .expect("lock the directory");
    file
}

#[test]
fn a_directory_another_restore_holds_is_refused_untouched() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    common::seed(&pg);
    let before = pg.snapshot();
    backup(&scratch, &pg);
    pg.psql("DELETE FROM accounts WHERE id > 10");
    pg.stop();

    let held = hold_like_a_restore(&pg.data);
    refused_untouched(
        &scratch,
        &["--type", "full", "--delta"],
        &pg.data,
        "another lifeline restore",
    );

    // A full restore into an empty directory another restore holds.
    let empty = scratch.path("empty");
    std::fs::create_dir(&empty).expect("empty dir");
    common::chown_postgres(&empty);
    let held_empty = hold_like_a_restore(&empty);
    refused_untouched(
        &scratch,
        &["--type", "full"],
        &empty,
        "another lifeline restore",
    );
    drop(held_empty);

    // Once the other restore is gone, the delta restore runs.
    drop(held);
    let out = scratch.restore(&["--type", "full", "--delta"], &pg.data);
    succeeded(&out, "the delta restore once the directory is free");
    let restored = Pg::recover(&scratch, pg.data.clone());
    assert_eq!(restored.snapshot(), before);
}

#[test]
fn a_delta_restore_killed_midway_is_finished_by_the_next_one_in_an_odd_path_with_few_files_open() {
    let scratch = Scratch::new();
    let pg = cluster_with_data(&scratch);
    let before = pg.snapshot();
    backup(&scratch, &pg);
    diverge(&pg);
    let odd = scratch.path("old primary it's 100% a\\b c");
    std::fs::rename(&pg.data, &odd).expect("move the data directory");

    let (uid, gid) = common::postgres_ids();
    let restore_args = |bin: &Path| {
        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c")
            .arg("ulimit -n 32 && exec \"$@\"")
            .arg("sh")
            .arg(bin)
            .args([
                "restore",
                "postgres",
                "--type",
                "full",
                "--delta",
                "--data-dir",
            ])
            .arg(&odd)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("BACKUP_DIR", &scratch.repo)
            .current_dir("/tmp")
            .uid(uid)
            .gid(gid);
        cmd
    };

    // Killed with -9 as soon as pg_control is moved aside (the directory is marked): mid-restore.
    kill_once_reached(
        restore_args(&scratch.bin),
        &odd,
        &odd.join("global/pg_control.lifeline-old"),
    );
    let out = scratch.restore(&["--type", "full"], &odd);
    assert_ne!(code(&out), 0);
    assert!(text(&out).contains("--delta"), "{}", text(&out));

    // The next one (32 descriptors, the path quoted nowhere) finishes it.
    let out = restore_args(&scratch.bin)
        .output()
        .expect("run the delta restore");
    let said = succeeded(&out, "the delta restore after the kill");
    assert!(mib(&said, "MiB already in place") >= 20, "{said}");
    let restored = Pg::recover(&scratch, odd.clone());
    assert_eq!(
        restored.snapshot(),
        before,
        "row for row after the killed delta restore was finished"
    );
}

/// Every entry of `tree` but those at `skip` (relative paths).
fn tree_without(dir: &Path, skip: &[&str]) -> BTreeMap<PathBuf, String> {
    let mut all = tree(dir);
    all.retain(|rel, _| !skip.iter().any(|s| rel == Path::new(s)));
    all
}

/// A running cluster with the tablespace `fast` in the new directory `name` of the scratch.
fn old_primary_with_tablespace(scratch: &Scratch, name: &str) -> (Pg, PathBuf) {
    let pg = Pg::running(scratch, "old primary");
    let place = scratch.path(name);
    std::fs::create_dir(&place).expect("tablespace dir");
    common::chown_postgres(&place);
    pg.psql(&format!(
        "CREATE TABLESPACE fast LOCATION '{}'",
        place.display()
    ));
    (pg, place)
}

/// The version directory (`PG_15_...`) PostgreSQL made in a tablespace's directory.
fn version_dir(place: &Path) -> String {
    std::fs::read_dir(place)
        .expect("tablespace dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("PG_"))
        .expect("a version directory")
}

#[test]
fn delta_restore_of_a_cluster_with_a_tablespace_reuses_only_the_directory_it_is_given() {
    let scratch = Scratch::new();
    let (pg, place) = old_primary_with_tablespace(&scratch, "ts place % 1");
    let oid = pg.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'fast'");
    common::seed(&pg);
    pg.psql("CREATE TABLE ledger (id int PRIMARY KEY USING INDEX TABLESPACE fast, note text) TABLESPACE fast");
    pg.psql(
        "INSERT INTO ledger SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 150000) g",
    );
    pg.psql("CREATE TABLE gone (id int) TABLESPACE fast");
    pg.psql("INSERT INTO gone SELECT generate_series(1, 1000)");
    pg.psql("VACUUM FREEZE");
    pg.psql("CHECKPOINT");
    let before = pg.snapshot();
    backup(&scratch, &pg);

    // A copy of the data directory, made while the server was stopped, still leads to the
    // server's tablespace: mapped there, a delta restore onto the copy is refused while that
    // server runs.
    pg.stop();
    let copy = scratch.path("copy of the data directory");
    common::copy_tree(&pg.data, &copy);
    pg.start();
    let in_use = format!("fast={}", place.display());
    refused_untouched(
        &scratch,
        &["--type", "full", "--delta", "--tablespace-map", &in_use],
        &copy,
        "is in use by the server running on",
    );

    // The old primary goes on: rows change in the tablespace, a table there is dropped, one
    // is created; a stray file appears in its version directory, and at its top another
    // major's version directory (pg_upgrade's leftover), which is not this backup's to touch.
    pg.psql("UPDATE ledger SET note = repeat('changed', 40) WHERE id BETWEEN 500 AND 1500");
    pg.psql("INSERT INTO ledger SELECT g, 'new' FROM generate_series(150001, 160000) g");
    pg.psql("DROP TABLE gone");
    pg.psql("CREATE TABLE later TABLESPACE fast AS SELECT generate_series(1, 3000) AS id");
    pg.psql("CHECKPOINT");
    pg.stop();
    let version = version_dir(&place);
    std::fs::write(place.join(&version).join("stray 'file'"), "junk").expect("stray");
    let foreign = place.join("PG_99_000000000");
    std::fs::create_dir_all(foreign.join("5")).expect("foreign version dir");
    std::fs::write(foreign.join("5/1234"), "another major's table").expect("foreign file");
    common::chown_postgres(&place);
    let map = format!("fast={}", place.display());

    // Not mapped: refused, since a copied directory's link may lead to another server's
    // tablespace; nothing changes in either directory.
    let place_then = tree(&place);
    let delta = ["--type", "full", "--delta", "--tablespace-map"];
    refused_untouched(
        &scratch,
        &delta[..3],
        &pg.data,
        &format!("--tablespace-map {oid}=DIR"),
    );
    // Mapped to a directory that holds something but is not where pg_tblspc/<oid> leads.
    let elsewhere = scratch.path("someone else's");
    std::fs::create_dir(&elsewhere).expect("elsewhere");
    std::fs::write(elsewhere.join("data"), "theirs").expect("theirs");
    common::chown_postgres(&elsewhere);
    let wrong = format!("fast={}", elsewhere.display());
    refused_untouched(
        &scratch,
        &[&delta[..], &[&wrong]].concat(),
        &pg.data,
        "only where the data directory's own",
    );
    // Mapped through the data directory's own link.
    let through = format!(
        "fast={}",
        pg.data.join(format!("pg_tblspc/{oid}/sub")).display()
    );
    refused_untouched(
        &scratch,
        &[&delta[..], &[&through]].concat(),
        &pg.data,
        "lies inside the data directory",
    );
    assert_eq!(
        tree(&place),
        place_then,
        "a refused delta changed the tablespace"
    );
    assert_eq!(
        std::fs::read_to_string(elsewhere.join("data")).expect("theirs"),
        "theirs"
    );

    // SIMULATE_MODE: checked and walked as the real run would, named, and nothing changed.
    let (data_then, place_then) = (tree(&pg.data), tree(&place));
    let data = pg.data.to_string_lossy().into_owned();
    let out = scratch.lifeline(
        &[
            "restore",
            "postgres",
            "--type",
            "full",
            "--delta",
            "--tablespace-map",
            &map,
            "--data-dir",
            &data,
        ],
        &[("SIMULATE_MODE", "true")],
    );
    let said = succeeded(&out, "simulated delta restore with a tablespace");
    assert!(
        said.contains(&format!("tablespace {oid} into {}", place.display())),
        "{said}"
    );
    assert_eq!(
        tree(&pg.data),
        data_then,
        "a simulated delta changed the data directory"
    );
    assert_eq!(
        tree(&place),
        place_then,
        "a simulated delta changed the tablespace"
    );

    // Mapped to its own directory: kept where it matches, equal to a full restore.
    let out = scratch.restore(
        &["--type", "full", "--delta", "--tablespace-map", &map],
        &pg.data,
    );
    let said = succeeded(&out, "delta restore with a tablespace");
    assert!(
        mib(&said, "MiB already in place") >= 10,
        "the unchanged blocks in the tablespace should be kept: {said}"
    );
    let full_place = scratch.path("full ts");
    let full_map = format!("fast={}", full_place.display());
    let full = scratch.path("full");
    succeeded(
        &scratch.restore(&["--type", "full", "--tablespace-map", &full_map], &full),
        "full restore",
    );
    let link = format!("pg_tblspc/{oid}");
    assert_eq!(
        tree_without(&pg.data, &[&link, "tablespace_map"]),
        tree_without(&full, &[&link, "tablespace_map"])
    );
    assert_eq!(
        tree(&place.join(&version)),
        tree(&full_place.join(&version)),
        "the tablespace's version directory differs from a full restore's"
    );
    assert_eq!(
        std::fs::read_to_string(foreign.join("5/1234")).expect("foreign file survives"),
        "another major's table"
    );
    assert_eq!(
        std::fs::canonicalize(pg.data.join(&link)).expect("link"),
        std::fs::canonicalize(&place).expect("place")
    );
    let restored = Pg::recover(&scratch, pg.data.clone());
    assert_eq!(
        restored.snapshot(),
        before,
        "row for row after the delta restore"
    );
    restored.stop();

    // Mapped to a new directory: the tablespace is written there in full and the link moved;
    // the old directory is left as it was.
    let moved = scratch.path("ts moved");
    let moved_map = format!("fast={}", moved.display());
    let old_place = tree(&place);
    let out = delta_command(
        &scratch,
        &["--type", "full", "--delta", "--tablespace-map", &moved_map],
        &pg.data,
    )
    .output()
    .expect("run the delta restore");
    succeeded(
        &out,
        "delta restore moving the tablespace, 32 files open at most",
    );
    assert_eq!(
        tree(&place),
        old_place,
        "the old tablespace directory was changed"
    );
    assert_eq!(
        tree(&moved.join(&version)),
        tree(&full_place.join(&version))
    );
    assert_eq!(
        std::fs::canonicalize(pg.data.join(&link)).expect("link"),
        std::fs::canonicalize(&moved).expect("moved")
    );
    let restored = Pg::recover(&scratch, pg.data.clone());
    assert_eq!(
        restored.snapshot(),
        before,
        "row for row after moving the tablespace"
    );
}

#[test]
fn delta_restore_of_a_cluster_with_its_wal_elsewhere_reuses_that_directory_only_when_named() {
    let scratch = Scratch::new();
    let wal = scratch.path("wal 'disk' %");
    let pg = Pg::init_with(
        &scratch,
        "old primary",
        &["--waldir", wal.to_str().expect("utf8")],
    );
    pg.start();
    common::seed(&pg);
    pg.psql("CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 3) AS payload FROM generate_series(1, 100000) g");
    pg.psql("VACUUM FREEZE");
    pg.psql("CHECKPOINT");
    let before = pg.snapshot();
    backup(&scratch, &pg);
    pg.psql("UPDATE big SET payload = 'changed' WHERE id <= 2000");
    pg.psql("CHECKPOINT");
    pg.stop();
    let old_segments = std::fs::read_dir(&wal)
        .expect("wal dir")
        .flatten()
        .filter(|e| e.file_name().len() == 24)
        .count();
    assert!(
        old_segments > 0,
        "the old primary left no WAL in {}",
        wal.display()
    );

    // Without --waldir, pg_wal (a link) is not followed; with another directory that holds
    // something, refused; neither run changes anything.
    let wal_then = tree(&wal);
    refused_untouched(
        &scratch,
        &["--type", "full", "--delta"],
        &pg.data,
        "--waldir DIR",
    );
    let elsewhere = scratch.path("another wal");
    std::fs::create_dir(&elsewhere).expect("elsewhere");
    std::fs::write(elsewhere.join("000000010000000000000001"), "theirs").expect("theirs");
    common::chown_postgres(&elsewhere);
    let other = elsewhere.to_str().expect("utf8");
    refused_untouched(
        &scratch,
        &["--type", "full", "--delta", "--waldir", other],
        &pg.data,
        "only where the data directory's own",
    );
    assert_eq!(
        tree(&wal),
        wal_then,
        "a refused delta changed the WAL directory"
    );

    // Named: the old WAL goes, pg_wal still leads there, and the result is a full restore's.
    let out = scratch.restore(
        &[
            "--type",
            "full",
            "--delta",
            "--waldir",
            wal.to_str().expect("utf8"),
        ],
        &pg.data,
    );
    succeeded(&out, "delta restore with --waldir");
    let full_wal = scratch.path("full wal");
    let full = scratch.path("full");
    succeeded(
        &scratch.restore(
            &[
                "--type",
                "full",
                "--waldir",
                full_wal.to_str().expect("utf8"),
            ],
            &full,
        ),
        "full restore",
    );
    assert_eq!(
        tree_without(&pg.data, &["pg_wal"]),
        tree_without(&full, &["pg_wal"])
    );
    assert_eq!(
        tree(&wal),
        tree(&full_wal),
        "the WAL directory is not a full restore's"
    );
    assert_eq!(
        std::fs::canonicalize(pg.data.join("pg_wal")).expect("link"),
        std::fs::canonicalize(&wal).expect("wal")
    );
    let restored = Pg::recover(&scratch, pg.data.clone());
    assert_eq!(
        restored.snapshot(),
        before,
        "row for row after the delta restore"
    );
}

/// `lifeline restore postgres ARGS --data-dir DATA` as postgres, in a clean environment, with
/// 32 open files at most.
fn delta_command(scratch: &Scratch, args: &[&str], data: &Path) -> std::process::Command {
    let (uid, gid) = common::postgres_ids();
    let mut cmd = std::process::Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 32 && exec \"$@\"")
        .arg("sh")
        .arg(&scratch.bin)
        .args(["restore", "postgres"])
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("BACKUP_DIR", &scratch.repo)
        .current_dir("/tmp")
        .uid(uid)
        .gid(gid);
    cmd
}

/// Run the delta restore `cmd` and kill it with -9 once `reached` exists; the data directory
/// `data` must then refuse to start.
fn kill_once_reached(mut cmd: std::process::Command, data: &Path, reached: &Path) {
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the delta restore");
    let started = std::time::Instant::now();
    while !reached.exists() {
        assert!(
            child.try_wait().expect("poll").is_none(),
            "the delta restore ended before {} appeared",
            reached.display()
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{} never appeared",
            reached.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().expect("kill -9");
    let status = child.wait().expect("wait");
    assert_eq!(
        status.signal(),
        Some(9),
        "the kill landed after it ended: {status:?}"
    );
    assert!(
        !data.join("global/pg_control").exists(),
        "a directory killed mid-restore could start"
    );
}

#[test]
fn a_delta_restore_moving_a_tablespace_killed_twice_is_finished_by_the_next_one() {
    let scratch = Scratch::new();
    let (pg, place) = old_primary_with_tablespace(&scratch, "ts place");
    common::seed(&pg);
    pg.psql("CREATE TABLE ledger TABLESPACE fast AS SELECT g AS id, repeat(md5(g::text), 3) AS note FROM generate_series(1, 150000) g");
    pg.psql("CHECKPOINT");
    let before = pg.snapshot();
    backup(&scratch, &pg);
    pg.psql("UPDATE ledger SET note = 'changed' WHERE id <= 5000");
    pg.psql("CHECKPOINT");
    pg.stop();
    let version = version_dir(&place);
    let old_place = tree(&place);

    // Killed once the directory is sealed, then again once the tablespace's new directory
    // has its version directory; each time with the same mapping.
    let moved = scratch.path("ts moved 'here' %");
    let map = format!("fast={}", moved.display());
    let args = ["--type", "full", "--delta", "--tablespace-map", &map];
    kill_once_reached(
        delta_command(&scratch, &args, &pg.data),
        &pg.data,
        &pg.data.join("global/pg_control.lifeline-old"),
    );
    kill_once_reached(
        delta_command(&scratch, &args, &pg.data),
        &pg.data,
        &moved.join(&version),
    );

    // Finished by root next to PostgreSQL's user: what it writes is still PostgreSQL's.
    let said = succeeded(
        &restore_as_root(&scratch, &args, &pg.data),
        "the delta restore after two kills, as root",
    );
    assert!(said.contains("MiB already in place"), "{said}");
    assert_eq!(
        not_postgres_owned(&scratch, &pg.data),
        Vec::<PathBuf>::new()
    );
    assert_eq!(not_postgres_owned(&scratch, &moved), Vec::<PathBuf>::new());
    assert_eq!(
        tree(&place),
        old_place,
        "the old tablespace directory was changed"
    );
    assert_eq!(
        std::fs::canonicalize(
            pg.data.join("pg_tblspc").join(
                std::fs::read_dir(pg.data.join("pg_tblspc"))
                    .expect("pg_tblspc")
                    .flatten()
                    .next()
                    .expect("one link")
                    .file_name()
            )
        )
        .expect("link"),
        std::fs::canonicalize(&moved).expect("moved")
    );
    let restored = Pg::recover(&scratch, pg.data.clone());
    assert_eq!(restored.snapshot(), before, "row for row after two kills");
}
