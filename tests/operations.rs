//! Operations end to end: failover with a real primary and streaming replica, service restarts
//! against a health URL, post-recovery checks, restore drills, notifications to a webhook and
//! an SMTP server on loopback, operation logs, and the runbook.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::listeners::{HttpReply, HttpServer, SmtpServer};
use common::*;

/// The webhook path is the credential: it must never be printed or logged.
const WEBHOOK_TOKEN: &str = "T000/B000/hook-secret-5c2e";
const DB_PASSWORD_IN_URL: &str = "app-pass-91f3";

fn write_owned(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
    chown_postgres(path);
}

fn logs(scratch: &Scratch, operation: &str) -> Vec<String> {
    let dir = scratch.repo.join("logs");
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("{operation}_")) && n.ends_with(".log"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
        .iter()
        .map(|n| std::fs::read_to_string(dir.join(n)).expect("read log"))
        .collect()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A primary with the seed data and a base backup, and a streaming replica that has replayed
/// everything committed on it.
fn primary_with_replica(scratch: &Scratch) -> (Pg, Pg) {
    let primary = Pg::running(scratch, "primary");
    seed(&primary);
    backup(scratch, &primary);
    let replica = streaming_replica(scratch, &primary, "replica");
    primary.psql("INSERT INTO orders (account, amount) VALUES (1, 424242)");
    primary.switch_and_archive();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = replica.try_psql("SELECT count(*) FROM orders WHERE amount = 424242");
        if out.stdout.starts_with(b"1") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica never replayed the last order: {}\n{}",
            text(&out),
            replica.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    (primary, replica)
}

#[test]
fn failover_promotes_the_replica_switches_the_connection_file_and_notifies() {
    let scratch = Scratch::new();
    let (primary, replica) = primary_with_replica(&scratch);
    let before = primary.snapshot();

    let webhook = HttpServer::start(|_| HttpReply::status(200, "ok"));
    let smtp = SmtpServer::start();
    let env_file = scratch.path("app.env");
    let original = format!(
        "# the application's settings\nDATABASE_URL=postgresql://app:{DB_PASSWORD_IN_URL}@127.0.0.1:{}/postgres\nWORKERS=4\n",
        primary.port
    );
    write_owned(&env_file, &original);
    let config = scratch.path("lifeline.toml");
    write_owned(
        &config,
        &format!(
            "[failover]\nreplica-host = \"127.0.0.1\"\nreplica-port = {}\nconnection-file = \"{}\"\n\n\
             [notify]\nslack-webhook-url = \"{}\"\nemail-to = \"oncall@example.com\"\nsmtp-host = \"127.0.0.1\"\n\
             smtp-port = {}\nsmtp-tls = \"none\"\n",
            replica.port,
            env_file.display(),
            webhook.url(&format!("/services/{WEBHOOK_TOKEN}")),
            smtp.port
        ),
    );
    let mut env = primary.db_env();
    env.push(("LIFELINE_CONFIG".into(), config.display().to_string()));
    let env = env_refs(&env);

    // The primary answers: nothing to fail over without --force.
    let out = scratch.lifeline(&["failover", "--incident", "database_failure"], &env);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("nothing to fail over"),
        "{}",
        text(&out)
    );
    assert_eq!(std::fs::read_to_string(&env_file).expect("read"), original);
    wait_until("the refusal's notification", || {
        webhook.received().len() == 1
    });
    assert!(webhook.received()[0].body.contains("failover FAILED"));

    // A simulation on the healthy system does not fail: it shows the plan --force would follow,
    // worded as what a run would do, and is not counted as a failover.
    let out = scratch.lifeline(
        &["failover", "--incident", "database_failure", "--simulate"],
        &env,
    );
    let said = text(&out);
    assert_eq!(code(&out), 0, "{said}");
    assert!(
        said.contains("a real run stops here unless --force") && said.contains("(would run)"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&env_file).expect("read"), original);
    // With no incident: the plan of each, against the same state, changing nothing.
    let out = scratch.lifeline(&["failover", "--simulate"], &env);
    let said = text(&out);
    for incident in ["database_failure", "redis_failure", "datacenter_failure"] {
        assert!(
            said.contains(&format!("failover: incident {incident}")),
            "{incident}: {said}"
        );
    }
    assert_eq!(
        said.matches("SIMULATION: read-only checks run").count(),
        3,
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&env_file).expect("read"), original);
    let out = scratch.lifeline(&["failover", "--status"], &env);
    assert!(
        !text(&out).contains("SUCCESS (simulation"),
        "a simulation is listed among failovers: {}",
        text(&out)
    );

    // The primary dies.
    primary.crash();

    // A simulation checks and plans, and changes nothing.
    for (args, extra) in [
        (
            vec!["failover", "--incident", "database_failure", "--simulate"],
            vec![],
        ),
        (
            vec!["failover", "--incident", "database_failure"],
            vec![("SIMULATE_MODE", "true")],
        ),
    ] {
        let mut all = env.clone();
        all.extend(extra);
        let out = scratch.lifeline(&args, &all);
        let said = succeeded(&out, "failover --simulate");
        assert!(said.contains("is DOWN"), "{said}");
        assert!(said.contains("(would run): promote"), "{said}");
        assert!(said.contains("would change from"), "{said}");
        assert_eq!(replica.psql("SELECT pg_is_in_recovery()"), "t");
        assert_eq!(std::fs::read_to_string(&env_file).expect("read"), original);
    }
    assert_eq!(webhook.received().len(), 1, "a simulation notified");

    // The failover.
    let out = scratch.lifeline(&["failover", "--incident", "database_failure"], &env);
    let said = succeeded(&out, "failover");
    assert!(said.contains("data-loss window"), "{said}");
    assert!(said.contains("RESULT: SUCCESS"), "{said}");
    assert_eq!(replica.psql("SELECT pg_is_in_recovery()"), "f");
    replica.psql("INSERT INTO orders (account, amount) VALUES (2, 1)");
    assert_eq!(
        replica.psql("SELECT count(*) FROM orders WHERE amount = 1 AND account = 2"),
        "2"
    );
    replica.psql("DELETE FROM orders WHERE amount = 1 AND account = 2 AND id > 20000");
    assert_eq!(
        replica.snapshot(),
        before,
        "the promoted replica lacks committed rows"
    );
    let switched = std::fs::read_to_string(&env_file).expect("read");
    assert_eq!(
        switched,
        original.replace(
            &format!(":{}/", primary.port),
            &format!(":{}/", replica.port)
        )
    );

    // The report went to the webhook and by email; the operation log has it all.
    wait_until("the webhook", || webhook.received().len() == 2);
    let posted = &webhook.received()[1];
    assert_eq!(posted.method, "POST");
    assert!(
        posted.body.contains("failover succeeded"),
        "{}",
        posted.body
    );
    assert!(posted.body.contains("promoted"), "{}", posted.body);
    wait_until("the email", || smtp.received().len() == 2);
    let mail = &smtp.received()[1];
    assert!(
        mail.contains("Subject: [lifeline] failover succeeded"),
        "{mail}"
    );
    assert!(mail.contains("To: oncall@example.com"), "{mail}");
    let log = logs(&scratch, "failover").pop().expect("a failover log");
    assert!(log.contains("RESULT: SUCCESS"), "{log}");
    assert!(log.contains("data-loss window"), "{log}");
    for seen in [
        said.as_str(),
        log.as_str(),
        posted.body.as_str(),
        mail.as_str(),
    ] {
        assert!(
            !seen.contains(WEBHOOK_TOKEN),
            "the webhook URL leaked: {seen}"
        );
        assert!(
            !seen.contains(DB_PASSWORD_IN_URL),
            "the database password leaked: {seen}"
        );
    }

    // --status: the promoted server is the primary lifeline reaches, the configured one is
    // down, the configured replica is the primary now, the failover listed.
    let out = scratch.lifeline(&["failover", "--status"], &env);
    let status = succeeded(&out, "failover --status");
    for expected in [
        format!("primary 127.0.0.1:{} is up, role primary", replica.port),
        format!(
            "  using the promoted primary 127.0.0.1:{} recorded by failover (database_failure)",
            replica.port
        ),
        format!("configured primary 127.0.0.1:{} is DOWN", primary.port),
        format!(
            "replica: the configured replica is 127.0.0.1:{}, the primary now",
            replica.port
        ),
        "SUCCESS (".to_string(),
    ] {
        assert!(status.contains(&expected), "{expected}: {status}");
    }

    // Issue 16, point 5: the runbook's next steps, as the failover printed them, reach the
    // promoted server although lifeline's settings still name the dead primary.
    let record = scratch.repo.join(".promoted_primary");
    let record_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&record)
            .expect("the record")
            .permissions(),
    );
    assert_eq!(record_mode & 0o777, 0o600, "the record is not private");
    assert!(
        said.contains("next: `lifeline verify-recovery --full`, then `lifeline backup postgres`"),
        "{said}"
    );
    replica.psql("INSERT INTO orders (account, amount) VALUES (3, 777)");
    let using = format!("using the promoted primary 127.0.0.1:{}", replica.port);
    let out = scratch.lifeline(&["verify-recovery", "--full"], &env);
    let verified = succeeded(&out, "verify-recovery --full after the failover");
    assert!(verified.contains("RESULT: ALL CHECKS PASSED"), "{verified}");
    assert_eq!(verified.matches(&using).count(), 1, "{verified}");
    let out = scratch.lifeline(&["backup", "postgres"], &env);
    let backed_up = succeeded(&out, "backup postgres from the promoted primary");
    assert!(backed_up.contains(&using), "{backed_up}");
    let out = scratch.lifeline(&["check"], &env);
    succeeded(&out, "check of the promoted primary's archiving");
    let out = scratch.lifeline(&["status"], &env);
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&format!("database: {using}")),
        "{}",
        text(&out)
    );
    let out = scratch.lifeline(&["status", "--json"], &env);
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(json["promoted_primary"]["state"], "in_use", "{json}");
    assert_eq!(
        json["promoted_primary"]["address"],
        format!("127.0.0.1:{}", replica.port)
    );
    // WAL archiving says nothing of it: PostgreSQL's log is no place for it.
    assert!(!replica.log().contains("promoted primary"));
    // A restore of the backup taken after the failover has what the new primary wrote.
    let restored = scratch.restore_and_recover(
        &["--type", "full"],
        "after-failover",
        "restore of the new primary's backup",
    );
    assert_eq!(
        restored.psql("SELECT count(*) FROM orders WHERE account = 3 AND amount = 777"),
        "1"
    );

    // The operator updates the configuration: pointed at the new primary the record is moot;
    // pointed elsewhere, the configuration wins and says so.
    let port = replica.port.to_string();
    let mut updated = env.clone();
    updated.push(("DB_PORT", port.as_str()));
    let out = scratch.lifeline(&["failover", "--status"], &updated);
    let status = succeeded(&out, "failover --status with DB_PORT updated");
    assert!(!status.contains("promoted primary"), "{status}");
    let elsewhere = restored.port.to_string();
    let mut moved = env.clone();
    moved.push(("DB_PORT", elsewhere.as_str()));
    let out = scratch.lifeline(&["failover", "--status"], &moved);
    let status = succeeded(&out, "failover --status with DB_PORT elsewhere");
    assert!(
        status.contains(&format!("primary 127.0.0.1:{elsewhere} is up"))
            && status.contains("is not used: DB_HOST/DB_PORT name"),
        "{status}"
    );

    // The old primary comes back writable while the record stands in for it: two primaries.
    // A failover from the record refuses, and changes nothing.
    primary.start();
    let out = scratch.lifeline(&["failover", "--incident", "database_failure"], &env);
    assert_ne!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("accepts writes, while .promoted_primary names")
            && text(&out).contains("split brain"),
        "{}",
        text(&out)
    );
    assert_eq!(replica.psql("SELECT pg_is_in_recovery()"), "f");
    primary.stop();
}

