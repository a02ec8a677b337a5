//! Archive look-ahead: `wal push --ahead` (the detached worker every `wal push` starts) stores
//! the segments PostgreSQL has marked ready, byte for byte, and touches nothing in pg_wal;
//! PostgreSQL's own `wal push` of each then only confirms it. And on the ugly paths (a worker
//! killed with -9 mid-upload, on a local or an S3 repository, a low open-file limit, paths that
//! need quoting, encrypted and S3 repositories with a backlog, two pushes at once,
//! archive_command's own flags), every segment is still archived with exit 0 and fetched byte
//! for byte.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Pg, Scratch, code, files_under, text};
use storage::conformance::MotoServer;

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

fn ready(pg: &Pg) -> Vec<String> {
    listing(&pg.data.join("pg_wal/archive_status"))
        .into_iter()
        .filter_map(|n| n.strip_suffix(".ready").map(str::to_string))
        .filter(|n| n.len() == 24)
        .collect()
}

#[test]
fn look_ahead_stores_ready_segments_exactly_and_leaves_pg_wal_alone() {
    let scratch = Scratch::new();
    let pg = Pg::init(&scratch, "primary");
    // Archiving fails for now, so that segments wait, marked ready.
    let conf = pg.data.join("postgresql.conf");
    let mut settings = std::fs::read_to_string(&conf).expect("read conf");
    settings.push_str("archive_command = 'false'\n");
    std::fs::write(&conf, settings).expect("write conf");
    pg.start();
    pg.psql("CREATE TABLE t (id int, payload text)");
    for round in 0..5 {
        pg.psql(&format!(
            "INSERT INTO t SELECT g, md5(g::text) FROM generate_series({}, {}) g",
            round * 1000,
            round * 1000 + 999
        ));
        pg.psql("SELECT pg_switch_wal()");
    }
    let waiting = ready(&pg);
    assert!(waiting.len() >= 5, "segments waiting: {waiting:?}");
    let pg_wal_before = listing(&pg.data.join("pg_wal"));
    let status_before = listing(&pg.data.join("pg_wal/archive_status"));

    // The worker, as `wal push` starts it: in the data directory, as postgres.
    let (uid, gid) = (
        std::fs::metadata(&pg.data).expect("data").uid(),
        std::fs::metadata(&pg.data).expect("data").gid(),
    );
    let first = format!("pg_wal/{}", waiting[0]);
    let out = Command::new(&scratch.bin)
        .args(["--backup-dir", scratch.repo.to_str().expect("utf8")])
        .args(["wal", "push", "--ahead", &first])
        .env_clear()
        .env("LIFELINE_WAL_PUSH_AHEAD", "2")
        .current_dir(&pg.data)
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run the worker");
    assert_eq!(code(&out), 0, "{}", text(&out));

    // Exactly two segments, from the second after the one being pushed, byte for byte.
    let stored = |name: &str| {
        let dest = scratch.path(&format!("fetched-{name}"));
        let out = scratch.lifeline(
            &["wal", "fetch", name, dest.to_str().expect("utf8")],
            &[("LIFELINE_WAL_PREFETCH", "0")],
        );
        (code(&out) == 0).then(|| std::fs::read(&dest).expect("fetched"))
    };
    for name in &waiting[..2] {
        assert!(
            stored(name).is_none(),
            "{name}: the current segment and the next are their own pushes'"
        );
    }
    for name in &waiting[2..4] {
        let original = std::fs::read(pg.data.join("pg_wal").join(name)).expect("segment");
        assert!(stored(name) == Some(original), "{name} not stored exactly");
    }
    assert!(
        stored(&waiting[4]).is_none(),
        "the limit of 2 segments was exceeded"
    );
    // Nothing in pg_wal changed: PostgreSQL keeps its own bookkeeping.
    assert_eq!(listing(&pg.data.join("pg_wal")), pg_wal_before);
    assert_eq!(
        listing(&pg.data.join("pg_wal/archive_status")),
        status_before
    );

    // Archiving works again: every segment is archived, those stored ahead only confirmed.
    pg.psql(&format!(
        "ALTER SYSTEM SET archive_command = '{} {} wal push %p'",
        scratch.bin.display(),
        scratch.repository_args()
    ));
    pg.psql("SELECT pg_reload_conf()");
    pg.switch_and_archive();
    // (`false` failed before; lifeline never did.)
    let failed_lifeline = format!("failed archive command was: {}", scratch.bin.display());
    assert!(!pg.log().contains(&failed_lifeline), "{}", pg.log());
    for name in &waiting {
        assert!(stored(name).is_some(), "{name} not archived");
    }
    assert!(
        pg.log()
            .contains("already archived with identical contents"),
        "no segment was confirmed instead of stored again:\n{}",
        pg.log()
    );
}

