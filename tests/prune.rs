//! Pruning to the retention policy against a real repository: the plan first, then deletions
//! that leave every kept backup restorable and the repository clean.

mod common;

use std::time::Duration;

use common::{Pg, Scratch, backup, seed, server_second, text};

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

#[test]
fn prune_keeps_the_policy_and_leaves_the_rest_restorable() {
    let scratch = Scratch::new();
    let config = scratch.path("retention.toml");
    std::fs::write(
        &config,
        "keep-daily = 1\nkeep-weekly = 1\nkeep-monthly = 1\nwal-days = 0\n",
    )
    .expect("config");
    let config_arg = config.to_string_lossy().into_owned();
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
    assert!(out.status.success(), "dry run failed: {}", text(&out));
    assert_eq!(text(&out).matches(" delete ").count(), 2, "{}", text(&out));
    assert!(text(&out).contains("daily "), "{}", text(&out));
    assert_eq!(
        keys(&scratch.repo),
        before,
        "a dry run changed the repository"
    );

    let out = scratch.lifeline(&["prune"], &env);
    assert!(out.status.success(), "prune failed: {}", text(&out));
    assert!(text(&out).contains("pruned: 2 backups"), "{}", text(&out));
    assert!(keys(&scratch.repo).len() < before.len());
    let out = scratch.lifeline(&["list", "--json"], &[]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    assert_eq!(list[0]["retention"], "12_months", "{list}");

    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    assert!(out.status.success(), "verify after prune: {}", text(&out));
    let out = scratch.lifeline(&["prune"], &env);
    assert!(
        text(&out).contains("pruned: 0 backups, 0 WAL files, 0 packs"),
        "{}",
        text(&out)
    );

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
        status["last_backups"]["postgresql base"]["retention"], "12_months",
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
    assert!(out.status.success(), "PITR after prune: {}", text(&out));
    let restored = Pg::recover(&scratch, dir);
    assert_eq!(restored.snapshot(), expected);
}
