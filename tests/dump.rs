//! Logical dumps: backed up with pg_dump into the repository, restored with pg_restore into
//! staging or production, and the old platform's `.dump.gz` files restored too.

mod common;

use common::{Pg, Scratch, code, run_as_postgres, text};

fn seed(pg: &Pg, db: &str) {
    pg.psql(&format!("CREATE DATABASE {db}"));
    pg.psql_in(
        db,
        "CREATE TABLE customers (id int PRIMARY KEY, name text, joined date)",
    );
    pg.psql_in(db, "CREATE TABLE invoices (id serial PRIMARY KEY, customer int REFERENCES customers, total numeric)");
    pg.psql_in(db, "INSERT INTO customers SELECT g, 'customer ' || g, date '2024-01-01' + g FROM generate_series(1, 3000) g");
    pg.psql_in(db, "INSERT INTO invoices (customer, total) SELECT g % 3000 + 1, g * 1.5 FROM generate_series(1, 10000) g");
}

fn env_for(pg: &Pg, db: &str) -> Vec<(String, String)> {
    let mut env = pg.db_env();
    env.retain(|(k, _)| k != "DB_NAME");
    env.push(("DB_NAME".into(), db.into()));
    env
}

#[test]
fn dump_round_trips_into_staging_and_production() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    seed(&pg, "app");
    let env = env_for(&pg, "app");
    let env_refs = common::env_refs(&env);
    let out = scratch.lifeline(&["backup", "postgres", "--kind", "dump"], &env_refs);
    assert!(out.status.success(), "dump failed: {}", text(&out));
    let at_dump = pg.snapshot_in("app");
    let out = scratch.lifeline(&["status"], &[]);
    assert!(
        text(&out).contains("last postgresql dump backup"),
        "{}",
        text(&out)
    );

    // The damage a dump restore repairs.
    pg.psql_in("app", "DELETE FROM invoices WHERE id % 3 = 0");
    pg.psql_in("app", "UPDATE customers SET name = 'oops'");
    let damaged = pg.snapshot_in("app");

    let out = scratch.lifeline(
        &[
            "restore", "postgres", "--type", "full", "--kind", "dump", "--target", "staging",
        ],
        &env_refs,
    );
    assert!(
        out.status.success(),
        "staging restore failed: {}",
        text(&out)
    );
    assert_eq!(
        pg.snapshot_in("app_staging"),
        at_dump,
        "staging differs from the dump"
    );
    assert_eq!(
        pg.snapshot_in("app"),
        damaged,
        "a staging restore touched production"
    );

    let out = scratch.lifeline(
        &[
            "restore",
            "postgres",
            "--type",
            "full",
            "--kind",
            "dump",
            "--target",
            "production",
        ],
        &env_refs,
    );
    assert!(
        out.status.success(),
        "production restore failed: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("pre-restore dump of app"),
        "{}",
        text(&out)
    );
    assert_eq!(
        pg.snapshot_in("app"),
        at_dump,
        "production differs from the dump"
    );

    // The pre-restore dump holds what production was before: restoring it brings that back.
    let pre = text(&out)
        .lines()
        .find_map(|l| {
            l.split("backup ")
                .nth(1)?
                .split_whitespace()
                .next()
                .map(str::to_string)
        })
        .expect("the pre-restore backup id is printed");
    let out = scratch.lifeline(
        &[
            "restore", "postgres", "--type", "full", "--kind", "dump", "--from", &pre, "--target",
            "staging",
        ],
        &env_refs,
    );
    assert!(
        out.status.success(),
        "restore of the pre-restore dump failed: {}",
        text(&out)
    );
    assert_eq!(pg.snapshot_in("app_staging"), damaged);
}

#[test]
fn the_old_platforms_dump_gz_files_restore() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    seed(&pg, "legacy");
    let expected = pg.snapshot_in("legacy");
    let file = scratch.path("backup_20251227_010000.dump.gz");
    let out = run_as_postgres(
        "bash",
        &[
            "-c",
            &format!(
                "{}/pg_dump -h 127.0.0.1 -p {} -U postgres -Fc legacy | gzip > {}",
                common::PG_BIN,
                pg.port,
                file.display()
            ),
        ],
    );
    assert!(out.status.success(), "making the old dump: {}", text(&out));
    let env = env_for(&pg, "legacy");
    let env_refs = common::env_refs(&env);
    let arg = file.to_string_lossy().into_owned();
    let out = scratch.lifeline(
        &[
            "restore", "postgres", "--type", "full", "--file", &arg, "--target", "staging",
        ],
        &env_refs,
    );
    assert!(
        out.status.success(),
        "restore of the .dump.gz failed: {}",
        text(&out)
    );
    assert_eq!(pg.snapshot_in("legacy_staging"), expected);

    // Not a dump: refused before anything is dropped.
    let bogus = scratch.path("notes.dump.gz");
    std::fs::write(&bogus, b"not a dump").expect("write");
    let arg = bogus.to_string_lossy().into_owned();
    let out = scratch.lifeline(
        &[
            "restore", "postgres", "--type", "full", "--file", &arg, "--target", "staging",
        ],
        &env_refs,
    );
    assert_ne!(code(&out), 0);
    assert_eq!(
        pg.snapshot_in("legacy_staging"),
        expected,
        "a refused restore dropped staging"
    );
}

#[test]
fn a_staging_target_with_a_base_backup_is_refused_with_what_to_do_instead() {
    let scratch = Scratch::new();
    let dir = scratch.path("never-created");
    let out = scratch.restore(&["--type", "full", "--target", "staging"], &dir);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("--kind dump --target staging") && said.contains("--data-dir"),
        "{said}"
    );
    assert!(!dir.exists(), "a refused restore created its target");
}