// The ugly paths. Each makes segments wait (archiving fails), then lets lifeline archive them,
// and checks what a user relies on: every segment archived, exit 0, byte for byte.

/// A started cluster whose archiving fails for now, so that segments wait, marked ready.
fn held_back(scratch: &Scratch, name: &str) -> Pg {
    let pg = Pg::init(scratch, name);
    append_conf(&pg, "archive_command = 'false'");
    pg.start();
    pg.psql("CREATE TABLE t (id int, payload text)");
    pg
}

/// A line added to postgresql.conf (a later line wins over an earlier one).
fn append_conf(pg: &Pg, line: &str) {
    let conf = pg.data.join("postgresql.conf");
    let mut settings = std::fs::read_to_string(&conf).expect("read conf");
    settings.push_str(line);
    settings.push('\n');
    std::fs::write(&conf, settings).expect("write conf");
}

/// `count` more segments, each with `rows` rows of WAL; returns every segment waiting, oldest
/// first.
fn backlog(pg: &Pg, count: usize, rows: usize) -> Vec<String> {
    for _ in 0..count {
        pg.psql(&format!(
            "INSERT INTO t SELECT g, md5(random()::text) FROM generate_series(1, {rows}) g"
        ));
        pg.psql("SELECT pg_switch_wal()");
    }
    let waiting = ready(pg);
    assert!(waiting.len() >= count, "segments waiting: {waiting:?}");
    waiting
}

/// `lifeline ARGS` as archive_command runs it: as postgres, in the data directory, with the
/// scratch's repository; `env` added to a clean environment.
fn in_pgdata(scratch: &Scratch, pg: &Pg, args: &[&str], env: &[(&str, &str)]) -> Command {
    let meta = std::fs::metadata(&pg.data).expect("data");
    let mut cmd = Command::new(&scratch.bin);
    match &scratch.config {
        Some(config) => cmd.arg("--config").arg(config),
        None => cmd.arg("--backup-dir").arg(&scratch.repo),
    };
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TZ", "UTC")
        .envs(env.iter().copied())
        .current_dir(&pg.data)
        .uid(meta.uid())
        .gid(meta.gid());
    cmd
}

/// `wal push pg_wal/NAME`, as PostgreSQL runs it.
fn push(scratch: &Scratch, pg: &Pg, name: &str) -> Output {
    in_pgdata(
        scratch,
        pg,
        &["wal", "push", &format!("pg_wal/{name}")],
        &[],
    )
    .output()
    .expect("run wal push")
}

