//! An S3 repository end to end: real PostgreSQL 15 clusters archiving to and restoring from a
//! real S3-compatible server (moto_server on loopback).

mod common;

use common::files_under;

use std::process::Output;
use std::time::{Duration, Instant};

use common::{
    Outage, Pg, Scratch, TEST_SECRET, backup, code, lifeline_as_postgres, seed, server_second, text,
};
use storage::conformance::MotoServer;

fn no_secret(what: &str, haystack: &str) {
    assert!(
        !haystack.contains(TEST_SECRET),
        "the S3 secret key appears in {what}"
    );
}

#[test]
fn pitr_and_full_restore_from_the_bucket_alone() {
    let s3 = MotoServer::start();
    s3.create_bucket("dr-bucket");
    let scratch = Scratch::with_s3(&s3.endpoint(), "dr-bucket/prod");
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    let out = backup(&scratch, &pg);
    no_secret("the backup output", &out);
    let at_backup = pg.snapshot();

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
    // The repository is the bucket: the local directory holds the catalog and nothing else.
    assert!(!scratch.repo.join("packs").exists() && !scratch.repo.join("wal").exists());
    pg.stop();

    // The secondary site: an empty local directory, the same bucket, no catalog.
    let site = scratch.path("secondary-site");
    let config = scratch.path("secondary.toml");
    scratch.write_s3_config(&config, &site, &s3.endpoint(), "dr-bucket/prod");
    let config_env = config.to_string_lossy().into_owned();
    let secondary = |args: &[&str]| -> Output {
        lifeline_as_postgres(&scratch.bin, args, &[("LIFELINE_CONFIG", &config_env)])
    };
    let out = secondary(&["catalog", "rebuild"]);
    assert!(out.status.success(), "rebuild failed: {}", text(&out));
    assert!(text(&out).contains("1 backups"), "{}", text(&out));
    let out = secondary(&["verify", "--read-data"]);
    assert!(
        out.status.success(),
        "verify of the bucket failed: {}",
        text(&out)
    );

    let pitr_dir = scratch.path("pitr");
    let pitr_arg = pitr_dir.to_string_lossy().into_owned();
    let out = secondary(&[
        "restore",
        "postgres",
        "--type",
        "pitr",
        "--until",
        &target,
        "--data-dir",
        &pitr_arg,
    ]);
    assert!(out.status.success(), "PITR from S3 failed: {}", text(&out));
    no_secret("the restore output", &text(&out));
    let auto_conf =
        std::fs::read_to_string(pitr_dir.join("postgresql.auto.conf")).expect("auto conf");
    assert!(
        auto_conf.contains("--s3-bucket dr-bucket/prod"),
        "{auto_conf}"
    );
    no_secret("postgresql.auto.conf", &auto_conf);
    let restored = Pg::recover(&scratch, pitr_dir);
    assert_eq!(
        restored.snapshot(),
        expected,
        "rows after PITR from S3 differ from the rows at the target"
    );
    no_secret("the recovering server's log", &restored.log());
    restored.stop();

    let full_dir = scratch.path("full");
    let full_arg = full_dir.to_string_lossy().into_owned();
    let out = secondary(&[
        "restore",
        "postgres",
        "--type",
        "full",
        "--from",
        "latest",
        "--data-dir",
        &full_arg,
    ]);
    assert!(
        out.status.success(),
        "full restore from S3 failed: {}",
        text(&out)
    );
    let full = Pg::recover(&scratch, full_dir);
    assert_eq!(full.snapshot(), at_backup, "full restore from S3 differs");
    full.stop();

    for path in files_under(&site) {
        let bytes = std::fs::read(&path).unwrap_or_default();
        no_secret(
            &path.display().to_string(),
            &String::from_utf8_lossy(&bytes),
        );
    }
}

fn archiver_counts(pg: &Pg) -> (i64, i64) {
    let row = pg.psql("SELECT archived_count || ',' || failed_count FROM pg_stat_archiver");
    let (archived, failed) = row.split_once(',').expect("two counts");
    (
        archived.parse().expect("count"),
        failed.parse().expect("count"),
    )
}

