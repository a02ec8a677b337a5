//! What the operator sees when things go wrong around a command: no panic ever reaches them,
//! exit codes keep their contract, and operation logs say how each operation ended.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Scratch, code, succeeded, text};

/// Run lifeline as postgres with its standard output already closed by the reader (as
/// `lifeline status | head -1` once head has exited): every write fails with EPIPE.
fn with_closed_stdout(scratch: &Scratch, args: &[&str]) -> (i32, String) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let owner = std::fs::metadata(&scratch.repo).expect("repo");
    let out = Command::new(&scratch.bin)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("BACKUP_DIR", &scratch.repo)
        .current_dir(scratch.dir.path())
        .uid(std::os::unix::fs::MetadataExt::uid(&owner))
        .gid(std::os::unix::fs::MetadataExt::gid(&owner))
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run lifeline");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_standard_output_ends_reports_quietly() {
    let scratch = Scratch::new();
    for args in [
        vec!["status"],
        vec!["list"],
        vec!["runbook"],
        vec!["verify"],
        vec!["prune", "--dry-run"],
        vec!["--help"],
    ] {
        let (code, stderr) = with_closed_stdout(&scratch, &args);
        // The panic hook turns any panic into "internal error" and exit 1.
        assert!(
            !stderr.contains("panicked")
                && !stderr.contains("Broken pipe")
                && !stderr.contains("internal error"),
            "{args:?} with a closed stdout: {stderr}"
        );
        assert!(
            [0, 141].contains(&code),
            "{args:?} with a closed stdout ended with {code}: {stderr}"
        );
    }
}

#[test]
fn a_thread_the_system_refuses_is_named_as_a_limit_to_raise() {
    let scratch = Scratch::new();
    let segment = scratch.path("000000010000000000000001");
    std::fs::write(&segment, b"not reached").expect("write");
    // One process for the whole user: the shell that sets the limit is it, so the runtime's
    // first thread is refused, as under a pids cgroup or TasksMax that is used up.
    let out = common::run_as_postgres(
        "bash",
        &[
            "-c",
            "ulimit -u 1 && exec \"$0\" \"$@\"",
            scratch.bin.to_str().expect("utf8"),
            "--backup-dir",
            scratch.repo.to_str().expect("utf8"),
            "wal",
            "push",
            segment.to_str().expect("utf8"),
        ],
    );
    // 1: PostgreSQL's archiver retries (above 125 it would stop).
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("the system refused to start a thread")
            && text(&out).contains("ulimit -u")
            && !text(&out).contains("a bug"),
        "{}",
        text(&out)
    );
}

#[test]
fn wal_fetch_refuses_a_name_that_is_not_a_wal_file_before_anything_else() {
    let scratch = Scratch::new();
    let dest = scratch.path("RECOVERYXLOG");
    // restore_command with its arguments swapped (%p %f): recovery must stop, not go on as if
    // the file were simply not archived.
    for name in ["pg_wal/RECOVERYXLOG", "../../etc/passwd", "00000001", ""] {
        let out = scratch.lifeline(
            &[
                "wal",
                "fetch",
                "--cluster",
                "7",
                name,
                dest.to_str().expect("utf8"),
            ],
            &[("LIFELINE_WAL_PREFETCH", "8")],
        );
        assert_eq!(code(&out), 126, "{name:?}: {}", text(&out));
        assert!(text(&out).contains("%f %p"), "{name:?}: {}", text(&out));
        assert!(!dest.exists());
    }
    assert!(
        !scratch.repo.join("spool").exists(),
        "the spool was touched for an invalid name"
    );
}

/// The newest operation log whose name starts with `operation`.
fn newest_log(repo: &Path, operation: &str) -> String {
    let mut logs: Vec<_> = std::fs::read_dir(repo.join("logs"))
        .expect("logs")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(operation))
        })
        .collect();
    logs.sort();
    std::fs::read_to_string(logs.last().expect("a log")).expect("read log")
}

