//! Base backups read from a streaming standby: a real primary and replica, writes on the
//! primary while the backup runs, and a restore whose rows are the primary's at the target
//! time. The primary's data directory is named wrongly on purpose: a standby backup must never
//! read it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// A primary with the seed data and a streaming replica that has replayed everything on it.
fn primary_with_standby(scratch: &Scratch) -> (Pg, Pg) {
    let primary = Pg::running(scratch, "primary");
    seed(&primary);
    let standby = streaming_replica(scratch, &primary, "standby");
    wait_replayed(&primary, &standby);
    (primary, standby)
}

/// Wait until the standby has replayed everything the primary has written.
fn wait_replayed(primary: &Pg, standby: &Pg) {
    let target = primary.psql("SELECT pg_current_wal_lsn()");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let caught_up = standby.psql(&format!(
            "SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"
        ));
        if caught_up == "t" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the standby never replayed to {target}:\n{}",
            standby.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The configuration naming the standby, with `mode` for backup-standby.
fn standby_config(scratch: &Scratch, standby: &Pg, mode: &str, max_lag: &str) -> String {
    let path = scratch.path(&format!("standby-{mode}.toml"));
    let text = format!(
        "backup-standby = \"{mode}\"\nstandby-max-lag = \"{max_lag}\"\n\n[standby]\nhost = \"127.0.0.1\"\nport = {}\ndata-dir = \"{}\"\n",
        standby.port,
        standby.data.display()
    );
    std::fs::write(&path, text).expect("write config");
    chown_postgres(&path);
    path.to_string_lossy().into_owned()
}

/// The primary's environment, with a PGDATA that does not exist: only the standby's data
/// directory may be read.
fn env_without_primary_files(primary: &Pg, config: &str) -> Vec<(String, String)> {
    let mut env = primary.db_env();
    env.push(("PGDATA".into(), "/nonexistent/primary-pgdata".into()));
    env.push(("LIFELINE_CONFIG".into(), config.into()));
    env
}

fn listed_sources(scratch: &Scratch) -> Vec<(String, String)> {
    let out = scratch.lifeline(&["list", "--json"], &[]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json");
    list.as_array()
        .expect("an array")
        .iter()
        .map(|b| {
            (
                b["backup_id"].as_str().unwrap_or_default().to_string(),
                b["source"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Table by table; a difference names the table, the row counts and the first differing row.
fn assert_same_rows(got: &[(String, String)], expected: &[(String, String)], at: &str) {
    let tables = |s: &[(String, String)]| s.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>();
    assert_eq!(tables(got), tables(expected), "tables at {at}");
    for ((table, got), (_, want)) in got.iter().zip(expected) {
        let (got, want): (Vec<&str>, Vec<&str>) =
            (got.split(';').collect(), want.split(';').collect());
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        assert!(
            got == want,
            "{table} at {at}: {} rows restored, {} expected; first difference at row {first:?}: {:?} vs {:?}",
            got.len(),
            want.len(),
            first.map(|i| got[i]),
            first.map(|i| want[i]),
        );
    }
}

#[test]
fn a_backup_from_the_standby_under_load_restores_the_primarys_rows() {
    let scratch = Scratch::new();
    let (primary, standby) = primary_with_standby(&scratch);
    let config = standby_config(&scratch, &standby, "require", "2m");
    let env = env_without_primary_files(&primary, &config);

    // Writes on the primary for as long as the backup runs.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (writing, port) = (writing.clone(), primary.port);
        std::thread::spawn(move || {
            let mut n = 0;
            while writing.load(Ordering::SeqCst) {
                let sql = "INSERT INTO orders (account, amount) SELECT g % 5000 + 1, -g FROM generate_series(1, 200) g";
                let out = run_as_postgres(
                    &format!("{PG_BIN}/psql"),
                    &[
                        "-h",
                        "127.0.0.1",
                        "-p",
                        &port.to_string(),
                        "-U",
                        "postgres",
                        "-AtXc",
                        sql,
                    ],
                );
                assert!(out.status.success(), "load: {}", text(&out));
                n += 1;
            }
            n
        })
    };
    let out = scratch.lifeline(&["backup", "postgres"], &env_refs(&env));
    writing.store(false, Ordering::SeqCst);
    let batches = writer.join().expect("writer");
    let said = succeeded(&out, "backup from the standby");
    assert!(said.contains("from the standby"), "{said}");
    assert!(batches > 0, "no writes happened during the backup");
    let sources = listed_sources(&scratch);
    assert_eq!(sources.len(), 1, "{sources:?}");
    assert_eq!(sources[0].1, "standby");

    // A point after the backup: the primary's rows then are what the restore must show.
    primary.psql("INSERT INTO orders (account, amount) VALUES (1, 777)");
    let expected = primary.snapshot();
    std::thread::sleep(Duration::from_millis(1100));
    let target = server_second(&primary);
    std::thread::sleep(Duration::from_millis(1100));
    primary.psql("INSERT INTO orders (account, amount) VALUES (1, 888)");
    primary.switch_and_archive();

    let restored = scratch.restore_and_recover(
        &["--type", "pitr", "--until", &target],
        "restored",
        "restore of the standby backup",
    );
    assert_same_rows(&restored.snapshot(), &expected, &target);
    // It became a primary with the primary's configuration: nothing of the standby's.
    assert_eq!(restored.psql("SELECT pg_is_in_recovery()"), "f");
    assert!(!restored.data.join("standby.signal").exists());
    let auto = std::fs::read_to_string(restored.data.join("postgresql.auto.conf")).expect("read");
    assert!(!auto.contains("primary_conninfo"), "{auto}");
    assert!(
        !auto.contains(&format!("port = {}", standby.port)),
        "{auto}"
    );
}

#[test]
fn a_standby_that_is_down_or_behind_is_refused_or_passed_over_as_configured() {
    let scratch = Scratch::new();
    let (primary, standby) = primary_with_standby(&scratch);

    // Replay paused: the standby cannot reach the backup's start within the allowed lag.
    standby.psql("SELECT pg_wal_replay_pause()");
    let require = standby_config(&scratch, &standby, "require", "2s");
    let mut env = env_without_primary_files(&primary, &require);
    let out = scratch.lifeline(&["backup", "postgres"], &env_refs(&env));
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("backup-standby = \"require\"") && text(&out).contains("replay"),
        "{}",
        text(&out)
    );
    assert!(
        listed_sources(&scratch).is_empty(),
        "a refused backup was recorded"
    );

    // prefer, run where PGDATA is the standby's own directory (lifeline on the standby's
    // host): falling back must not read the standby's files as the primary's.
    let prefer = standby_config(&scratch, &standby, "prefer", "2s");
    let mut here = primary.db_env();
    here.push(("LIFELINE_CONFIG".into(), prefer.clone()));
    here.push(("PGDATA".into(), standby.data.to_string_lossy().into_owned()));
    let out = scratch.lifeline(&["backup", "postgres"], &env_refs(&here));
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("standby.signal"), "{}", text(&out));
    assert!(
        listed_sources(&scratch).is_empty(),
        "a refused backup was recorded"
    );

    // prefer: the primary is read instead, with a warning.
    env = primary.db_env();
    env.push(("LIFELINE_CONFIG".into(), prefer.clone()));
    let out = scratch.lifeline(&["backup", "postgres"], &env_refs(&env));
    let said = succeeded(&out, "backup that passes over a lagging standby");
    assert!(said.contains("from the primary"), "{said}");
    assert!(said.contains("is not used"), "{said}");
    standby.psql("SELECT pg_wal_replay_resume()");

    // Down: --from-standby fails; prefer falls back.
    standby.stop();
    let out = scratch.lifeline(&["backup", "postgres", "--from-standby"], &env_refs(&env));
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("does not answer"), "{}", text(&out));
    let out = scratch.lifeline(&["backup", "postgres"], &env_refs(&env));
    succeeded(&out, "backup with the standby down");
    let sources: Vec<String> = listed_sources(&scratch).into_iter().map(|s| s.1).collect();
    assert_eq!(sources, ["primary", "primary"]);

    // The primary down: a standby cannot start and end a backup alone; said, with the way out.
    standby.start();
    primary.stop();
    let out = scratch.lifeline(&["backup", "postgres", "--from-standby"], &env_refs(&env));
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("the primary does not answer"),
        "{}",
        text(&out)
    );
}