#[test]
fn a_service_is_restarted_until_its_health_url_answers() {
    let scratch = Scratch::new();
    let marker = scratch.path("restarted");
    let flag = marker.clone();
    let health = HttpServer::start(move |r| {
        if r.path == "/health" && flag.exists() {
            HttpReply::status(200, "ok")
        } else {
            HttpReply::status(503, "down")
        }
    });
    let config = scratch.path("lifeline.toml");
    write_owned(
        &config,
        &format!(
            "[services.api]\nrestart-command = \"touch {}\"\nhealth-url = \"{}\"\ntimeout-seconds = 20\n\n\
             [services.stuck]\nrestart-command = \"true\"\nhealth-url = \"{}\"\ntimeout-seconds = 2\n",
            marker.display(),
            health.url("/health"),
            health.url("/never")
        ),
    );
    let env = [("LIFELINE_CONFIG", config.to_str().expect("utf8"))];

    let out = scratch.lifeline(
        &[
            "failover",
            "--incident",
            "service_failure",
            "api",
            "--simulate",
        ],
        &env,
    );
    succeeded(&out, "simulated restart");
    assert!(!marker.exists(), "the simulation ran the restart command");

    let out = scratch.lifeline(&["failover", "--incident", "service_failure", "api"], &env);
    let said = succeeded(&out, "service restart");
    assert!(marker.exists());
    assert!(said.contains("api healthy after"), "{said}");

    let out = scratch.lifeline(
        &["failover", "--incident", "service_failure", "stuck"],
        &env,
    );
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("not healthy within 2 s"),
        "{}",
        text(&out)
    );
    assert!(text(&out).contains("RESULT: FAILED"), "{}", text(&out));

    let out = scratch.lifeline(&["failover", "--incident", "service_failure", "web"], &env);
    assert_eq!(code(&out), 1);
    assert!(
        text(&out).contains("no [services.web]") && text(&out).contains("api, stuck"),
        "{}",
        text(&out)
    );
}