/// Nothing at WARN or ERROR in a push's output: the catalog and repository took it cleanly.
fn clean(out: &Output, what: &str) {
    assert_eq!(code(out), 0, "{what}: {}", text(out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("WARN") && !stderr.contains("ERROR"),
        "{what}:\n{stderr}"
    );
}

/// The archived copy of `name`, fetched as a restore would; `None` when it is not archived.
fn fetched(scratch: &Scratch, name: &str) -> Option<Vec<u8>> {
    let dest = scratch.path(&format!("fetched-{name}"));
    let out = scratch.lifeline(
        &["wal", "fetch", name, dest.to_str().expect("utf8")],
        &[("LIFELINE_WAL_PREFETCH", "0")],
    );
    assert!(
        matches!(code(&out), 0 | 1),
        "wal fetch {name}: {}",
        text(&out)
    );
    let bytes = (code(&out) == 0).then(|| std::fs::read(&dest).expect("fetched"));
    let _ = std::fs::remove_file(&dest);
    bytes
}

/// The processes running `bin` (a scratch's own copy, so this test's only).
fn running(bin: &Path) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| {
            let e = e.ok()?;
            let pid = e.file_name().to_str()?.parse().ok()?;
            (std::fs::read_link(e.path().join("exe")).ok()? == bin).then_some(pid)
        })
        .collect()
}

