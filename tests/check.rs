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

/// `name{labels}` -> value, from the Prometheus text format.
fn samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            (name.to_string(), value.parse::<f64>().expect("a number"))
        })
        .collect()
}

#[test]
fn metrics_match_the_catalog_and_the_textfile_follows_each_operation() {
    let mut scratch = Scratch::new();
    let textfile = scratch.path("lifeline.prom");
    config_with(
        &mut scratch,
        &format!("metrics-textfile = \"{}\"", textfile.display()),
    );
    let pg = Pg::running(&scratch, "primary");
    common::seed(&pg);
    common::backup(&scratch, &pg);
    pg.switch_and_archive();
    common::backup(&scratch, &pg);
    let db_env = pg.db_env();
    let env = env_refs(&db_env);
    assert!(textfile.exists(), "the backup wrote the textfile");
    let out = scratch.lifeline(&["verify"], &env);
    assert_eq!(code(&out), 0, "{}", text(&out));

    let out = scratch.lifeline(&["metrics"], &env);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let metrics = samples(&String::from_utf8_lossy(&out.stdout));
    let listed = scratch.lifeline(&["list", "--json"], &[]);
    let list: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("list json");
    let newest = &list.as_array().expect("array")[1];
    let finished: jiff::Timestamp = newest["finished_at"]
        .as_str()
        .expect("finished_at")
        .parse()
        .expect("time");
    let base = "{service=\"postgresql\",kind=\"base\"}";
    let at = metrics[&format!("lifeline_last_backup_timestamp_seconds{base}")];
    assert!(
        (at - finished.as_millisecond() as f64 / 1e3).abs() < 0.01,
        "{at} vs {finished}"
    );
    assert_eq!(
        metrics[&format!("lifeline_last_backup_size_bytes{base}")],
        newest["size_bytes"].as_f64().expect("size")
    );
    let kept: f64 = metrics
        .iter()
        .filter(|(k, _)| k.starts_with("lifeline_backups{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(kept, 2.0, "{metrics:?}");
    assert_eq!(metrics["lifeline_last_verify_success"], 1.0);
    assert_eq!(metrics["lifeline_wal_gaps"], 0.0);
    assert_eq!(metrics["lifeline_archiver_failed_total"], 0.0);
    assert!(metrics["lifeline_repository_size_bytes"] > 0.0);
    assert!(metrics["lifeline_wal_archive_age_seconds"] < 600.0);
    // The textfile follows: verify rewrote it with its own outcome.
    let file = samples(&std::fs::read_to_string(&textfile).expect("textfile"));
    assert_eq!(file["lifeline_last_verify_success"], 1.0);
}

#[test]
fn libpq_variables_name_the_server_when_db_settings_are_absent() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    let port = pg.port.to_string();
    let libpq = [
        ("PGHOST", "127.0.0.1"),
        ("PGPORT", port.as_str()),
        ("PGUSER", "postgres"),
        ("PGDATABASE", "postgres"),
    ];
    let out = scratch.lifeline(&["check"], &libpq);
    let said = text(&out);
    assert!(said.contains("[PASS] PostgreSQL reachable"), "{said}");
    // TLS asked for of a server without it: refused, never a silent plaintext connection.
    let mut tls = libpq.to_vec();
    tls.push(("PGSSLMODE", "require"));
    let out = scratch.lifeline(&["check"], &tls);
    let said = text(&out);
    assert_eq!(code(&out), 1, "{said}");
    assert!(said.contains("[FAIL] PostgreSQL reachable"), "{said}");
    assert!(said.contains("does not support TLS"), "{said}");
}
