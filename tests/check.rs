//! `lifeline check` against a real PostgreSQL: it passes when archiving works end to end, and
//! a broken `archive_command` fails it at once, with the fix, instead of a backup failing later.

mod common;

use common::{Pg, Scratch, code, env_refs, text};

fn config_with(scratch: &mut Scratch, lines: &str) {
    use std::os::unix::fs::PermissionsExt;
    let config = scratch.path("lifeline.toml");
    let text = format!("backup-dir = \"{}\"\n{lines}\n", scratch.repo.display());
    std::fs::write(&config, text).expect("write config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    common::chown_postgres(&config);
    scratch.config = Some(config);
}

#[test]
fn check_passes_when_wal_reaches_the_repository_and_fails_with_a_broken_archive_command() {
    let mut scratch = Scratch::new();
    config_with(&mut scratch, "check-timeout = \"8s\"");
    let pg = Pg::running(&scratch, "primary");
    let db_env = pg.db_env();
    let env = env_refs(&db_env);

    let out = scratch.lifeline(&["check"], &env);
    let said = text(&out);
    assert_eq!(code(&out), 0, "{said}");
    for line in [
        "[PASS] repository writable",
        "[PASS] same cluster",
        "[PASS] archive_command",
        "[PASS] WAL reaches the repository",
        "[PASS] archiver",
        "RESULT: ALL CHECKS PASSED",
    ] {
        assert!(said.contains(line), "{line} missing in:\n{said}");
    }
    assert!(
        !scratch.repo.join("check").exists()
            || std::fs::read_dir(scratch.repo.join("check"))
                .expect("dir")
                .next()
                .is_none(),
        "the probe was left in the repository"
    );
    let out = scratch.lifeline(&["check", "--json"], &env);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["schema"], 1);
    assert_eq!(json["failed"], 0, "{json}");

    // A lifeline that is not there: archive_command still names it, every push fails.
    pg.psql("ALTER SYSTEM SET archive_command = '/nonexistent/lifeline wal push %p'");
    pg.psql("SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = scratch.lifeline(&["check"], &env);
    let said = text(&out);
    assert_eq!(code(&out), 1, "{said}");
    assert!(said.contains("[FAIL] WAL reaches the repository"), "{said}");
    assert!(
        said.contains("did not reach the repository within 8 s"),
        "{said}"
    );

    // A command that runs and fails: PostgreSQL counts it in pg_stat_archiver (a missing
    // program, above, it does not: only the forced switch can tell).
    pg.psql("ALTER SYSTEM SET archive_command = 'false lifeline wal push %p'");
    pg.psql("SELECT pg_reload_conf()");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while pg.psql("SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "the server never counted a failure"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let out = scratch.lifeline(&["check"], &env);
    let said = text(&out);
    assert_eq!(code(&out), 1, "{said}");
    assert!(said.contains("[FAIL] WAL reaches the repository"), "{said}");
    assert!(
        said.contains("[FAIL] archiver: archiving is failing"),
        "{said}"
    );
    assert!(said.contains("RESULT: SOME CHECKS FAILED"), "{said}");

    // Not lifeline at all: named as such, with the line to write.
    pg.psql("ALTER SYSTEM SET archive_command = '/bin/true'");
    pg.psql("SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = scratch.lifeline(&["check"], &env);
    let said = text(&out);
    assert_eq!(code(&out), 1, "{said}");
    assert!(
        said.contains("[FAIL] archive_command") && said.contains("wal push %p"),
        "{said}"
    );

    // Another repository named in archive_command.
    let other = scratch.path("elsewhere");
    pg.psql(&format!(
        "ALTER SYSTEM SET archive_command = '{} --backup-dir {} wal push %p'",
        scratch.bin.display(),
        other.display()
    ));
    pg.psql("SELECT pg_reload_conf()");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let out = scratch.lifeline(&["check"], &env);
    let said = text(&out);
    assert_eq!(code(&out), 1, "{said}");
    assert!(said.contains("not this repository"), "{said}");
}

#[test]
fn check_names_a_server_it_cannot_reach() {
    let scratch = Scratch::new();
    let port = common::free_port().to_string();
    let env = [
        ("DB_HOST", "127.0.0.1"),
        ("DB_PORT", port.as_str()),
        ("DB_USER", "postgres"),
    ];
    let out = scratch.lifeline(&["check"], &env);
    let said = text(&out);
    assert_eq!(code(&out), 1, "{said}");
    assert!(
        said.contains("[FAIL] PostgreSQL reachable") && said.contains("DB_HOST"),
        "{said}"
    );
    assert!(said.contains("[PASS] repository writable"), "{said}");
}

#[test]
fn status_alerts_when_a_threshold_is_crossed_and_the_timer_notifies_once() {
    use common::listeners::{HttpReply, HttpServer};
    let webhook = HttpServer::start(|_| HttpReply::status(200, "ok"));
    let mut scratch = Scratch::new();
    let notify = format!("[notify]\nslack-webhook-url = \"{}\"", webhook.url("/hook"));
    config_with(&mut scratch, &notify);
    let pg = Pg::running(&scratch, "primary");
    common::seed(&pg);
    common::backup(&scratch, &pg);
    pg.switch_and_archive();
    let db_env = pg.db_env();
    let env = env_refs(&db_env);

    let out = scratch.lifeline(&["status"], &env);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let out = scratch.lifeline(&["status", "--nagios"], &env);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(text(&out).starts_with("LIFELINE OK - "), "{}", text(&out));
    assert!(text(&out).contains("| repository_bytes="), "{}", text(&out));

    // The seed's RPO, shrunk to a second: the last WAL is now too old.
    config_with(&mut scratch, &format!("alert-rpo = \"1s\"\n{notify}"));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let out = scratch.lifeline(&["status"], &env);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("over alert-rpo (1 s)"),
        "{}",
        text(&out)
    );
    let out = scratch.lifeline(&["status", "--nagios"], &env);
    assert_eq!(code(&out), 2, "{}", text(&out));
    assert!(
        text(&out).starts_with("LIFELINE CRITICAL - "),
        "{}",
        text(&out)
    );
    let out = scratch.lifeline(&["status", "--json"], &env);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(json["alerts"][0]["severity"], "CRITICAL", "{json}");

    let crossed = |webhook: &HttpServer| {
        webhook
            .requests
            .lock()
            .expect("requests")
            .iter()
            .filter(|r| r.body.contains("threshold"))
            .count()
    };
    scratch.lifeline(&["status", "--notify"], &env);
    assert_eq!(crossed(&webhook), 1, "crossing a threshold notifies");
    scratch.lifeline(&["status", "--notify"], &env);
    assert_eq!(
        crossed(&webhook),
        1,
        "an alert that stays is not notified again"
    );

    // A backup older than alert-backup-age is a warning.
    config_with(
        &mut scratch,
        &format!("alert-backup-age = \"1s\"\n{notify}"),
    );
    pg.switch_and_archive();
    let out = scratch.lifeline(&["status", "--nagios"], &env);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).starts_with("LIFELINE WARNING - "),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("over alert-backup-age"),
        "{}",
        text(&out)
    );
}
