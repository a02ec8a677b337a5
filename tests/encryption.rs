//! Encrypted repositories against real PostgreSQL clusters (and the S3-compatible server): what
//! is stored reveals nothing, restores give back every row, and a missing or wrong passphrase
//! is refused with the fix before anything is read or written.

mod common;

use common::files_under;

use std::path::Path;
use std::time::Duration;

use common::{Pg, Scratch, backup, code, seed, server_second, succeeded, text};
use storage::conformance::MotoServer;

const PASSPHRASE: &str = "correct horse battery staple";
const MARKER: &str = "MARKER-7f3a9c-the-rows-an-attacker-wants";

/// Add `line` to the scratch's configuration file, creating one naming its repository.
fn configure(mut scratch: Scratch, line: &str) -> Scratch {
    use std::os::unix::fs::PermissionsExt;
    let config = scratch
        .config
        .clone()
        .unwrap_or_else(|| scratch.path("lifeline.toml"));
    let mut text = std::fs::read_to_string(&config)
        .unwrap_or_else(|_| format!("backup-dir = \"{}\"\n", scratch.repo.display()));
    text.push_str(line);
    text.push('\n');
    std::fs::write(&config, text).expect("write config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    common::chown_postgres(&config);
    scratch.config = Some(config);
    scratch
}

/// The repository's objects (not the catalog, logs and status files kept beside them).
fn repository_objects(repo: &Path) -> Vec<std::path::PathBuf> {
    let mut objects: Vec<_> = files_under(repo)
        .into_iter()
        .filter(|p| {
            let relative = p.strip_prefix(repo).expect("under the repository");
            [
                "wal",
                "backups",
                "packs",
                "leases",
                "prune",
                "cluster.json",
                "keys.json",
            ]
            .iter()
            .any(|top| relative.starts_with(top))
        })
        .collect();
    objects.sort();
    objects
}

fn files_holding(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            std::fs::read(p)
                .map(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Rows with the marker, a backup, WAL after it: everything a repository holds.
fn fill(scratch: &Scratch, pg: &Pg) {
    seed(pg);
    pg.psql(&format!(
        "CREATE TABLE secrets AS SELECT g AS id, '{MARKER}' || g AS note FROM generate_series(1, 200) g"
    ));
    backup(scratch, pg);
    pg.psql(&format!(
        "INSERT INTO secrets VALUES (1000, '{MARKER} after')"
    ));
    pg.switch_and_archive();
}

#[test]
fn a_marker_is_stored_in_clear_without_a_passphrase_and_nowhere_with_one() {
    let plain = configure(Scratch::new(), "compression = \"none\"");
    let pg = Pg::running(&plain, "plain");
    fill(&plain, &pg);
    drop(pg);
    assert!(
        !files_holding(&plain.repo, MARKER.as_bytes()).is_empty(),
        "the marker must be readable in an unencrypted, uncompressed repository (or this test proves nothing)"
    );

    let sealed = configure(
        Scratch::new().encrypted(PASSPHRASE),
        "compression = \"none\"",
    );
    let pg = Pg::running(&sealed, "sealed");
    fill(&sealed, &pg);
    assert!(
        sealed.repo.join("keys.json").exists(),
        "the first write made the repository encrypted"
    );
    let found = files_holding(&sealed.repo, MARKER.as_bytes());
    assert!(found.is_empty(), "the marker is readable in {found:?}");
    // Nor the passphrase, anywhere lifeline wrote.
    let found = files_holding(&sealed.repo, PASSPHRASE.as_bytes());
    assert!(found.is_empty(), "the passphrase is stored in {found:?}");
    let listed = sealed.lifeline(&["list", "--json"], &[]);
    assert!(listed.status.success(), "{}", text(&listed));
    // .metadata is sealed too, and still readable through lifeline.
    let metadata: Vec<_> = files_under(&sealed.repo.join("backups"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "metadata"))
        .collect();
    assert_eq!(metadata.len(), 1, "{metadata:?}");
    let bytes = std::fs::read(&metadata[0]).expect("read metadata");
    assert!(bytes.starts_with(b"LLOE"), ".metadata is not sealed");
}

#[test]
fn pitr_full_restore_rebuild_and_verify_in_an_encrypted_local_repository() {
    let scratch = Scratch::new().encrypted(PASSPHRASE);
    let out = scratch.lifeline(&["repo", "init"], &[]);
    assert!(out.status.success(), "repo init: {}", text(&out));
    let again = scratch.lifeline(&["repo", "init"], &[]);
    assert!(
        !again.status.success() && text(&again).contains("already encrypted"),
        "{}",
        text(&again)
    );
    pitr_round_trip(&scratch);

    std::fs::remove_file(scratch.repo.join("catalog.db")).expect("remove catalog");
    let out = scratch.lifeline(&["catalog", "rebuild"], &[]);
    assert!(
        out.status.success() && text(&out).contains("1 backups"),
        "rebuild: {}",
        text(&out)
    );
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    assert!(out.status.success(), "verify: {}", text(&out));
}

#[test]
fn pitr_in_an_encrypted_s3_repository() {
    let s3 = MotoServer::start();
    s3.create_bucket("sealed");
    let scratch = Scratch::with_s3(&s3.endpoint(), "sealed/prod").encrypted(PASSPHRASE);
    pitr_round_trip(&scratch);
}

/// Backup, writes, a target second, a disaster; the restore to the target has every row.
fn pitr_round_trip(scratch: &Scratch) {
    let pg = Pg::running(scratch, "primary");
    seed(&pg);
    backup(scratch, &pg);
    pg.psql("UPDATE accounts SET balance = balance + 1 WHERE id % 7 = 0");
    pg.switch_and_archive();
    pg.psql("INSERT INTO accounts VALUES (9001, 'late', 1)");
    std::thread::sleep(Duration::from_millis(1100));
    let expected = pg.snapshot();
    let target = server_second(&pg);
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("DELETE FROM accounts WHERE id > 100");
    pg.psql("DROP TABLE orders");
    pg.switch_and_archive();

    let restored =
        scratch.restore_and_recover(&["--type", "pitr", "--until", &target], "pitr", "PITR");
    assert_eq!(
        restored.snapshot(),
        expected,
        "rows after an encrypted PITR differ"
    );
    drop(restored);
    // Planned a few writes at a time, the restore reads the manifest's block lists again into
    // its target: through the encrypted repository, local and S3.
    let dir = scratch.path("full");
    let logged = [
        ("LIFELINE_RESTORE_PLAN_WINDOW", "5"),
        ("LIFELINE_LOG", "debug"),
    ];
    let out = scratch.restore_with(&["--type", "full"], &dir, &logged);
    succeeded(&out, "full restore");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("its block lists kept on disk"), "{log}");
    let full = Pg::recover(scratch, dir);
    assert!(
        full.psql("SELECT count(*) FROM accounts")
            .parse::<u32>()
            .expect("count")
            >= 5000
    );
}

#[test]
fn a_missing_or_wrong_passphrase_is_refused_before_anything_is_read_or_written() {
    let scratch = Scratch::new().encrypted(PASSPHRASE);
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    backup(&scratch, &pg);
    pg.switch_and_archive();
    let segment = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("CREATE TABLE more AS SELECT g FROM generate_series(1, 1000) g");
    let wal_file = pg.data.join("pg_wal").join(&segment);
    let db_env = pg.db_env();
    let env = common::env_refs(&db_env);

    let wrong = scratch.path("wrong");
    std::fs::write(&wrong, "not the passphrase\n").expect("write");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    common::chown_postgres(&wrong);
    let wrong_flag = wrong.to_string_lossy().into_owned();
    // The server archives on its own (the backup's history file): wait until it is idle.
    let status = pg.data.join("pg_wal/archive_status");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::fs::read_dir(&status)
        .expect("archive_status")
        .flatten()
        .any(|e| e.file_name().to_string_lossy().ends_with(".ready"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the archiver never caught up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = repository_objects(&scratch.repo);
    let backup_dir = scratch.repo.to_string_lossy().into_owned();
    let wal = wal_file.to_string_lossy().into_owned();
    let target = scratch.path("refused-restore");
    let target_arg = target.to_string_lossy().into_owned();
    // No configuration at all: only BACKUP_DIR, as a hand-typed command would have.
    let bare = |args: &[&str], extra: &[(&str, &str)]| {
        let mut all = vec![("BACKUP_DIR", backup_dir.as_str())];
        all.extend_from_slice(extra);
        common::lifeline_as_postgres(&scratch.bin, args, &all)
    };
    let commands: Vec<(&str, Vec<&str>)> = vec![
        ("wal push", vec!["wal", "push", &wal]),
        ("backup", vec!["backup", "postgres"]),
        (
            "wal fetch",
            vec!["wal", "fetch", &segment, "/tmp/never-written"],
        ),
        (
            "restore",
            vec![
                "restore",
                "postgres",
                "--type",
                "full",
                "--data-dir",
                &target_arg,
            ],
        ),
    ];
    for (what, args) in &commands {
        let mut with_env = env.clone();
        let missing = bare(args, &with_env);
        assert!(
            !missing.status.success(),
            "{what} without a passphrase succeeded"
        );
        assert!(
            text(&missing).contains("encrypted and no passphrase is configured"),
            "{what} without a passphrase: {}",
            text(&missing)
        );
        with_env.push(("LIFELINE_PASSPHRASE_FILE", wrong_flag.as_str()));
        let wrong = bare(args, &with_env);
        assert!(
            !wrong.status.success(),
            "{what} with a wrong passphrase succeeded"
        );
        let said = text(&wrong);
        assert!(
            said.contains("wrong passphrase"),
            "{what} with a wrong passphrase: {said}"
        );
        assert!(
            !said.contains("corrupt"),
            "{what}: a wrong passphrase reads as corruption: {said}"
        );
        assert!(
            !said.contains("not the passphrase"),
            "{what} printed the passphrase: {said}"
        );
    }
    // wal push exits 1 (PostgreSQL retries), wal fetch above 125 (recovery stops).
    assert_eq!(code(&bare(&commands[0].1, &env)), 1);
    assert!(code(&bare(&commands[2].1, &env)) > 125);
    assert_eq!(
        repository_objects(&scratch.repo),
        before,
        "a refused command wrote into the repository"
    );
    assert!(!target.exists(), "a refused restore created its target");

    // A passphrase for an unencrypted repository is refused too.
    let plain = Scratch::new();
    let plain_dir = plain.repo.to_string_lossy().into_owned();
    let pg2 = Pg::running(&plain, "plain");
    pg2.switch_and_archive();
    let out = common::lifeline_as_postgres(
        &plain.bin,
        &["verify"],
        &[
            ("BACKUP_DIR", plain_dir.as_str()),
            ("LIFELINE_PASSPHRASE", PASSPHRASE),
        ],
    );
    assert!(
        !out.status.success() && text(&out).contains("not encrypted"),
        "a passphrase for a plain repository: {}",
        text(&out)
    );
}

#[test]
fn dumps_and_redis_snapshots_stream_through_an_encrypted_repository() {
    let scratch = Scratch::new().encrypted(PASSPHRASE);
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    let db_env = pg.db_env();
    let env = common::env_refs(&db_env);
    let out = scratch.lifeline(&["backup", "postgres", "--kind", "dump"], &env);
    assert!(out.status.success(), "dump: {}", text(&out));
    let at_dump = pg.snapshot();
    let out = scratch.lifeline(
        &[
            "restore", "postgres", "--type", "full", "--kind", "dump", "--target", "staging",
        ],
        &env,
    );
    assert!(out.status.success(), "dump restore: {}", text(&out));
    assert_eq!(
        pg.snapshot_in("postgres_staging"),
        at_dump,
        "the staging copy differs"
    );

    let source_dir = tempfile::tempdir().expect("tempdir");
    let source = common::redis::Redis::start(source_dir.path(), None);
    source.cli(&["DEBUG", "POPULATE", "50000", "secret", "64"]);
    let port = source.port.to_string();
    let redis_env = [("REDIS_HOST", "127.0.0.1"), ("REDIS_PORT", port.as_str())];
    let out = scratch.lifeline(&["backup", "redis", "--kind", "rdb"], &redis_env);
    assert!(out.status.success(), "redis backup: {}", text(&out));
    let restored_dir = scratch.path("redis-restored");
    let out = scratch.restore_redis(&["--type", "rdb", "--from", "latest"], &restored_dir);
    assert!(out.status.success(), "redis restore: {}", text(&out));
    let restored = common::redis::Redis::start(&restored_dir, None);
    assert_eq!(
        restored.cli(&["DEBUG", "DIGEST"]),
        source.cli(&["DEBUG", "DIGEST"]),
        "the restored dataset differs"
    );
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    assert!(out.status.success(), "verify: {}", text(&out));
}