#[test]
fn operation_logs_end_with_the_outcome_and_the_whole_error() {
    let scratch = Scratch::new();
    // A backup of a server that is not there.
    let out = scratch.lifeline(
        &["backup", "postgres"],
        &[("DB_HOST", "127.0.0.1"), ("DB_PORT", "9")],
    );
    assert_ne!(code(&out), 0);
    let log = newest_log(&scratch.repo, "backup_postgres");
    let last = log.lines().last().unwrap_or_default();
    assert!(
        last.contains("ERROR") && last.contains("FAILED") && last.contains("connect"),
        "the backup log does not end with the failure and its cause:\n{log}"
    );
    // A restore that cannot find a backup, and a verify of an empty repository: never empty.
    let out = scratch.restore(&["--type", "full"], &scratch.path("restored"));
    assert_ne!(code(&out), 0);
    let log = newest_log(&scratch.repo, "restore_postgres");
    assert!(
        log.contains("started") && log.contains("ERROR") && log.contains("FAILED"),
        "{log}"
    );
    succeeded(&scratch.lifeline(&["verify"], &[]), "verify");
    let log = newest_log(&scratch.repo, "verify");
    assert!(log.contains("verify: SUCCEEDED"), "{log}");
}

#[test]
fn restore_redis_takes_skip_verify_and_verify_false() {
    let scratch = Scratch::new();
    // Not an RDB a server could load, but it starts like one: the load check would refuse it.
    let rdb = scratch.path("old.rdb");
    std::fs::write(&rdb, b"REDIS0011 not really").expect("write");
    common::chown_postgres(&rdb);
    for (i, flag) in [&["--skip-verify"][..], &["--verify", "false"][..]]
        .iter()
        .enumerate()
    {
        let dir = scratch.path(&format!("redis{i}"));
        let mut args = vec!["--type", "rdb", "--file", rdb.to_str().expect("utf8")];
        args.extend_from_slice(flag);
        let out = scratch.restore_redis(&args, &dir);
        let said = succeeded(&out, &format!("restore redis {flag:?}"));
        assert!(
            !said.contains("[PASS]"),
            "{flag:?} still loaded the files: {said}"
        );
        assert!(dir.join("dump.rdb").exists());
    }
}

#[test]
fn a_bad_value_in_the_configuration_is_refused_with_its_key() {
    let scratch = Scratch::new();
    let config = scratch.dir.path().join("lifeline.toml");
    let config_arg = config.to_str().expect("utf8").to_string();
    for (file, key) in [
        (
            "prune-grace-hours = 18446744073709551615\n",
            "prune-grace-hours",
        ),
        (
            "wal-prefetch-mib = 18446744073709551615\n",
            "wal-prefetch-mib",
        ),
        (
            "wal-wait-seconds = 18446744073709551615\n",
            "wal-wait-seconds",
        ),
        ("wal-wait = \"1 month\"\n", "wal-wait"),
        ("prune-grace = \"36\"\n", "prune-grace"),
        (
            "prune-grace = \"1h\"\nprune-grace-hours = 2\n",
            "keep only prune-grace",
        ),
    ] {
        std::fs::write(&config, file).expect("write");
        common::chown_postgres(&config);
        let out = scratch.lifeline(&["--config", &config_arg, "status"], &[]);
        assert_eq!(code(&out), 2, "{file}: {}", text(&out));
        assert!(text(&out).contains(key), "{key}: {}", text(&out));
    }
    // The environment's duration wins over the file, and the new spelling takes one too.
    std::fs::write(&config, "prune-grace = \"36h\"\n").expect("write");
    for env in [
        ("LIFELINE_PRUNE_GRACE", "soon"),
        ("LIFELINE_PRUNE_GRACE_SECONDS", "x"),
    ] {
        let out = scratch.lifeline(&["--config", &config_arg, "status"], &[env]);
        assert_eq!(code(&out), 2, "{env:?}: {}", text(&out));
        assert!(text(&out).contains(env.0), "{env:?}: {}", text(&out));
    }
    let out = scratch.lifeline(
        &["--config", &config_arg, "prune", "--dry-run"],
        &[("LIFELINE_PRUNE_GRACE", "0s")],
    );
    succeeded(&out, "prune --dry-run with a duration from the environment");
}