/// An application stand-in: /health is fine, /broken answers 500, /login sets a session
/// cookie for the right password, /me wants that cookie.
fn application() -> HttpServer {
    HttpServer::start(|r| match r.path.as_str() {
        "/health" => HttpReply::status(200, "ok"),
        "/login" if r.body.contains("\"password\":\"letmein\"") => HttpReply {
            status: 200,
            headers: vec!["set-cookie: session=abc123; HttpOnly".into()],
            body: "{}".into(),
        },
        "/login" => HttpReply::status(401, "no"),
        "/me" if r.headers.contains("session=abc123") => HttpReply::status(200, "{\"user\":1}"),
        "/me" => HttpReply::status(401, "no"),
        _ => HttpReply::status(500, "boom"),
    })
}

#[test]
fn verify_recovery_and_drills_report_what_is_true() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "pg");
    seed(&pg);
    pg.psql("CREATE TABLE audit (id int)");
    backup(&scratch, &pg);
    pg.psql("INSERT INTO orders (account, amount) SELECT 1, g FROM generate_series(1, 100) g");
    // Empty when backed up, written since: growth is not loss.
    pg.psql("INSERT INTO audit SELECT generate_series(1, 50)");
    pg.switch_and_archive();

    let app = application();
    let webhook = HttpServer::start(|_| HttpReply::status(200, "ok"));
    let config = scratch.path("lifeline.toml");
    let drills = scratch.path("drills");
    std::fs::create_dir(&drills).expect("mkdir");
    chown_postgres(&drills);
    let base = format!(
        "drill-dir = \"{}\"\n[verify]\n\n[[verify.http]]\nname = \"api\"\nurl = \"{}\"\ncontains = \"ok\"\n\n\
         [[verify.worker]]\nname = \"queue\"\ncommand = \"true\"\n\n\
         [verify.login]\nurl = \"{}\"\nbody = '{{\"user\":\"smoke\",\"password\":\"${{SMOKE_PASSWORD}}\"}}'\nthen-url = \"{}\"\n",
        drills.display(),
        app.url("/health"),
        app.url("/login"),
        app.url("/me")
    ) + &format!(
        "\n[notify]\nslack-webhook-url = \"{}\"\n",
        webhook.url("/hook")
    );
    write_owned(&config, &base);
    let notified = |what: &str| {
        webhook
            .received()
            .iter()
            .filter(|r| r.body.contains(what))
            .count()
    };
    let mut env = pg.db_env();
    env.push(("LIFELINE_CONFIG".into(), config.display().to_string()));
    env.push(("SMOKE_PASSWORD".into(), "letmein".into()));
    let env = env_refs(&env);

    let out = scratch.lifeline(&["verify-recovery", "--quick"], &env);
    let said = succeeded(&out, "verify-recovery --quick");
    assert!(said.contains("[PASS] PostgreSQL reachable"), "{said}");
    assert!(
        said.ends_with("Failed: 0\nRESULT: ALL CHECKS PASSED\n"),
        "{said}"
    );

    let mut missing = env.clone();
    missing.push(("DB_NAME", "nope"));
    let out = scratch.lifeline(&["verify-recovery", "--quick"], &missing);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("[FAIL] database present: database \"nope\" does not exist"),
        "{}",
        text(&out)
    );

    let out = scratch.lifeline(&["verify-recovery", "--smoke-test"], &env);
    let said = succeeded(&out, "verify-recovery --smoke-test");
    assert!(
        said.contains("[PASS] table public.accounts: 5000 rows"),
        "{said}"
    );
    assert!(
        said.contains("[PASS] table public.orders: 20100 rows"),
        "{said}"
    );
    assert!(said.contains("[PASS] HTTP api: HTTP 200"), "{said}");
    assert!(said.contains("[PASS] worker queue"), "{said}");
    assert!(
        said.contains("[PASS] login flow: login HTTP 200, then HTTP 200 with the session"),
        "{said}"
    );

    // A broken check fails the run, in text and JSON; a wrong password fails the login.
    write_owned(
        &config,
        &format!(
            "{base}\n[[verify.http]]\nname = \"broken\"\nurl = \"{}\"\n",
            app.url("/broken")
        ),
    );
    let out = scratch.lifeline(&["verify-recovery", "--full"], &env);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("[FAIL] HTTP broken: HTTP 500 (expected 200)"),
        "{said}"
    );
    assert!(
        said.contains("Failed: 1\n") && said.contains("RESULT: SOME CHECKS FAILED"),
        "{said}"
    );
    assert!(
        notified("verify-recovery FAILED") >= 1,
        "no notification of the failed checks"
    );
    assert_eq!(notified("FAILED"), notified("verify-recovery FAILED"));
    let out = scratch.lifeline(&["verify-recovery", "--full", "--json"], &env);
    assert_eq!(code(&out), 1);
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("verify-recovery --json");
    assert_eq!(json["failed"], 1, "{json}");
    assert_eq!(json["result"], "FAIL");
    assert_eq!(json["failed"], 1);
    let mut wrong = env.clone();
    wrong.retain(|(k, _)| *k != "SMOKE_PASSWORD");
    wrong.push(("SMOKE_PASSWORD", "guess"));
    let out = scratch.lifeline(&["verify-recovery", "--smoke-test"], &wrong);
    assert!(
        text(&out).contains("[FAIL] login flow: login answered HTTP 401"),
        "{}",
        text(&out)
    );
    // The row counts are checked, not assumed: a table emptied after the backup fails.
    pg.psql("DELETE FROM accounts WHERE id > 100");
    write_owned(&config, &base);
    let out = scratch.lifeline(&["verify-recovery", "--full"], &env);
    assert_eq!(code(&out), 1);
    assert!(
        text(&out).contains("[FAIL] table public.accounts: 100 rows"),
        "{}",
        text(&out)
    );
    pg.psql(
        "INSERT INTO accounts SELECT g, 'owner ' || g, g * 10 FROM generate_series(101, 5000) g",
    );
    pg.switch_and_archive();

    // A drill restores the backup and the archive, verifies and marks the backup VERIFIED.
    // It counts rows where the backup's record was taken, at its consistent point: the rows
    // written since are not there yet.
    let out = scratch.lifeline(&["drill"], &env);
    let said = succeeded(&out, "drill");
    assert!(said.contains("VERIFIED"), "{said}");
    assert!(said.contains("RTO measured:"), "{said}");
    assert!(
        said.contains("[PASS] table public.orders: 20000 rows"),
        "{said}"
    );
    assert!(
        said.contains("[PASS] table public.audit: 0 rows, backup"),
        "{said}"
    );
    assert!(said.contains("[PASS] write: "), "{said}");
    let listed: serde_json::Value =
        serde_json::from_slice(&scratch.lifeline(&["list", "--json"], &env).stdout).expect("list");
    assert_eq!(listed[0]["restorability"], "VERIFIED");
    let id = listed[0]["backup_id"].as_str().expect("id").to_string();
    let metadata =
        std::fs::read_to_string(scratch.repo.join(format!("backups/{id}/{id}.metadata")))
            .expect("metadata");
    assert!(
        metadata.contains("\"restorability\": \"VERIFIED\""),
        "{metadata}"
    );
    assert_eq!(
        std::fs::read_dir(&drills).expect("ls").count(),
        0,
        "the scratch server was left behind"
    );
    // What the drill measured is what metrics exports.
    let rto: f64 = said
        .split("RTO measured: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit() && c != '.').next())
        .and_then(|n| n.parse().ok())
        .expect("the drill's RTO");
    assert_eq!(metric(&scratch, &env, "lifeline_last_drill_success"), 1.0);
    let exported = metric(&scratch, &env, "lifeline_last_drill_rto_seconds");
    assert!(
        (exported - rto).abs() < 1.0,
        "exported RTO {exported}, drill said {rto}"
    );
    let drilled_at = metric(&scratch, &env, "lifeline_last_drill_timestamp_seconds");
    let now = jiff::Timestamp::now().as_second() as f64;
    assert!(
        (now - drilled_at).abs() < 600.0,
        "drill time {drilled_at}, now {now}"
    );
    assert!(
        logs(&scratch, "drill")
            .pop()
            .expect("drill log")
            .contains("VERIFIED")
    );

    // Damage every pack: the next drill fails, says why, and marks the backup FAILED.
    for entry in walk(&scratch.repo.join("packs")) {
        let mut bytes = std::fs::read(&entry).expect("read pack");
        let middle = bytes.len() / 2;
        for b in &mut bytes[middle..middle + 64] {
            *b ^= 0x5a;
        }
        std::fs::write(&entry, bytes).expect("write pack");
    }
    let out = scratch.lifeline(&["drill"], &env);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("FAILED (the restore failed"),
        "{}",
        text(&out)
    );
    let listed: serde_json::Value =
        serde_json::from_slice(&scratch.lifeline(&["list", "--json"], &env).stdout).expect("list");
    assert_eq!(listed[0]["restorability"], "FAILED");
    assert_eq!(metric(&scratch, &env, "lifeline_last_drill_success"), 0.0);
    let metadata =
        std::fs::read_to_string(scratch.repo.join(format!("backups/{id}/{id}.metadata")))
            .expect("metadata");
    assert!(
        metadata.contains("\"restorability_reason\": \"the restore failed"),
        "{metadata}"
    );
    assert_eq!(
        notified("drill FAILED"),
        1,
        "the failed drill was not announced"
    );
    let out = scratch.lifeline(&["verify", "--read-data"], &env);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert_eq!(
        notified("verify FAILED"),
        1,
        "the failed verify was not announced"
    );
    let posted = webhook.received();
    let verify = posted
        .iter()
        .find(|r| r.body.contains("verify FAILED"))
        .expect("verify notification");
    assert!(verify.body.contains("problem(s)"), "{}", verify.body);
}