/// Wait until no lifeline of this scratch runs (look-ahead workers are detached).
fn wait_idle(bin: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !running(bin).is_empty() {
        assert!(
            Instant::now() < deadline,
            "lifeline still running after 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Temporary files of interrupted puts in a local repository.
fn temporary(repo: &Path) -> Vec<PathBuf> {
    files_under(repo)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(storage::leftovers::is_repository_temp)
        })
        .collect()
}

fn archiver_counts(pg: &Pg) -> (i64, i64, String) {
    let row = pg.psql(
        "SELECT archived_count || ',' || failed_count || ',' || coalesce(last_archived_wal, '') \
         FROM pg_stat_archiver",
    );
    let mut fields = row.split(',');
    let mut count = || fields.next().expect("field").to_string();
    let (archived, failed, last) = (count(), count(), count());
    (
        archived.parse().expect("count"),
        failed.parse().expect("count"),
        last,
    )
}

fn wait_for(what: &str, pg: &Pg, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "{what}; log:\n{}", pg.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `s` as one word of a shell command line, with `%` doubled for archive_command.
fn command_word(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''")).replace('%', "%%")
}

/// A string value in postgresql.conf: quoted, `'` doubled and `\` escaped.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', r"\\").replace('\'', "''"))
}

/// `lifeline [repository] wal push %p` for archive_command, every path quoted.
fn archive_command(scratch: &Scratch) -> String {
    let repository = match &scratch.config {
        Some(config) => format!("--config {}", command_word(&config.to_string_lossy())),
        None => format!(
            "--backup-dir {}",
            command_word(&scratch.repo.to_string_lossy())
        ),
    };
    format!(
        "{} {repository} wal push %p",
        command_word(&scratch.bin.to_string_lossy())
    )
}

/// Switch archive_command from `false` to `command`, wait until PostgreSQL has archived every
/// segment of `waiting`, and check: lifeline never failed, and each segment is fetched byte
/// for byte as it was in pg_wal. Returns how long the backlog took to drain.
fn drain(scratch: &Scratch, pg: &Pg, waiting: &[String], command: &str) -> Duration {
    let originals: Vec<blake3::Hash> = waiting
        .iter()
        .map(|name| {
            blake3::hash(&std::fs::read(pg.data.join("pg_wal").join(name)).expect("segment"))
        })
        .collect();
    assert_eq!(archiver_counts(pg).0, 0, "`false` archived something");
    append_conf(pg, &format!("archive_command = {}", conf_quote(command)));
    pg.psql("SELECT pg_reload_conf()");
    let started = Instant::now();
    // The first success is lifeline's (`false` never succeeds): the archiver runs it now.
    wait_for("lifeline never archived", pg, || archiver_counts(pg).0 > 0);
    let failed_then = archiver_counts(pg).1;
    let last = waiting.last().expect("a backlog");
    wait_for(&format!("{last} never archived"), pg, || {
        archiver_counts(pg).2.as_str() >= last.as_str()
    });
    let took = started.elapsed();
    wait_idle(&scratch.bin);
    assert_eq!(
        archiver_counts(pg).1,
        failed_then,
        "archiving failed after the switch:\n{}",
        pg.log()
    );
    // Nor before its first success: only `false` ever failed.
    let log = pg.log();
    for line in log.lines() {
        if let Some(failed) = line.split("The failed archive command was: ").nth(1) {
            assert_eq!(failed, "false", "lifeline failed:\n{log}");
        }
    }
    for (name, original) in waiting.iter().zip(originals) {
        let archived = fetched(scratch, name).unwrap_or_else(|| panic!("{name} not archived"));
        assert!(
            blake3::hash(&archived) == original,
            "{name} archived with other bytes"
        );
    }
    took
}

/// The look-ahead stored segments ahead of PostgreSQL's own push of them.
fn confirmed_ahead(pg: &Pg) -> bool {
    pg.log()
        .contains("already archived with identical contents")
}

/// A look-ahead worker for the segments after `current`, as `wal push` starts it (detached, in
/// its own process group), killed with -9 once `busy` says it is storing; whether it died of
/// that signal, busy, rather than ending of its own accord first.
fn kill_once_busy(
    scratch: &Scratch,
    pg: &Pg,
    current: &str,
    mut busy: impl FnMut() -> bool,
) -> bool {
    let mut worker = in_pgdata(
        scratch,
        pg,
        &["wal", "push", "--ahead", &format!("pg_wal/{current}")],
        &[("LIFELINE_WAL_PUSH_AHEAD", "64")],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .process_group(0)
    .spawn()
    .expect("start a worker");
    let group =
        rustix::process::Pid::from_raw(i32::try_from(worker.id()).expect("pid")).expect("pid");
    let deadline = Instant::now() + Duration::from_secs(30);
    let was_busy = loop {
        if busy() {
            break true;
        }
        if worker.try_wait().expect("wait").is_some() {
            break false;
        }
        assert!(
            Instant::now() < deadline,
            "the worker neither stored nor ended"
        );
        std::thread::yield_now();
    };
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    let status = worker.wait().expect("reap");
    was_busy && std::os::unix::process::ExitStatusExt::signal(&status) == Some(9)
}

/// PostgreSQL's own `wal push` of each of `waiting` succeeds cleanly, each segment then reads
/// back byte for byte, and every stored object re-reads whole.
fn push_all_exactly(scratch: &Scratch, pg: &Pg, waiting: &[String]) {
    for name in waiting {
        clean(&push(scratch, pg, name), &format!("wal push {name}"));
    }
    wait_idle(&scratch.bin);
    for name in waiting {
        let original = std::fs::read(pg.data.join("pg_wal").join(name)).expect("segment");
        assert!(
            fetched(scratch, name) == Some(original),
            "{name} not archived exactly"
        );
    }
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    assert_eq!(code(&out), 0, "verify: {}", text(&out));
}

#[test]
fn a_worker_killed_mid_upload_leaves_nothing_that_looks_archived() {
    let scratch = Scratch::new();
    let pg = held_back(&scratch, "primary");
    let waiting = backlog(&pg, 14, 30_000);

    // Workers as `wal push` starts them (detached, their own process group), each killed with
    // -9 the moment a new temporary file shows it writing an object.
    let mut killed_mid_write = 0;
    let mut seen = std::collections::BTreeSet::new();
    for current in &waiting[..6] {
        let writing = |seen: &std::collections::BTreeSet<PathBuf>| {
            temporary(&scratch.repo).iter().any(|t| !seen.contains(t))
        };
        if kill_once_busy(&scratch, &pg, current, || writing(&seen)) {
            killed_mid_write += 1;
        }
        seen.extend(temporary(&scratch.repo));
    }
    assert!(
        killed_mid_write > 0,
        "no worker was killed while writing: this test proved nothing"
    );
    assert!(running(&scratch.bin).is_empty(), "a worker survived -9");

    // PostgreSQL's own pushes (each starting workers of its own) all succeed, every segment
    // reads back exactly; what the kills left are temporary files only, each one prune removes
    // (past its grace period, here none).
    push_all_exactly(&scratch, &pg, &waiting);
    let left = temporary(&scratch.repo);
    let out = scratch.lifeline(&["prune", "--dry-run"], &[("LIFELINE_PRUNE_GRACE", "0")]);
    assert_eq!(code(&out), 0, "prune --dry-run: {}", text(&out));
    for temp in &left {
        assert!(
            text(&out).contains(&format!("{} (", temp.display())),
            "prune would leave {}: {}",
            temp.display(),
            text(&out)
        );
    }
}

#[test]
fn a_worker_killed_mid_run_on_s3_loses_nothing() {
    let s3 = MotoServer::start();
    s3.create_bucket("ahead");
    let scratch = Scratch::with_s3(&s3.endpoint(), "ahead/prod");
    let pg = held_back(&scratch, "primary");
    let waiting = backlog(&pg, 12, 30_000);
    let archived = || s3.keys("ahead", "prod/wal/").len();

    // Workers as `wal push` starts them, each killed with -9 once it has stored a segment: an
    // upload in flight is cut off, or the next one not started.
    let mut killed_mid_run = 0;
    for current in &waiting[..4] {
        let before = archived();
        if kill_once_busy(&scratch, &pg, current, || archived() > before) {
            killed_mid_run += 1;
        }
    }
    assert!(
        killed_mid_run > 0,
        "no worker was killed with segments left to store: this test proved nothing"
    );
    assert!(running(&scratch.bin).is_empty(), "a worker survived -9");

    // PostgreSQL's own pushes: every one succeeds, and every segment reads back exactly.
    push_all_exactly(&scratch, &pg, &waiting);
}

#[test]
fn a_low_open_file_limit_slows_nothing_down_and_loses_nothing() {
    let scratch = Scratch::new();
    let pg = held_back(&scratch, "primary");
    let waiting = backlog(&pg, 10, 2_000);
    // The push and the worker it starts (which inherits the limit) have 32 descriptors.
    let command = format!("ulimit -n 32 && exec {}", archive_command(&scratch));
    let took = drain(&scratch, &pg, &waiting, &command);
    assert!(took < Duration::from_secs(45), "draining took {took:?}");
}

#[test]
fn paths_that_need_quoting_archive_with_look_ahead() {
    let mut scratch = Scratch::new();
    let odd = "it's 100% a\\b c";
    let pg = {
        // The data directory: Pg::init writes no path of its own into postgresql.conf.
        let pg = Pg::init(&scratch, &format!("data {odd}"));
        append_conf(&pg, "archive_command = 'false'");
        pg.start();
        pg.psql("CREATE TABLE t (id int, payload text)");
        pg
    };
    // The repository, and the binary (which look-ahead starts again) beside it.
    let place = scratch.path(odd);
    std::fs::create_dir_all(place.join("repo")).expect("mkdir");
    std::fs::hard_link(&scratch.bin, place.join("lifeline")).expect("link the binary");
    common::chown_postgres(&place);
    scratch.repo = place.join("repo");
    scratch.bin = place.join("lifeline");
    let waiting = backlog(&pg, 8, 2_000);
    drain(&scratch, &pg, &waiting, &archive_command(&scratch));
    assert!(confirmed_ahead(&pg), "no look-ahead:\n{}", pg.log());
    assert!(
        scratch.repo.join("catalog.db").exists(),
        "the repository is not where archive_command names it"
    );
}

#[test]
fn an_encrypted_repository_drains_a_backlog_with_look_ahead() {
    let scratch = Scratch::new().encrypted("correct horse battery staple");
    let pg = held_back(&scratch, "primary");
    let waiting = backlog(&pg, 10, 2_000);
    drain(&scratch, &pg, &waiting, &archive_command(&scratch));
    assert!(confirmed_ahead(&pg), "no look-ahead:\n{}", pg.log());
    assert!(scratch.repo.join("keys.json").exists(), "not encrypted");
}

#[test]
fn an_s3_repository_drains_a_backlog_with_look_ahead() {
    let s3 = MotoServer::start();
    s3.create_bucket("ahead");
    let scratch = Scratch::with_s3(&s3.endpoint(), "ahead/prod");
    let pg = held_back(&scratch, "primary");
    let waiting = backlog(&pg, 10, 2_000);
    drain(&scratch, &pg, &waiting, &archive_command(&scratch));
    assert!(confirmed_ahead(&pg), "no look-ahead:\n{}", pg.log());
}

#[test]
fn two_pushes_at_once_run_one_worker_at_a_time() {
    let scratch = Scratch::new();
    let pg = held_back(&scratch, "primary");
    let waiting = backlog(&pg, 16, 2_000);
    let both = |a: &str, b: &str| {
        let spawn = |name: &str| {
            in_pgdata(
                &scratch,
                &pg,
                &["wal", "push", &format!("pg_wal/{name}")],
                &[],
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run wal push")
        };
        let (first, second) = (spawn(a), spawn(b));
        for (name, child) in [(a, first), (b, second)] {
            let out = child.wait_with_output().expect("wait");
            clean(&out, &format!("wal push {name} beside another"));
        }
        wait_idle(&scratch.bin);
    };

    // While a worker holds the look-ahead lock, the workers both pushes start store nothing.
    // (The repository is new: the two also race to bind it to the cluster and make the
    // catalog.)
    let lock = scratch.repo.join("catalog.db-push-ahead.lock");
    std::fs::File::create(&lock).expect("create the lock");
    common::chown_postgres(&lock);
    let held = std::fs::File::open(&lock).expect("open the lock");
    held.lock().expect("lock");
    both(&waiting[0], &waiting[1]);
    for name in &waiting[2..] {
        assert!(
            fetched(&scratch, name).is_none(),
            "{name} stored while another worker held the lock"
        );
    }
    held.unlock().expect("unlock");

    // Without it, both start one: the one that takes the lock stores the 8 segments after
    // its push's next one (waiting[4..12] or waiting[5..13]); the other finds them stored or
    // the lock taken. Whatever is stored is stored exactly, and nothing past both limits.
    both(&waiting[2], &waiting[3]);
    for (i, name) in waiting.iter().enumerate() {
        let original = std::fs::read(pg.data.join("pg_wal").join(name)).expect("segment");
        match fetched(&scratch, name) {
            Some(archived) => {
                assert!(i <= 12, "{name} (waiting[{i}]) stored past the limit");
                assert!(archived == original, "{name} not archived exactly");
            }
            None => assert!(i == 4 || i >= 12, "{name} (waiting[{i}]) not archived"),
        }
    }
    assert!(temporary(&scratch.repo).is_empty(), "temporary files left");
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    assert_eq!(code(&out), 0, "verify: {}", text(&out));
}

#[test]
fn the_worker_stores_as_archive_command_says() {
    let scratch = Scratch::new();
    let pg = held_back(&scratch, "primary");
    let waiting = backlog(&pg, 8, 2_000);
    // A flag of archive_command's own, not a repository setting: the worker must honour it.
    let command = archive_command(&scratch).replace(" wal push", " --compression none wal push");
    drain(&scratch, &pg, &waiting, &command);
    assert!(confirmed_ahead(&pg), "no look-ahead:\n{}", pg.log());
    let stored = files_under(&scratch.repo.join("wal"));
    assert!(stored.len() >= waiting.len(), "{stored:?}");
    for object in stored {
        let size = std::fs::metadata(&object).expect("object").len();
        assert!(
            size >= 16 << 20,
            "{} is compressed ({size} bytes), not as archive_command says",
            object.display()
        );
    }
}
