//! Redis: RDB snapshots over the replication protocol, and RDB backups and restores through
//! the command line, against real redis-server processes.

mod common;

use common::redis::{Redis, populate};
use common::{Scratch, code, succeeded, text};

fn round_trip(diskless: bool, password: Option<&str>) {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let source = Redis::start(source_dir.path(), password);
    populate(&source);
    source.cli(&[
        "CONFIG",
        "SET",
        "repl-diskless-sync",
        if diskless { "yes" } else { "no" },
    ]);
    source.cli(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]);

    let (mut reader, facts) = archiver::open_rdb(&source.options()).expect("snapshot");
    assert_eq!(facts.diskless, diskless);
    assert_eq!(facts.keys.get(&0), Some(&20005));
    assert_eq!(facts.keys.get(&3), Some(&1));
    let copy_dir = tempfile::tempdir().expect("tempdir");
    let mut file = std::fs::File::create(copy_dir.path().join("dump.rdb")).expect("create");
    std::io::copy(&mut reader, &mut file).expect("copy the snapshot");
    drop(file);

    let copy = Redis::start(copy_dir.path(), None);
    for db in ["0", "3"] {
        assert_eq!(
            copy.cli(&["-n", db, "DBSIZE"]),
            source.cli(&["-n", db, "DBSIZE"]),
            "db {db}"
        );
    }
    // DEBUG DIGEST covers every key, value and expiry of every database.
    assert_eq!(
        copy.cli(&["DEBUG", "DIGEST"]),
        source.cli(&["DEBUG", "DIGEST"])
    );
    assert_eq!(copy.cli(&["HGET", "session:1", "user"]), "ada");
}

#[test]
fn disk_based_snapshot_loads_into_another_server() {
    round_trip(false, None);
}

#[test]
fn diskless_snapshot_loads_into_another_server() {
    round_trip(true, None);
}

#[test]
fn a_password_protected_server() {
    round_trip(true, Some("s3cret-redis-pass"));
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = Redis::start(dir.path(), Some("s3cret-redis-pass"));
    let mut wrong = redis.options();
    wrong.password = Some("wrong".into());
    let err = archiver::open_rdb(&wrong)
        .err()
        .expect("wrong password refused");
    assert!(err.to_string().contains("REDIS_PASSWORD"), "{err}");
    assert!(!err.to_string().contains("wrong"), "{err}");
    wrong.password = None;
    let err = archiver::open_rdb(&wrong)
        .err()
        .expect("no password refused");
    assert!(err.to_string().contains("REDIS_PASSWORD"), "{err}");
}