/// Every path under `dir`. A running server removes its temporary files and directories as it
/// goes: what vanishes during the walk is left out.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return files,
        Err(e) => panic!("read {}: {e}", dir.display()),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn the_runbook_lists_shows_and_validates() {
    let scratch = Scratch::new();
    let out = scratch.lifeline(&["runbook"], &[]);
    let said = succeeded(&out, "runbook");
    for id in [
        "INC-001", "INC-002", "INC-003", "INC-004", "INC-005", "INC-006",
    ] {
        assert!(said.contains(id), "{said}");
    }
    let out = scratch.lifeline(&["runbook", "INC-005"], &[]);
    let said = succeeded(&out, "runbook INC-005");
    assert!(
        said.contains("RTO: 60 minutes")
            && said.contains("$ lifeline failover --incident datacenter_failure"),
        "{said}"
    );
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/runbook.json");
    let out = scratch.lifeline(
        &["runbook", "--validate", shipped.to_str().expect("utf8")],
        &[],
    );
    succeeded(&out, "runbook --validate ops/runbook.json");
    let custom = scratch.path("custom.json");
    let broken = std::fs::read_to_string(&shipped)
        .expect("read")
        .replace("\"rto_minutes\": 20", "\"rto_minutes\": 0")
        .replace(
            "lifeline verify-recovery --quick",
            "lifeline verfy-recovery --quick",
        );
    write_owned(&custom, &broken);
    let out = scratch.lifeline(
        &["runbook", "--validate", custom.to_str().expect("utf8")],
        &[],
    );
    assert_eq!(code(&out), 1);
    let said = text(&out);
    assert!(
        said.contains("INC-003: rto_minutes must be above 0"),
        "{said}"
    );
    assert!(
        said.contains("\"lifeline verfy-recovery --quick\" is not a lifeline command"),
        "{said}"
    );
}

