//! Backups that stay usable when the repository lost a pack, and dump restores that never cost
//! the database they replace: against real PostgreSQL 15.

mod common;

use std::path::{Path, PathBuf};

use common::{Pg, Scratch, backup, code, seed, text};

/// Every file under `dir`, sorted.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The backup ids in the repository, oldest first.
fn backup_ids(scratch: &Scratch) -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(scratch.repo.join("backups"))
        .expect("backups dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn a_backup_after_a_lost_pack_stores_its_chunks_again_and_restores() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    backup(&scratch, &pg);
    let first = backup_ids(&scratch);
    assert_eq!(first.len(), 1, "{first:?}");
    let first = first[0].clone();

    // Lose the biggest pack of that backup: table data the next backup would otherwise reuse.
    let lost = files_under(&scratch.repo.join("packs"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("the backup wrote packs");
    std::fs::remove_file(&lost).expect("remove pack");

    pg.psql("INSERT INTO accounts VALUES (9001, 'after the loss', 1)");
    let expected = pg.snapshot();
    backup(&scratch, &pg);
    let second = backup_ids(&scratch)
        .into_iter()
        .find(|id| *id != first)
        .expect("a second backup");

    let restored = scratch.restore_and_recover(
        &["--type", "full", "--from", "latest"],
        "restored",
        "restore of the backup taken after the loss",
    );
    assert_eq!(
        restored.snapshot(),
        expected,
        "the backup taken after a pack was lost does not restore the source's rows"
    );

    let out = scratch.lifeline(&["verify"], &[]);
    let said = text(&out);
    assert_ne!(code(&out), 0, "verify missed the lost pack: {said}");
    let damaged: Vec<&str> = said.lines().filter(|l| l.contains("[FAIL]")).collect();
    assert!(
        damaged.iter().any(|l| l.contains(&first)),
        "verify does not name the backup that lost a pack: {said}"
    );
    assert!(
        !damaged.iter().any(|l| l.contains(&second)),
        "verify names the backup taken after the loss as damaged: {said}"
    );
}

fn seed_app(pg: &Pg, db: &str) {
    pg.psql(&format!("CREATE DATABASE {db}"));
    pg.psql_in(
        db,
        "CREATE TABLE customers (id int PRIMARY KEY, name text, joined date)",
    );
    pg.psql_in(db, "INSERT INTO customers SELECT g, 'customer ' || g, date '2024-01-01' + g FROM generate_series(1, 20000) g");
}

fn env_for(pg: &Pg, db: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = pg.db_env();
    env.retain(|(k, _)| k != "DB_NAME");
    env.push(("DB_NAME".into(), db.into()));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn dump_restore(scratch: &Scratch, env: &[(String, String)], target: &str) -> std::process::Output {
    scratch.lifeline(
        &[
            "restore", "postgres", "--type", "full", "--kind", "dump", "--target", target,
        ],
        &common::env_refs(env),
    )
}

#[test]
fn a_staging_name_equal_to_production_is_refused() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    seed_app(&pg, "app");
    let env = env_for(&pg, "app", &[]);
    let out = scratch.lifeline(
        &["backup", "postgres", "--kind", "dump"],
        &common::env_refs(&env),
    );
    assert!(out.status.success(), "dump failed: {}", text(&out));
    pg.psql_in(
        "app",
        "UPDATE customers SET name = 'changed since the dump'",
    );
    let before = pg.snapshot_in("app");
    let backups_before = backup_ids(&scratch);

    let env = env_for(&pg, "app", &[("STAGING_DB_NAME", "app")]);
    let out = dump_restore(&scratch, &env, "staging");
    let said = text(&out);
    assert_ne!(
        code(&out),
        0,
        "a staging restore onto production ran: {said}"
    );
    assert!(
        said.contains("staging") && said.contains("app") && said.contains("STAGING_DB_NAME"),
        "the refusal names neither the databases nor the fix: {said}"
    );
    assert_eq!(
        pg.snapshot_in("app"),
        before,
        "the production database changed"
    );
    assert_eq!(
        backup_ids(&scratch),
        backups_before,
        "something was done before the refusal"
    );
}

#[test]
fn a_dump_with_a_corrupted_chunk_is_refused_before_dropdb() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    seed_app(&pg, "app");
    let env = env_for(&pg, "app", &[]);
    let out = scratch.lifeline(
        &["backup", "postgres", "--kind", "dump"],
        &common::env_refs(&env),
    );
    assert!(out.status.success(), "dump failed: {}", text(&out));
    pg.psql_in("app", "DELETE FROM customers WHERE id % 2 = 0");
    let before = pg.snapshot_in("app");

    // The dump is the only thing in the repository: every pack is the dump's. Damage the last
    // chunks of the biggest one (the trailer and index of a pack are small, so a third from the
    // end is chunk data), which a restore would only reach after dropping the database.
    let pack = files_under(&scratch.repo.join("packs"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("the dump wrote packs");
    let mut bytes = std::fs::read(&pack).expect("read pack");
    let at = bytes.len() * 2 / 3;
    for b in &mut bytes[at..at + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&pack, bytes).expect("write pack");

    for target in ["production", "staging"] {
        // Staging exists from an earlier restore, as it would.
        pg.psql("DROP DATABASE IF EXISTS app_staging");
        pg.psql("CREATE DATABASE app_staging");
        pg.psql_in("app_staging", "CREATE TABLE kept (id int)");
        pg.psql_in("app_staging", "INSERT INTO kept VALUES (1), (2)");
        let out = dump_restore(&scratch, &env, target);
        let said = text(&out);
        assert_ne!(
            code(&out),
            0,
            "a damaged dump restored into {target}: {said}"
        );
        assert!(
            said.contains("nothing was dropped"),
            "the refusal does not say the database is intact: {said}"
        );
        assert!(
            !said.contains("pre-restore dump of"),
            "a pre-restore dump ran before the check: {said}"
        );
        assert_eq!(
            pg.snapshot_in("app"),
            before,
            "production changed ({target})"
        );
        assert_eq!(
            pg.psql_in("app_staging", "SELECT count(*) FROM kept"),
            "2",
            "staging was dropped ({target})"
        );
    }
}

/// Each base backup's new bytes, oldest first, as `list --json` gives them.
fn base_backup_new_bytes(scratch: &Scratch) -> Vec<u64> {
    let out = scratch.lifeline(&["list", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let mut backups: Vec<(String, u64)> = list
        .as_array()
        .expect("array")
        .iter()
        .filter(|b| b["kind"] == "base")
        .map(|b| {
            let id = b["backup_id"].as_str().expect("id").to_string();
            (id, b["new_bytes"].as_u64().expect("new"))
        })
        .collect();
    backups.sort();
    backups.into_iter().map(|(_, new)| new).collect()
}

/// A second backup finds the blocks that did not change in the first one's chunks (the index of
/// them is built from its manifest, file by file, into a file of its own) and stores only the
/// rest; it restores the rows of its own moment, and the third one still builds on the second.
#[test]
fn a_second_backup_stores_only_what_changed_and_restores() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    pg.psql(
        "CREATE TABLE wide AS SELECT g AS id, repeat(md5(g::text), 8) AS payload \
         FROM generate_series(1, 60000) g",
    );
    // Nothing left for autovacuum to rewrite (hint bits, freezing) between the backups.
    pg.psql("VACUUM (FREEZE, ANALYZE)");
    pg.psql("CHECKPOINT");
    backup(&scratch, &pg);
    pg.psql("UPDATE accounts SET balance = balance + 1 WHERE id = 7");
    pg.psql("CHECKPOINT");
    backup(&scratch, &pg);
    pg.psql("INSERT INTO wide VALUES (60001, 'the third backup')");
    let expected = pg.snapshot();
    backup(&scratch, &pg);

    let new = base_backup_new_bytes(&scratch);
    assert_eq!(new.len(), 3, "{new:?}");
    assert!(
        new[0] > 2 << 20,
        "the first backup stored only {} bytes",
        new[0]
    );
    for later in &new[1..] {
        assert!(
            *later * 5 < new[0],
            "a backup after a small change stored {later} of the first's {} bytes",
            new[0]
        );
    }
    let restored = scratch.restore_and_recover(
        &["--type", "full", "--from", "latest"],
        "restored",
        "restore of the third backup",
    );
    assert_eq!(
        restored.snapshot(),
        expected,
        "the third backup does not restore the source's rows"
    );
}
