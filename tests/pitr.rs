//! Point-in-time and full restores against real PostgreSQL 15 clusters.

mod common;

use std::time::Duration;

use common::{Pg, Scratch, backup, code, seed, server_second, text};

#[test]
fn pitr_to_a_second_before_a_destructive_change() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    backup(&scratch, &pg);

    // Work after the backup that the restore must replay...
    pg.psql("UPDATE accounts SET balance = balance + 1 WHERE id % 7 = 0");
    pg.psql("INSERT INTO orders (account, amount) SELECT g, 1 FROM generate_series(1, 100) g");
    pg.switch_and_archive();
    pg.psql("INSERT INTO accounts VALUES (9001, 'late', 1)");
    std::thread::sleep(Duration::from_millis(1100));
    let expected = pg.snapshot();
    let target = server_second(&pg);
    std::thread::sleep(Duration::from_millis(1100));
    // ...and the disaster it must not.
    pg.psql("DELETE FROM accounts WHERE id > 100");
    pg.psql("DROP TABLE orders");
    pg.switch_and_archive();

    let restored_dir = scratch.path("restored");
    let out = scratch.restore(&["--type", "pitr", "--until", &target], &restored_dir);
    assert!(out.status.success(), "restore failed: {}", text(&out));
    assert!(
        text(&out).contains("recovery target:"),
        "the resolved instant is printed: {}",
        text(&out)
    );
    let restored = Pg::recover(&scratch, restored_dir);
    assert_eq!(
        restored.snapshot(),
        expected,
        "rows after PITR differ from the rows at the target"
    );
}

#[test]
fn full_restore_catalog_rebuild_and_timeline_switch() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    backup(&scratch, &pg);
    let at_backup = pg.snapshot();
    pg.psql("DELETE FROM orders WHERE id < 1000");

    // Lose the catalog: the repository alone must be enough.
    std::fs::remove_file(scratch.repo.join("catalog.db")).expect("remove catalog");
    let out = scratch.lifeline(&["catalog", "rebuild"], &[]);
    assert!(out.status.success(), "rebuild failed: {}", text(&out));
    assert!(text(&out).contains("1 backups"), "{}", text(&out));

    // Full restore of the latest backup: the data as it was when the backup ended.
    let first = scratch.path("first");
    // This copy becomes the new primary: it archives as production did.
    let out = scratch.restore(
        &[
            "--type",
            "full",
            "--from",
            "latest",
            "--archive-mode",
            "preserve",
        ],
        &first,
    );
    assert!(out.status.success(), "full restore failed: {}", text(&out));
    let first = Pg::recover(&scratch, first);
    assert_eq!(
        first.snapshot(),
        at_backup,
        "full restore differs from the data at backup time"
    );
    assert_eq!(
        first.psql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );

    // Life goes on on timeline 2, archived into the same repository.
    first.psql("INSERT INTO accounts VALUES (7001, 'timeline two', 2)");
    first.switch_and_archive();
    std::thread::sleep(Duration::from_millis(1100));
    let expected = first.snapshot();
    let target = server_second(&first);
    std::thread::sleep(Duration::from_millis(1100));
    first.psql("TRUNCATE accounts CASCADE");
    first.switch_and_archive();
    first.stop();

    let second = scratch.path("second");
    let out = scratch.restore(&["--type", "pitr", "--until", &target], &second);
    assert!(
        out.status.success(),
        "PITR on timeline 2 failed: {}",
        text(&out)
    );
    let second = Pg::recover(&scratch, second);
    assert_eq!(
        second.snapshot(),
        expected,
        "rows after PITR on timeline 2 differ"
    );
    assert_eq!(code(&out), 0);
}

#[test]
fn a_target_after_the_last_archived_transaction_is_refused_until_one_is_archived() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g");
    backup(&scratch, &pg);
    pg.psql("INSERT INTO t VALUES (101)");
    std::thread::sleep(Duration::from_millis(1100));
    let expected = pg.snapshot();
    let target = server_second(&pg);
    std::thread::sleep(Duration::from_millis(1100));
    // A segment archived after the target, but no transaction ended after it: recovery could
    // not know it had reached the target, so the restore must refuse before writing anything.
    pg.switch_and_archive();
    let dir = scratch.path("restored");
    let out = scratch.restore(&["--type", "pitr", "--until", &target], &dir);
    assert!(
        code(&out) != 0,
        "restore accepted an unreachable target: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("past the end of the archive"),
        "{}",
        text(&out)
    );
    assert!(
        !dir.exists(),
        "the refused restore wrote into the data directory"
    );

    // The disaster commits and is archived: now the target is reachable.
    pg.psql("DELETE FROM t");
    pg.switch_and_archive();
    let out = scratch.restore(&["--type", "pitr", "--until", &target], &dir);
    assert!(out.status.success(), "restore failed: {}", text(&out));
    let restored = Pg::recover(&scratch, dir);
    assert_eq!(restored.snapshot(), expected);
}