#[test]
fn without_a_replica_the_repository_brings_the_database_back_in_either_region() {
    let scratch = Scratch::new();
    let primary = Pg::running(&scratch, "primary");
    seed(&primary);
    backup(&scratch, &primary);
    primary.psql("UPDATE accounts SET balance = balance + 1 WHERE id <= 100");
    primary.psql("INSERT INTO orders (account, amount) VALUES (7, -7)");
    primary.switch_and_archive();
    let before = primary.snapshot();
    primary.crash();
    // The disk is gone: what is left is moved aside, as the runbook says.
    std::fs::rename(&primary.data, scratch.path("primary.lost")).expect("move aside");

    // Issue 16, point 6: with nothing configured for it, the simulation names every missing
    // setting at once and still shows the plan; a real run names them all and changes nothing.
    let bare = primary.db_env();
    let bare = env_refs(&bare);
    let missing = [
        "missing setting [failover] replica-host / REPLICA_HOST: no replica configured",
        "missing setting PGDATA (or pgdata in the config)",
        "missing setting [failover] postgres-start-command",
        "missing setting [failover] connection-file",
    ];
    let out = scratch.lifeline(
        &["failover", "--incident", "database_failure", "--simulate"],
        &bare,
    );
    let said = text(&out);
    assert_eq!(code(&out), 1, "{said}");
    for line in missing {
        assert!(said.contains(line), "{line}: {said}");
    }
    assert!(
        said.contains("(would run): restore ")
            && said.contains("a real run would stop before changing anything: 4 settings missing"),
        "{said}"
    );
    let out = scratch.lifeline(&["failover", "--incident", "database_failure"], &bare);
    let said = text(&out);
    assert_eq!(code(&out), 1, "{said}");
    for line in missing {
        assert!(said.contains(line), "{line}: {said}");
    }
    assert!(
        said.contains("4 settings missing") && said.contains("Nothing was changed"),
        "{said}"
    );
    assert!(!said.contains("step 1"), "{said}");

    let env_file = scratch.path("app.env");
    write_owned(
        &env_file,
        &format!(
            "DATABASE_URL=postgresql://app@127.0.0.1:{}/postgres\n",
            primary.port
        ),
    );
    let start = |data: &Path, port: u16| {
        format!(
            "{PG_BIN}/pg_ctl -D {} -l {}.log -o '-p {port}' -W start",
            data.display(),
            data.display()
        )
    };
    let config = scratch.path("lifeline.toml");
    write_owned(
        &config,
        &format!(
            "pgdata = \"{}\"\n[failover]\nconnection-file = \"{}\"\npostgres-start-command = \"{}\"\n",
            primary.data.display(),
            env_file.display(),
            start(&primary.data, primary.port)
        ),
    );
    let mut env = primary.db_env();
    env.push(("LIFELINE_CONFIG".into(), config.display().to_string()));
    let env = env_refs(&env);
    // A record of a promoted primary that is not the configured replica (none is configured
    // here; it could have been planted): never followed, the configured server comes back.
    let record = scratch.repo.join(".promoted_primary");
    write_owned(
        &record,
        &format!(
            r#"{{"host": "127.0.0.1", "port": {}, "configured_host": "127.0.0.1", "configured_port": {},
               "replaced": "127.0.0.1:{}", "incident": "database_failure", "promoted_at": "2026-01-01T00:00:00Z"}}"#,
            free_port(),
            primary.port,
            primary.port
        ),
    );
    let out = scratch.lifeline(&["failover", "--incident", "database_failure"], &env);
    let said = succeeded(&out, "failover without a replica");
    assert!(said.contains("no replica configured"), "{said}");
    assert!(
        said.contains(&format!("127.0.0.1:{} accepts writes", primary.port)),
        "{said}"
    );
    assert!(
        text(&out).contains("is not used: it names 127.0.0.1:")
            && text(&out).contains("which is not the configured replica"),
        "{}",
        text(&out)
    );
    std::fs::remove_file(&record).expect("remove the record");
    assert!(
        said.contains("recover through the end of the archive"),
        "{said}"
    );
    let restored = Pg {
        data: primary.data.clone(),
        port: primary.port,
        socket_dir: scratch.dir.path().to_path_buf(),
    };
    assert_eq!(
        restored.snapshot(),
        before,
        "the restored primary differs from the lost one"
    );

    // It carries on (on a new timeline, archiving); then the whole region is lost.
    restored.psql("INSERT INTO orders (account, amount) VALUES (8, -8)");
    restored.switch_and_archive();
    let before = restored.snapshot();
    restored.stop();

    // The secondary region: its own catalog (empty), data directory and port.
    let secondary = scratch.path("secondary");
    let port = free_port();
    let config2 = scratch.path("secondary.toml");
    write_owned(
        &config2,
        &format!(
            "pgdata = \"{}\"\ncatalog = \"{}\"\n[failover]\nconnection-file = \"{}\"\npostgres-start-command = \"{}\"\n",
            secondary.display(),
            scratch.path("secondary-catalog.db").display(),
            env_file.display(),
            start(&secondary, port)
        ),
    );
    let port_text = port.to_string();
    let env2 = [
        ("DB_HOST", "127.0.0.1"),
        ("DB_PORT", port_text.as_str()),
        ("DB_USER", "postgres"),
        ("DB_NAME", "postgres"),
        ("LIFELINE_CONFIG", config2.to_str().expect("utf8")),
    ];
    let out = scratch.lifeline(
        &["failover", "--incident", "datacenter_failure", "--simulate"],
        &env2,
    );
    succeeded(&out, "datacenter_failure --simulate");
    assert!(!secondary.exists(), "the simulation restored");
    let out = scratch.lifeline(&["failover", "--incident", "datacenter_failure"], &env2);
    let said = succeeded(&out, "datacenter_failure");
    assert!(said.contains("rebuild the catalog"), "{said}");
    assert!(said.contains("[PASS] PostgreSQL reachable"), "{said}");
    let recovered = Pg {
        data: secondary.clone(),
        port,
        socket_dir: scratch.dir.path().to_path_buf(),
    };
    assert_eq!(
        recovered.snapshot(),
        before,
        "the secondary region lacks committed rows"
    );
    assert_eq!(
        std::fs::read_to_string(&env_file).expect("read"),
        format!("DATABASE_URL=postgresql://app@127.0.0.1:{port}/postgres\n")
    );
}