fn wait_for(what: &str, pg: &Pg, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "{what}; log:\n{}", pg.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn archiving_through_an_outage_fails_cleanly_then_catches_up() {
    let s3 = MotoServer::start();
    s3.create_bucket("flaky");
    let outage = Outage::forward_to(s3.port);
    let scratch = Scratch::with_s3(&outage.endpoint(), "flaky");
    let pg = Pg::running(&scratch, "primary");
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    pg.switch_and_archive();
    let sysid = pg.psql("SELECT system_identifier FROM pg_control_system()");

    // A direct view of the bucket, not through the outage.
    let direct = scratch.path("direct.toml");
    scratch.write_s3_config(
        &direct,
        &scratch.path("direct-state"),
        &s3.endpoint(),
        "flaky",
    );
    let direct_env = direct.to_string_lossy().into_owned();
    let fetch = |segment: &str| -> Output {
        let dest = scratch.path("fetched").to_string_lossy().into_owned();
        lifeline_as_postgres(
            &scratch.bin,
            &["wal", "fetch", "--cluster", &sysid, segment, &dest],
            &[
                ("LIFELINE_CONFIG", &direct_env),
                ("LIFELINE_WAL_PREFETCH", "0"),
            ],
        )
    };

    outage.set_up(false);
    let (_, failed_before) = archiver_counts(&pg);
    pg.psql("INSERT INTO t VALUES (1001)");
    let segment = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.psql("SELECT pg_switch_wal()");
    wait_for(
        "archive_command never failed during the outage",
        &pg,
        || archiver_counts(&pg).1 > failed_before,
    );
    let log = pg.log();
    assert!(
        log.contains("gave up after") && log.contains(&segment),
        "the failure names the segment and the retries:\n{log}"
    );
    no_secret("the server log", &log);
    let out = fetch(&segment);
    assert_eq!(
        code(&out),
        1,
        "a failed push left something: {}",
        text(&out)
    );

    outage.set_up(true);
    pg.psql("INSERT INTO t VALUES (1002)");
    pg.psql("SELECT pg_switch_wal()");
    wait_for(
        "the segment was never archived after the outage",
        &pg,
        || pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") > segment,
    );
    let out = fetch(&segment);
    assert!(
        out.status.success(),
        "fetch after the outage: {}",
        text(&out)
    );
    let fetched = std::fs::metadata(scratch.path("fetched")).expect("fetched");
    assert_eq!(fetched.len(), 16 << 20);
}

#[test]
fn a_datacenter_failover_comes_back_from_the_bucket_alone() {
    let s3 = MotoServer::start();
    s3.create_bucket("dc-bucket");
    let scratch = Scratch::with_s3(&s3.endpoint(), "dc-bucket/prod");
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    backup(&scratch, &pg);
    pg.psql("INSERT INTO accounts VALUES (9002, 'after the backup', 1)");
    pg.switch_and_archive();
    let expected = pg.snapshot();
    pg.crash();

    // The secondary region: its own local directory (no catalog yet), data directory and port.
    let region = scratch.path("region-b");
    let config = scratch.path("region-b.toml");
    scratch.write_s3_config(&config, &region, &s3.endpoint(), "dc-bucket/prod");
    let data = scratch.path("region-b-data");
    let port = common::free_port();
    let env_file = scratch.path("app.env");
    std::fs::write(
        &env_file,
        format!(
            "DATABASE_URL=postgresql://app@127.0.0.1:{}/postgres\n",
            pg.port
        ),
    )
    .expect("env file");
    common::chown_postgres(&env_file);
    let mut text_config = std::fs::read_to_string(&config).expect("config");
    text_config.push_str(&format!(
        "pgdata = \"{}\"\n[failover]\nconnection-file = \"{}\"\npostgres-start-command = \"{}/pg_ctl -D {} -l {}.log -o '-p {port}' -W start\"\n",
        data.display(),
        env_file.display(),
        common::PG_BIN,
        data.display(),
        data.display()
    ));
    std::fs::write(&config, text_config).expect("config");
    let port_text = port.to_string();
    let region_dir = region.to_string_lossy().into_owned();
    let env = [
        ("BACKUP_DIR", region_dir.as_str()),
        ("LIFELINE_CONFIG", config.to_str().expect("utf8")),
        ("DB_HOST", "127.0.0.1"),
        ("DB_PORT", port_text.as_str()),
        ("DB_USER", "postgres"),
        ("DB_NAME", "postgres"),
    ];
    let out = scratch.lifeline(&["failover", "--incident", "datacenter_failure"], &env);
    let said = common::succeeded(&out, "datacenter_failure from S3");
    no_secret("the failover output", &said);
    assert!(said.contains("repository s3://dc-bucket/prod"), "{said}");
    assert!(said.contains("the repository holds 1 backups"), "{said}");
    let recovered = Pg {
        data: data.clone(),
        port,
        socket_dir: scratch.dir.path().to_path_buf(),
    };
    assert_eq!(
        recovered.snapshot(),
        expected,
        "the secondary region lacks committed rows"
    );
    assert_eq!(
        std::fs::read_to_string(&env_file).expect("env file"),
        format!("DATABASE_URL=postgresql://app@127.0.0.1:{port}/postgres\n")
    );
    for file in files_under(&region).into_iter().chain(files_under(&data)) {
        if let Ok(text) = std::fs::read_to_string(&file) {
            no_secret(&file.display().to_string(), &text);
        }
    }
}
