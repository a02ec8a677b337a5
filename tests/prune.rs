//! Pruning to the retention policy against a real repository: the plan first, then deletions
//! that leave every kept backup restorable and the repository clean.

mod common;

use std::time::Duration;

use common::{Pg, Scratch, backup, seed, server_second, succeeded, text};

fn keys(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in walk(dir) {
        out.push(
            entry
                .strip_prefix(dir)
                .unwrap_or(&entry)
                .to_string_lossy()
                .into_owned(),
        );
    }
    out.sort();
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if !path.ends_with("catalog.db") && !path.to_string_lossy().contains("catalog.db-") {
            out.push(path);
        }
    }
    out
}

/// A configuration that keeps only the newest backup of each day, week and month, and no WAL
/// window: every backup of a test but the newest is outside it. Returns its path.
fn strict_retention(scratch: &Scratch) -> String {
    let config = scratch.path("retention.toml");
    std::fs::write(
        &config,
        "keep-daily = 1\nkeep-weekly = 1\nkeep-monthly = 1\nwal-days = 0\n",
    )
    .expect("config");
    config.to_string_lossy().into_owned()
}

#[test]
fn prune_keeps_the_policy_and_leaves_the_rest_restorable() {
    let scratch = Scratch::new();
    let config_arg = strict_retention(&scratch);
    let env = [
        ("LIFELINE_CONFIG", config_arg.as_str()),
        ("LIFELINE_PRUNE_GRACE_SECONDS", "0"),
    ];
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    for round in 0..3 {
        pg.psql(&format!(
            "INSERT INTO accounts VALUES ({}, 'round', 1)",
            10_000 + round
        ));
        pg.switch_and_archive();
        backup(&scratch, &pg);
    }
    pg.psql("INSERT INTO accounts VALUES (20000, 'after the last backup', 1)");
    std::thread::sleep(Duration::from_millis(1100));
    let expected = pg.snapshot();
    let target = server_second(&pg);
    std::thread::sleep(Duration::from_millis(1100));
    pg.psql("DELETE FROM accounts");
    pg.switch_and_archive();

    let before = keys(&scratch.repo);
    let out = scratch.lifeline(&["prune", "--dry-run"], &env);
    succeeded(&out, "dry run");
    assert_eq!(text(&out).matches(" delete ").count(), 2, "{}", text(&out));
    assert!(text(&out).contains("daily "), "{}", text(&out));
    assert_eq!(
        keys(&scratch.repo),
        before,
        "a dry run changed the repository"
    );

    // One prune at a time: a held lock refuses, nothing changes; a lock 7 h old is taken over.
    let lock = scratch.repo.join("prune/lock");
    std::fs::create_dir_all(lock.parent().expect("parent")).expect("mkdir");
    std::fs::write(&lock, "{\"host\":\"elsewhere\",\"pid\":1}").expect("lock");
    common::chown_postgres(&scratch.repo);
    let out = scratch.lifeline(&["prune"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("another prune holds prune/lock"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("elsewhere"), "{}", text(&out));
    let mut unchanged = before.clone();
    unchanged.push("prune/lock".into());
    unchanged.sort();
    // Its operation log records the refusal; the repository is unchanged.
    let mut now = keys(&scratch.repo);
    now.retain(|k| !k.starts_with("logs/prune_"));
    assert_eq!(now, unchanged, "a refused prune changed the repository");
    std::fs::File::options()
        .write(true)
        .open(&lock)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() - Duration::from_secs(7 * 3600)))
        .expect("age the lock");

    let out = scratch.lifeline(&["prune"], &env);
    succeeded(&out, "prune");
    assert!(text(&out).contains("pruned: 2 backups"), "{}", text(&out));
    assert!(!lock.exists(), "the prune did not release its lock");
    assert!(keys(&scratch.repo).len() < before.len());
    let out = scratch.lifeline(&["list", "--json"], &[]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    // The label names the configured window (keep-monthly = 1), not a fixed one.
    assert_eq!(list[0]["retention"], "1_month", "{list}");

    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    succeeded(&out, "verify after prune");
    // The packs the first prune found unreferenced go on the second (grace 0); then nothing.
    // So does the probe of a `check` killed before it removed it.
    let probe = scratch.repo.join("check/deadhost.4242");
    std::fs::create_dir_all(probe.parent().expect("parent")).expect("mkdir");
    std::fs::write(&probe, "lifeline check").expect("plant a probe");
    common::chown_postgres(&scratch.repo);
    let out = scratch.lifeline(&["prune"], &env);
    assert!(!probe.exists(), "a stale check probe survived prune");
    assert!(
        text(&out).contains("pruned: 0 backups, 0 WAL files, "),
        "{}",
        text(&out)
    );
    let out = scratch.lifeline(&["prune"], &env);
    assert!(
        text(&out).contains(
            "pruned: 0 backups, 0 WAL files, 0 packs deleted; 0 sparse packs repacked (0 MiB of live chunks copied); 0 unreferenced packs"
        ),
        "{}",
        text(&out)
    );
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    succeeded(&out, "verify after the sweep");

    // .backup_status says what happened last, failures included.
    let out = scratch.lifeline(
        &["backup", "postgres"],
        &[("DB_PORT", "1"), ("DB_HOST", "127.0.0.1")],
    );
    assert!(!out.status.success());
    let status: serde_json::Value = serde_json::from_slice(
        &std::fs::read(scratch.repo.join(".backup_status")).expect("status file"),
    )
    .expect("json");
    assert_eq!(
        status["last_runs"]["prune"]["outcome"], "success",
        "{status}"
    );
    assert_eq!(
        status["last_runs"]["verify"]["outcome"], "success",
        "{status}"
    );
    assert_eq!(
        status["last_runs"]["backup postgres base"]["outcome"], "failed",
        "{status}"
    );
    assert!(
        status["last_runs"]["backup postgres base"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("DB_PORT")),
        "{status}"
    );
    assert_eq!(
        status["last_backups"]["postgresql base"]["retention"], "1_month",
        "{status}"
    );
    assert!(status["last_archived_wal"]["name"].is_string(), "{status}");
    assert!(
        status["repository"]["bytes"]
            .as_u64()
            .is_some_and(|b| b > 0),
        "{status}"
    );

    // A point inside the window: still restorable, row for row.
    let dir = scratch.path("restored");
    let out = scratch.restore(&["--type", "pitr", "--until", &target], &dir);
    succeeded(&out, "PITR after prune");
    let restored = Pg::recover(&scratch, dir);
    assert_eq!(restored.snapshot(), expected);
}

#[test]
fn a_prune_during_a_backup_leaves_that_backup_restorable() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    backup(&scratch, &pg);
    // Hold archiving so that the next backup, its packs written, waits for its WAL.
    let hold = scratch.path("hold-archiving");
    let conf = pg.data.join("postgresql.auto.conf");
    std::fs::write(
        &conf,
        format!(
            "archive_command = 'test ! -f {} && {} {} wal push %p'\n",
            hold.display(),
            scratch.bin.display(),
            scratch.repository_args()
        ),
    )
    .expect("conf");
    pg.psql("SELECT pg_reload_conf()");
    std::fs::write(&hold, b"").expect("hold");
    pg.psql("UPDATE accounts SET balance = balance + 5 WHERE id % 2 = 0");
    let expected = pg.snapshot();

    let env: Vec<(String, String)> = pg.db_env();
    let running = {
        let bin = scratch.bin.clone();
        let repo = scratch.repo.to_string_lossy().into_owned();
        std::thread::spawn(move || {
            let mut all: Vec<(&str, &str)> = vec![("BACKUP_DIR", repo.as_str())];
            all.extend(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            common::lifeline_as_postgres(&bin, &["backup", "postgres"], &all)
        })
    };
    // Wait until the running backup has written its packs (more pack files than before).
    let packs = |dir: &std::path::Path| walk(&dir.join("packs")).len();
    let before = packs(&scratch.repo);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while packs(&scratch.repo) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup never wrote a pack"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    // Everything but the newest completed backup would go; the running one's packs must stay.
    let config_arg = strict_retention(&scratch);
    let out = scratch.lifeline(&["prune"], &[("LIFELINE_CONFIG", config_arg.as_str())]);
    succeeded(&out, "prune");

    std::fs::remove_file(&hold).expect("release archiving");
    pg.psql("SELECT pg_switch_wal()");
    let out = running.join().expect("backup thread");
    succeeded(&out, "the running backup");
    let restored = scratch.restore_and_recover(
        &["--type", "full", "--from", "latest"],
        "restored",
        "restore of the backup taken during prune",
    );
    assert_eq!(restored.snapshot(), expected);
}

#[test]
fn a_backup_being_restored_is_not_pruned() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    backup(&scratch, &pg);
    pg.psql("INSERT INTO accounts VALUES (30000, 'later', 1)");
    pg.switch_and_archive();
    backup(&scratch, &pg);
    let out = scratch.lifeline(&["list", "--json"], &[]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let older = list[0]["backup_id"].as_str().expect("id").to_string();

    let dir = scratch.path("restored");
    let out = scratch.restore(&["--type", "full", "--from", &older], &dir);
    succeeded(&out, "restore");
    let config_arg = strict_retention(&scratch);
    let env = [
        ("LIFELINE_CONFIG", config_arg.as_str()),
        ("LIFELINE_PRUNE_GRACE_SECONDS", "0"),
    ];
    let out = scratch.lifeline(&["prune"], &env);
    succeeded(&out, "prune");
    let line = text(&out)
        .lines()
        .find(|l| l.starts_with(&older))
        .map(str::to_string)
        .expect("the older backup is in the plan");
    assert!(
        line.contains("keep") && line.contains("in use by a restore"),
        "{line}"
    );
    assert!(text(&out).contains("pruned: 0 backups"), "{}", text(&out));
    // And the restore it protects still recovers.
    let restored = Pg::recover(&scratch, dir);
    assert_eq!(
        restored.psql("SELECT count(*) FROM accounts"),
        "5000",
        "the older backup's rows, without the later insert"
    );
}

/// Bytes under the repository's packs/.
fn pack_bytes(scratch: &Scratch) -> u64 {
    walk(&scratch.repo.join("packs"))
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum()
}

#[test]
fn packs_mostly_dead_are_repacked_and_the_rest_swept() {
    let scratch = Scratch::new();
    let config_arg = strict_retention(&scratch);
    let env = [
        ("LIFELINE_CONFIG", config_arg.as_str()),
        ("LIFELINE_PRUNE_GRACE_SECONDS", "0"),
    ];
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    pg.psql("CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS a, md5((g * 7)::text) AS b FROM generate_series(1, 150000) g");
    pg.switch_and_archive();
    backup(&scratch, &pg);
    // The big table is rewritten: the first backup's pack keeps only the small tables' chunks
    // live, a minority of its bytes.
    pg.psql("VACUUM FULL bulk");
    pg.psql("UPDATE bulk SET a = md5(a)");
    pg.psql("VACUUM FULL bulk");
    pg.switch_and_archive();
    backup(&scratch, &pg);
    let expected = pg.snapshot();
    let before = pack_bytes(&scratch);

    let out = scratch.lifeline(&["prune"], &env);
    succeeded(&out, "prune");
    let said = text(&out);
    assert!(said.contains("pruned: 1 backups"), "{said}");
    assert!(
        !said.contains(" 0 sparse packs repacked"),
        "nothing was repacked: {said}"
    );
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    succeeded(&out, "verify after repacking");

    let out = scratch.lifeline(&["prune"], &env);
    let said = text(&out);
    assert!(
        !said.contains(", 0 packs deleted"),
        "the old packs stayed: {said}"
    );
    let after = pack_bytes(&scratch);
    assert!(
        after < before * 3 / 4,
        "packs {before} -> {after} bytes: {said}"
    );
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    succeeded(&out, "verify after the sweep");

    let restored = scratch.restore_and_recover(
        &["--type", "full", "--from", "latest"],
        "restored",
        "restore after repacking",
    );
    assert_eq!(restored.snapshot(), expected);
}