/// Stops the daemonized redis-server of a test, whatever happened.
struct RedisDaemon(u16);

impl RedisDaemon {
    fn cli(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &self.0.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for RedisDaemon {
    fn drop(&mut self) {
        self.cli(&["SHUTDOWN", "NOSAVE"]);
    }
}

#[test]
fn a_failover_run_as_root_gives_the_restored_data_directory_to_postgres() {
    use std::os::unix::fs::MetadataExt;
    let scratch = Scratch::new();
    let primary = Pg::running(&scratch, "primary");
    seed(&primary);
    backup(&scratch, &primary);
    primary.psql("INSERT INTO orders (account, amount) VALUES (7, -7)");
    primary.switch_and_archive();
    let before = primary.snapshot();
    primary.crash();
    std::fs::rename(&primary.data, scratch.path("primary.lost")).expect("move aside");
    // Run by root (as on-call engineers do), it must start PostgreSQL as postgres.
    let config = scratch.path("lifeline.toml");
    write_owned(
        &config,
        &format!(
            "pgdata = \"{data}\"\n[failover]\npostgres-start-command = \"runuser -u postgres -- \
             {PG_BIN}/pg_ctl -D {data} -l {data}.log -o '-p {port}' -W start\"\n",
            data = primary.data.display(),
            port = primary.port
        ),
    );
    let mut command = std::process::Command::new(&scratch.bin);
    command
        .args(["failover", "--incident", "database_failure"])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("TZ", "UTC")
        .env("BACKUP_DIR", &scratch.repo)
        .env("LIFELINE_CONFIG", &config);
    for (key, value) in primary.db_env() {
        command.env(key, value);
    }
    let out = command.output().expect("run lifeline as root");
    succeeded(&out, "failover as root without a replica");
    let postgres = std::fs::metadata(scratch.dir.path())
        .expect("scratch")
        .uid();
    for path in walk(&primary.data) {
        // The restored server is running: its temporary files come and go.
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("restored path {}: {e}", path.display()),
        };
        assert_eq!(meta.uid(), postgres, "{} is not postgres's", path.display());
    }
    let restored = Pg {
        data: primary.data.clone(),
        port: primary.port,
        socket_dir: scratch.dir.path().to_path_buf(),
    };
    assert_eq!(restored.snapshot(), before, "the restored primary differs");
}

#[test]
fn redis_that_comes_back_empty_is_restored_from_its_last_backup() {
    let scratch = Scratch::new();
    let data = scratch.path("redis");
    std::fs::create_dir(&data).expect("mkdir");
    chown_postgres(&data);
    let port = free_port();
    let redis = RedisDaemon(port);
    let start = format!(
        "redis-server --port {port} --bind 127.0.0.1 --dir {} --save '' --appendonly no --enable-debug-command yes --daemonize yes --pidfile {}/redis.pid",
        data.display(),
        data.display()
    );
    let out = run_as_postgres("sh", &["-c", &start]);
    assert!(out.status.success(), "{}", text(&out));
    wait_until("redis to answer", || redis.cli(&["PING"]) == "PONG");
    redis.cli(&["DEBUG", "POPULATE", "5000", "key", "50"]);
    redis.cli(&["HSET", "session:1", "user", "ada"]);
    let digest = redis.cli(&["DEBUG", "DIGEST"]);

    let config = scratch.path("lifeline.toml");
    write_owned(
        &config,
        &format!(
            "redis-host = \"127.0.0.1\"\nredis-port = {port}\n[failover]\nredis-restart-command = \"{}\"\n\
             redis-stop-command = \"redis-cli -p {port} shutdown nosave\"\nredis-data-dir = \"{}\"\n",
            start.replace('"', "\\\""),
            data.display()
        ),
    );
    let env = [("LIFELINE_CONFIG", config.to_str().expect("utf8"))];
    succeeded(
        &scratch.lifeline(&["backup", "redis"], &env),
        "backup redis",
    );

    let out = scratch.lifeline(&["failover", "--incident", "redis_failure"], &env);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("nothing to recover"), "{}", text(&out));

    // The data is lost and the server is down.
    redis.cli(&["FLUSHALL"]);
    redis.cli(&["SHUTDOWN", "NOSAVE"]);
    wait_until("redis to stop", || redis.cli(&["PING"]) != "PONG");

    let out = scratch.lifeline(
        &["failover", "--incident", "redis_failure", "--simulate"],
        &env,
    );
    let said = succeeded(&out, "redis_failure --simulate");
    assert!(said.contains("(would run): restart Redis"), "{said}");
    assert_ne!(redis.cli(&["PING"]), "PONG", "the simulation started Redis");

    let out = scratch.lifeline(&["failover", "--incident", "redis_failure"], &env);
    let said = succeeded(&out, "redis_failure");
    assert!(said.contains("Redis holds no keys"), "{said}");
    assert!(
        said.contains("RESULT: SUCCESS (redis_failure: Redis restored from"),
        "{said}"
    );
    assert_eq!(
        redis.cli(&["DEBUG", "DIGEST"]),
        digest,
        "the restored Redis differs"
    );
}