fn new_bytes_of_backups(scratch: &Scratch) -> Vec<(u64, u64)> {
    let out = scratch.lifeline(&["list", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    list.as_array()
        .expect("array")
        .iter()
        .filter(|b| b["service"] == "redis")
        .map(|b| {
            // Versioned, and what does not apply to a snapshot is null, not a sentinel.
            assert_eq!(b["schema"], 1, "{b}");
            for absent in [
                "start_lsn",
                "stop_lsn",
                "start_wal",
                "timeline",
                "system_identifier",
            ] {
                assert!(b[absent].is_null(), "{absent} in {b}");
            }
            (
                b["size_bytes"].as_u64().expect("size"),
                b["new_bytes"].as_u64().expect("new"),
            )
        })
        .collect()
}

#[test]
fn rdb_backup_and_restore_through_the_repository() {
    let scratch = Scratch::new();
    let source_dir = tempfile::tempdir().expect("tempdir");
    let source = Redis::start(source_dir.path(), None);
    populate(&source);
    // Enough data for many chunks: a snapshot differs from the last only in its header and
    // its trailing checksum, so all chunks but the first and last are shared.
    source.cli(&["DEBUG", "POPULATE", "200000", "bulk", "100"]);
    let port = source.port.to_string();
    let env = [("REDIS_HOST", "127.0.0.1"), ("REDIS_PORT", port.as_str())];

    let out = scratch.lifeline(&["backup", "redis", "--kind", "rdb"], &env);
    assert!(out.status.success(), "backup failed: {}", text(&out));
    assert!(text(&out).contains("db0=220005 db3=1"), "{}", text(&out));
    // A second snapshot of the same data shares every chunk but the first and the last.
    let out = scratch.lifeline(&["backup", "redis"], &env);
    assert!(out.status.success(), "second backup failed: {}", text(&out));
    let sizes = new_bytes_of_backups(&scratch);
    assert_eq!(sizes.len(), 2);
    let (first_new, second_new) = (sizes[0].1, sizes[1].1);
    assert!(
        second_new * 4 < first_new,
        "the second snapshot of unchanged data stored {second_new} new bytes, the first {first_new}"
    );
    // Then values change; the restore must bring back the changed ones.
    source.cli(&[
        "EVAL",
        "for i = 0, 399 do redis.call('SET', 'key:' .. i * 50, 'changed ' .. i) end",
        "0",
    ]);
    let out = scratch.lifeline(&["backup", "redis"], &env);
    assert!(out.status.success(), "third backup failed: {}", text(&out));

    // The repository alone describes them: a lost catalog is rebuilt, and verify reads them.
    std::fs::remove_file(scratch.repo.join("catalog.db")).expect("remove catalog");
    let out = scratch.lifeline(&["catalog", "rebuild"], &[]);
    assert!(out.status.success(), "rebuild failed: {}", text(&out));
    assert!(text(&out).contains("3 backups"), "{}", text(&out));
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    assert!(out.status.success(), "verify failed: {}", text(&out));
    assert!(text(&out).contains("checked 3 backups"), "{}", text(&out));
    let out = scratch.lifeline(&["status"], &[]);
    assert!(
        text(&out).contains("last redis rdb backup"),
        "{}",
        text(&out)
    );

    let restored_dir = scratch.path("redis-restored");
    let arg = restored_dir.to_string_lossy().into_owned();
    let out = succeeded(
        &scratch.restore_redis(&["--type", "rdb", "--from", "latest"], &restored_dir),
        "restore",
    );
    assert!(
        out.contains("[PASS] a redis-server loaded the restored files with the recorded keys: db0=220005 db3=1"),
        "{out}"
    );
    let restored = Redis::start(&restored_dir, None);
    assert_eq!(
        restored.cli(&["DEBUG", "DIGEST"]),
        source.cli(&["DEBUG", "DIGEST"]),
        "the restored dataset differs from the one backed up"
    );
    assert_eq!(restored.cli(&["GET", "key:50"]), "changed 1");

    // Into the directory of a running Redis: refused, and nothing there changes.
    let before: Vec<_> = std::fs::read_dir(&restored_dir)
        .expect("dir")
        .flatten()
        .map(|e| (e.file_name(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect();
    // (The configured Redis is the one running there, as on a real host.)
    let restored_port = restored.port.to_string();
    let out = scratch.lifeline(
        &["restore", "redis", "--data-dir", &arg],
        &[("REDIS_PORT", restored_port.as_str())],
    );
    assert_ne!(
        code(&out),
        0,
        "restore into a running Redis's directory was accepted: {}",
        text(&out)
    );
    assert!(text(&out).contains("is running in"), "{}", text(&out));
    let after: Vec<_> = std::fs::read_dir(&restored_dir)
        .expect("dir")
        .flatten()
        .map(|e| (e.file_name(), e.metadata().map(|m| m.len()).unwrap_or(0)))
        .collect();
    assert_eq!(before, after, "the refused restore changed the directory");
    drop(restored);

    // With Redis stopped, the first backup restores over it; what was there is moved aside.
    let out = succeeded(
        &scratch.restore_redis(&["--from", &first_backup_id(&scratch)], &restored_dir),
        "restore",
    );
    assert!(out.contains("moved to"), "{out}");
    let first = Redis::start(&restored_dir, None);
    assert_eq!(first.cli(&["GET", "key:50"]), source_value_before_churn());
}

fn first_backup_id(scratch: &Scratch) -> String {
    let out = scratch.lifeline(&["list", "--json"], &[]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    list.as_array()
        .expect("array")
        .iter()
        .find(|b| b["service"] == "redis")
        .and_then(|b| b["backup_id"].as_str())
        .expect("a redis backup")
        .to_string()
}

/// What DEBUG POPULATE wrote for key:50 ("value:50" padded to 100 bytes is not it: POPULATE
/// with a size writes "value:<n>" followed by zero bytes up to the size).
fn source_value_before_churn() -> String {
    let scratch_dir = tempfile::tempdir().expect("tempdir");
    let fresh = Redis::start(scratch_dir.path(), None);
    fresh.cli(&["DEBUG", "POPULATE", "51", "key", "100"]);
    fresh.cli(&["GET", "key:50"])
}

#[test]
fn rdb_backup_of_a_password_protected_redis() {
    let scratch = Scratch::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Redis::start(dir.path(), Some("redis-test-password"));
    populate(&source);
    let port = source.port.to_string();
    let out = scratch.lifeline(
        &["backup", "redis"],
        &[
            ("REDIS_PORT", port.as_str()),
            ("REDIS_PASSWORD", "wrong-password"),
        ],
    );
    assert_ne!(code(&out), 0);
    assert!(text(&out).contains("REDIS_PASSWORD"), "{}", text(&out));
    assert!(!text(&out).contains("wrong-password"), "{}", text(&out));
    let out = scratch.lifeline(
        &["backup", "redis"],
        &[
            ("REDIS_PORT", port.as_str()),
            ("REDIS_PASSWORD", "redis-test-password"),
        ],
    );
    assert!(out.status.success(), "backup failed: {}", text(&out));
    assert!(!text(&out).contains("redis-test-password"));
}

/// Writes `SET seq:<n> <n>` for n = 0, 1, 2, ... on one connection until told to stop; returns
/// how many were acknowledged.
fn write_load(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
        let mut writer = stream;
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            write!(writer, "SET seq:{n} {n}\r\n").expect("write");
            let mut line = String::new();
            reader.read_line(&mut line).expect("reply");
            assert_eq!(line, "+OK\r\n");
            n += 1;
        }
        n
    })
}

#[test]
fn aof_backup_is_consistent_while_a_rewrite_runs_under_writes() {
    use std::os::unix::fs::PermissionsExt;
    let scratch = Scratch::new();
    let source_dir = tempfile::tempdir().expect("tempdir");
    // lifeline reads Redis's files (as another user, as on a real host).
    std::fs::set_permissions(source_dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let source = Redis::start_with(source_dir.path(), None, &["--appendonly", "yes"]);
    populate(&source);
    let port = source.port.to_string();
    let env = [("REDIS_PORT", port.as_str())];

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = write_load(source.port, stop.clone());
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Rewrites forced over and over while the backups copy.
    let rewrites = {
        let (stop, port) = (stop.clone(), source.port);
        std::thread::spawn(move || {
            let mut forced = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let out = std::process::Command::new("redis-cli")
                    .args(["-p", &port.to_string(), "BGREWRITEAOF"])
                    .output()
                    .expect("redis-cli");
                if String::from_utf8_lossy(&out.stdout).contains("started") {
                    forced += 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            forced
        })
    };
    for _ in 0..3 {
        let out = scratch.lifeline(&["backup", "redis", "--kind", "aof"], &env);
        assert!(out.status.success(), "AOF backup failed: {}", text(&out));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = load.join().expect("load");
    let forced = rewrites.join().expect("rewrites");
    assert!(forced >= 2, "only {forced} rewrites ran during the backups");
    assert!(
        written > 100,
        "the write load barely ran ({written} writes)"
    );

    let restored_dir = scratch.path("aof-restored");
    let out = succeeded(
        &scratch.restore_redis(&["--type", "aof", "--from", "latest"], &restored_dir),
        "AOF restore",
    );
    assert!(
        out.contains("[PASS] a redis-server loaded the restored AOF"),
        "{out}"
    );
    let restored = Redis::start_with(&restored_dir, None, &["--appendonly", "yes"]);
    // Not torn: the writes it holds are exactly the first `count` ones, each with its value,
    // and the data that was there before is all there.
    let count: u64 = restored
        .cli(&["EVAL", "return #redis.call('KEYS', 'seq:*')", "0"])
        .parse()
        .expect("count");
    assert!(count > 0 && count <= written, "{count} of {written} writes");
    eprintln!("restored {count} of {written} writes; {forced} rewrites forced");
    let consistent = restored.cli(&[
        "EVAL",
        "for i = 0, tonumber(ARGV[1]) - 1 do if redis.call('GET', 'seq:' .. i) ~= tostring(i) then return i end end return -1",
        "0",
        &count.to_string(),
    ]);
    assert_eq!(
        consistent, "-1",
        "write seq:{consistent} is missing or wrong among the first {count}"
    );
    for db in ["0", "3"] {
        let expected = if db == "0" { 20005 + count } else { 1 };
        assert_eq!(
            restored.cli(&["-n", db, "DBSIZE"]),
            expected.to_string(),
            "db {db}"
        );
    }
    assert_eq!(restored.cli(&["HGET", "session:1", "user"]), "ada");
}

#[test]
fn an_rdb_file_from_disk_restores_and_a_foreign_file_is_refused() {
    let scratch = Scratch::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let source = Redis::start(dir.path(), None);
    populate(&source);
    let file = scratch.path("old-backup.rdb");
    let file_arg = file.to_string_lossy().into_owned();
    source.cli(&["--rdb", &file_arg]);
    let restored_dir = scratch.path("from-file");
    let out = scratch.restore_redis(&["--type", "rdb", "--file", &file_arg], &restored_dir);
    assert!(
        out.status.success(),
        "restore from a file failed: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("[PASS] a redis-server loaded the restored file: keys db0=20005 db3=1"),
        "{}",
        text(&out)
    );
    let restored = Redis::start(&restored_dir, None);
    assert_eq!(
        restored.cli(&["DEBUG", "DIGEST"]),
        source.cli(&["DEBUG", "DIGEST"])
    );
    drop(restored);

    let foreign = scratch.path("notes.txt");
    std::fs::write(&foreign, b"not an rdb").expect("write");
    let foreign_arg = foreign.to_string_lossy().into_owned();
    let before = std::fs::read(restored_dir.join("dump.rdb")).expect("restored rdb");
    let out = scratch.restore_redis(&["--file", &foreign_arg], &restored_dir);
    assert_ne!(code(&out), 0);
    assert!(text(&out).contains("not an RDB file"), "{}", text(&out));
    assert_eq!(
        std::fs::read(restored_dir.join("dump.rdb")).expect("rdb"),
        before
    );
}
