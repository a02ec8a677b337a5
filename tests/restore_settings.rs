//! Recovery settings a backed-up server carries in its own postgresql.auto.conf (from an
//! earlier restore of it) never change where a later restore of it stops; shown with a real
//! PostgreSQL.

mod common;

use common::{Pg, Scratch, seed, server_second};

/// What `lifeline restore --type full` appends to postgresql.auto.conf. A server restored that
/// way and then kept as the primary (the usual 3 a.m. outcome) carries these lines for ever,
/// and every later backup of it restores them.
const LEFT_BY_A_FULL_RESTORE: &str = "\n# Added by lifeline restore of backup_x\n\
restore_command = 'lifeline wal fetch %f %p'\nrecovery_target_action = 'promote'\n\
recovery_target = 'immediate'\nrecovery_target_timeline = 'current'\n";

fn primary_once_restored_full(scratch: &Scratch) -> Pg {
    let pg = Pg::init(scratch, "primary");
    let auto = pg.data.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).expect("auto.conf");
    text.push_str(LEFT_BY_A_FULL_RESTORE);
    std::fs::write(&auto, text).expect("write auto.conf");
    pg.start();
    pg
}

/// `--until latest` must replay everything archived; the backed-up `recovery_target =
/// 'immediate'` makes recovery stop at the backup's consistent point instead, and the restore
/// says nothing.
#[test]
fn recovery_targets_left_in_a_backed_up_auto_conf_do_not_stop_until_latest() {
    let scratch = Scratch::new();
    let pg = primary_once_restored_full(&scratch);
    seed(&pg);
    common::backup(&scratch, &pg);
    pg.psql("INSERT INTO accounts VALUES (90010, 'after the backup', 10)");
    pg.switch_and_archive();
    pg.stop();

    let copy = scratch.restore_and_recover(
        &["--type", "pitr", "--until", "latest"],
        "copy",
        "restore --until latest",
    );
    assert_eq!(
        copy.psql("SELECT count(*) FROM accounts WHERE id = 90010"),
        "1",
        "--until latest lost the row written after the backup; log:\n{}",
        copy.log()
    );
    copy.stop();
}

/// `--until TIME` on the same backup: PostgreSQL sees recovery_target and recovery_target_time
/// both set and refuses to start ("multiple recovery targets specified").
#[test]
fn recovery_targets_left_in_a_backed_up_auto_conf_do_not_stop_until_time() {
    let scratch = Scratch::new();
    let pg = primary_once_restored_full(&scratch);
    seed(&pg);
    common::backup(&scratch, &pg);
    pg.psql("INSERT INTO accounts VALUES (90011, 'before the target', 11)");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let until = server_second(&pg);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    pg.psql("INSERT INTO accounts VALUES (90012, 'after the target', 12)");
    pg.switch_and_archive();
    pg.stop();

    let dir = scratch.path("copy");
    let out = scratch.restore(&["--type", "pitr", "--until", &until], &dir);
    common::succeeded(&out, "restore --until TIME");
    let copy = Pg::restored(&scratch, dir);
    let log = copy.data.with_extension("log");
    let started = common::run_as_postgres(
        &format!("{}/pg_ctl", common::PG_BIN),
        &[
            "-D",
            copy.data.to_str().expect("utf8"),
            "-l",
            log.to_str().expect("utf8"),
            "-w",
            "-t",
            "60",
            "start",
        ],
    );
    assert!(
        started.status.success(),
        "the restored server does not start: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    copy.wait_promoted();
    assert_eq!(
        copy.psql("SELECT count(*) FROM accounts WHERE id IN (90011, 90012)"),
        "1"
    );
    copy.stop();
}