#[test]
fn a_forced_failover_fences_the_old_primary_and_archives_its_last_wal() {
    let scratch = Scratch::new();
    let (primary, replica) = primary_with_replica(&scratch);
    let config = scratch.path("lifeline.toml");
    write_owned(
        &config,
        &format!(
            "[failover]\nreplica-host = \"127.0.0.1\"\nreplica-port = {}\n",
            replica.port
        ),
    );
    let mut env = primary.db_env();
    env.push(("LIFELINE_CONFIG".into(), config.display().to_string()));
    let env = env_refs(&env);
    let archived = || primary.psql("SELECT archived_count FROM pg_stat_archiver");
    // The replica's base backup left segments for the archiver: let it catch up first, so that
    // only the failover could archive anything from here on.
    let status = primary.data.join("pg_wal/archive_status");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::fs::read_dir(&status).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().ends_with(".ready"))
    }) {
        assert!(
            std::time::Instant::now() < deadline,
            "the archiver never caught up"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // The statistics follow the archiver's renames by a moment.
    std::thread::sleep(std::time::Duration::from_millis(500));

    let before = archived();
    // Without a replica to take over, --force changes nothing on the primary.
    let lone = scratch.path("no-replica.toml");
    write_owned(&lone, "");
    let mut lone_env = primary.db_env();
    lone_env.push(("LIFELINE_CONFIG".into(), lone.display().to_string()));
    let out = scratch.lifeline(
        &["failover", "--incident", "database_failure", "--force"],
        &env_refs(&lone_env),
    );
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("no replica is configured to take over")
            && !text(&out).contains("step 1"),
        "{}",
        text(&out)
    );
    assert_eq!(primary.psql("SHOW default_transaction_read_only"), "off");
    assert_eq!(archived(), before, "the refused failover switched WAL");

    let out = scratch.lifeline(
        &[
            "failover",
            "--incident",
            "database_failure",
            "--force",
            "--simulate",
        ],
        &env,
    );
    let said = succeeded(&out, "failover --force --simulate");
    assert!(
        said.contains("(would run): make the old primary read-only"),
        "{said}"
    );
    assert!(
        said.contains("(would run): switch the primary's WAL"),
        "{said}"
    );
    assert_eq!(archived(), before, "the simulation switched WAL");
    assert_eq!(primary.psql("SHOW default_transaction_read_only"), "off");

    primary.psql("INSERT INTO orders (account, amount) VALUES (3, -3)");
    let expected = primary.snapshot();
    let out = scratch.lifeline(
        &["failover", "--incident", "database_failure", "--force"],
        &env,
    );
    let said = succeeded(&out, "failover --force");
    assert!(said.contains("archived"), "{said}");
    assert!(said.contains("stop the old primary"), "{said}");
    assert!(archived().parse::<i64>().expect("count") > before.parse::<i64>().expect("count"));
    assert_eq!(primary.psql("SHOW default_transaction_read_only"), "on");
    assert!(
        !primary
            .try_psql("INSERT INTO orders (account, amount) VALUES (4, -4)")
            .status
            .success(),
        "the old primary still takes writes"
    );
    assert_eq!(replica.psql("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(
        replica.snapshot(),
        expected,
        "the promoted replica lacks the last writes"
    );
}

#[test]
fn verify_recovery_compares_with_the_backup_that_was_restored() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "pg");
    seed(&pg);
    backup(&scratch, &pg);
    let older: serde_json::Value =
        serde_json::from_slice(&scratch.lifeline(&["list", "--json"], &[]).stdout).expect("list");
    let older = older[0]["backup_id"].as_str().expect("id").to_string();
    pg.psql("INSERT INTO orders (account, amount) SELECT 1, g FROM generate_series(1, 10000) g");
    pg.switch_and_archive();
    backup(&scratch, &pg);

    let restored = scratch.restore_and_recover(
        &["--type", "full", "--from", &older],
        "restored",
        "restore of the older backup",
    );
    let restored_env = restored.db_env();
    let out = scratch.lifeline(&["verify-recovery", "--full"], &env_refs(&restored_env));
    let said = succeeded(&out, "verify-recovery of the restored older backup");
    assert!(
        said.contains(&format!(
            "[PASS] table public.orders: 20000 rows, backup {older} recorded 20000"
        )),
        "{said}"
    );
    // The original, 10,000 orders ahead of that backup, is checked against the newest one.
    pg.psql("INSERT INTO orders (account, amount) SELECT 1, g FROM generate_series(1, 10) g");
    backup(&scratch, &pg);
    let original_env = pg.db_env();
    let out = scratch.lifeline(&["verify-recovery", "--full"], &env_refs(&original_env));
    let said = succeeded(&out, "verify-recovery of the original");
    assert!(
        said.contains("[PASS] table public.orders: 30010 rows"),
        "{said}"
    );
}

/// The setting's last value in a PostgreSQL configuration file (later lines win).
fn last_setting(conf: &str, name: &str) -> Option<String> {
    conf.lines().rev().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == name).then(|| value.trim().to_string())
    })
}

/// Rewrite backup `id`'s manifest in the local repository as `change` says (the object stays
/// well formed: only what it records is false).
fn forge_manifest(
    scratch: &Scratch,
    id: &str,
    change: impl FnOnce(&mut storage::manifest::BackupManifest),
) {
    let key = format!("backups/{id}/manifest");
    let path = scratch.repo.join(&key);
    let framed = std::fs::read(&path).expect("manifest object");
    let plain = storage::object::decode(&key, &framed).expect("manifest decodes");
    let mut manifest =
        storage::manifest::BackupManifest::from_json(&key, &plain).expect("manifest");
    change(&mut manifest);
    let (_, framed) = storage::object::encode(&manifest.to_json(), storage::Compression::default())
        .expect("encode manifest");
    std::fs::write(&path, framed).expect("write manifest");
    chown_postgres(&path);
}

#[test]
fn a_drill_checks_the_backup_at_its_consistent_point_then_promotes_and_writes() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "pg");
    seed(&pg);
    // A tablespace outside the data directory: the drill reads its own copy of it.
    let live_tablespace = scratch.path("ts");
    std::fs::create_dir(&live_tablespace).expect("mkdir");
    chown_postgres(&live_tablespace);
    pg.psql(&format!(
        "CREATE TABLESPACE ts LOCATION '{}'",
        live_tablespace.display()
    ));
    pg.psql("CREATE TABLE spaced TABLESPACE ts AS SELECT generate_series(1, 300) AS id");
    backup(&scratch, &pg);
    let listed: serde_json::Value =
        serde_json::from_slice(&scratch.lifeline(&["list", "--json"], &[]).stdout).expect("list");
    let id = listed[0]["backup_id"].as_str().expect("id").to_string();
    // An ordinary day after the backup: most orders deleted, a table emptied, one added.
    pg.psql("DELETE FROM orders WHERE id > 1000");
    pg.psql("TRUNCATE accounts CASCADE");
    pg.psql("DELETE FROM spaced");
    pg.psql("CREATE TABLE later AS SELECT generate_series(1, 10) AS id");
    pg.switch_and_archive();
    // The scratch directory is kept inside the test's own, so a failure leaves nothing behind.
    let drills = scratch.path("drills");
    std::fs::create_dir(&drills).expect("mkdir");
    chown_postgres(&drills);
    let config = scratch.path("lifeline.toml");
    write_owned(&config, &format!("drill-dir = \"{}\"\n", drills.display()));
    let mut env = pg.db_env();
    env.push(("LIFELINE_CONFIG".into(), config.display().to_string()));
    let env = env_refs(&env);

    let out = scratch.lifeline(&["drill", "--keep"], &env);
    let said = succeeded(&out, "drill after deletes");
    assert!(said.contains(&format!("drill of {id}: VERIFIED")), "{said}");
    // The counts are those of the backup's consistent point, not of today.
    assert!(
        said.contains(&format!(
            "[PASS] table public.orders: 20000 rows, backup {id} recorded 20000"
        )),
        "{said}"
    );
    assert!(
        said.contains("[PASS] table public.accounts: 5000 rows"),
        "{said}"
    );
    assert!(
        said.contains("[PASS] consistent point: recovery paused at"),
        "{said}"
    );
    assert!(
        said.contains("[PASS] row counts: at the backup's consistent point")
            && said.contains("3 tables match the backup's record"),
        "{said}"
    );
    assert!(
        said.contains("[PASS] end of archive: recovered through the archive to")
            && said.contains("promoted to timeline 2"),
        "{said}"
    );
    assert!(
        said.contains("[PASS] write: CREATE TABLE, INSERT, DROP"),
        "{said}"
    );
    assert!(said.contains("RTO measured:"), "{said}");
    assert!(
        said.contains("[PASS] table public.spaced: 300 rows"),
        "{said}"
    );

    // What the kept scratch directory shows: a server that listened on no TCP address and let
    // in its own OS user only, by peer authentication over its socket.
    let kept = said
        .lines()
        .find_map(|l| l.strip_prefix("scratch directory kept: "))
        .map(std::path::PathBuf::from)
        .expect("the kept scratch directory is named");
    let mode = std::fs::metadata(&kept).expect("stat").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o700,
        "the socket's directory is private"
    );
    // The tablespace was read from the scratch directory, never from production's.
    let links: Vec<_> = std::fs::read_dir(kept.join("data/pg_tblspc"))
        .expect("pg_tblspc")
        .flatten()
        .map(|e| std::fs::read_link(e.path()).expect("a tablespace link"))
        .collect();
    assert_eq!(links.len(), 1, "{links:?}");
    assert!(links[0].starts_with(&kept), "{links:?}");
    let auto = std::fs::read_to_string(kept.join("data/postgresql.auto.conf")).expect("auto conf");
    assert_eq!(
        last_setting(&auto, "listen_addresses").as_deref(),
        Some("''"),
        "{auto}"
    );
    assert_eq!(
        last_setting(&auto, "archive_mode").as_deref(),
        Some("'off'"),
        "{auto}"
    );
    assert_eq!(
        last_setting(&auto, "recovery_target").as_deref(),
        Some("''"),
        "{auto}"
    );
    assert_eq!(
        last_setting(&auto, "recovery_target_timeline").as_deref(),
        Some("'1'"),
        "{auto}"
    );
    let socket_dir = last_setting(&auto, "unix_socket_directories").expect("socket dir");
    assert_eq!(socket_dir, format!("'{}'", kept.display()), "{auto}");
    let conf_path = |name: &str| {
        let value = last_setting(&auto, name).unwrap_or_else(|| panic!("{name} set: {auto}"));
        std::path::PathBuf::from(value.trim_matches('\''))
    };
    let hba_file = conf_path("hba_file");
    assert!(kept.starts_with(&drills), "{}", kept.display());
    assert!(hba_file.starts_with(&kept), "{}", hba_file.display());
    let hba = std::fs::read_to_string(&hba_file).expect("hba");
    let rules: Vec<&str> = hba
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert!(!rules.is_empty(), "{hba}");
    for rule in &rules {
        let fields: Vec<&str> = rule.split_whitespace().collect();
        assert_eq!(fields.first(), Some(&"local"), "{hba}");
        assert_eq!(fields.get(3), Some(&"peer"), "{hba}");
    }
    let ident = std::fs::read_to_string(conf_path("ident_file")).expect("ident");
    for line in ident
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        assert_eq!(
            line.split_whitespace().nth(1),
            Some("postgres"),
            "only the drill's OS user is mapped: {ident}"
        );
    }
    for text in [&auto, &hba, &ident] {
        assert!(!text.contains("trust"), "{text}");
    }
    assert!(!hba.contains("host"), "{hba}");
    let status = run_as_postgres(
        &format!("{PG_BIN}/pg_ctl"),
        &["-D", kept.join("data").to_str().expect("utf8"), "status"],
    );
    assert_eq!(
        code(&status),
        3,
        "the scratch server still runs: {}",
        text(&status)
    );
    // The promoted copy archived nothing: the repository has no timeline 2.
    let archived: Vec<String> = walk(&scratch.repo.join("wal"))
        .iter()
        .filter_map(|p| Some(p.file_name()?.to_string_lossy().into_owned()))
        .collect();
    assert!(
        !archived.is_empty() && !archived.iter().any(|n| n.starts_with("00000002")),
        "{archived:?}"
    );
    std::fs::remove_dir_all(&kept).expect("remove the kept scratch directory");

    // A backup whose record does not match its data fails, says which table, and is marked.
    forge_manifest(&scratch, &id, |m| {
        m.row_counts.insert("public.orders".into(), 40000);
    });
    let out = scratch.lifeline(&["drill"], &env);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains(&format!(
            "[FAIL] table public.orders: 20000 rows, backup {id} recorded 40000"
        )),
        "{said}"
    );
    assert!(said.contains("[FAIL] row counts:"), "{said}");
    assert!(said.contains(&format!("drill of {id}: FAILED")), "{said}");
    let listed: serde_json::Value =
        serde_json::from_slice(&scratch.lifeline(&["list", "--json"], &[]).stdout).expect("list");
    assert_eq!(listed[0]["restorability"], "FAILED");
}

/// One sample of `lifeline metrics` (without labels).
fn metric(scratch: &Scratch, env: &[(&str, &str)], name: &str) -> f64 {
    let out = scratch.lifeline(&["metrics"], env);
    assert_eq!(code(&out), 0, "metrics: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in metrics:\n{}", text(&out)))
}
