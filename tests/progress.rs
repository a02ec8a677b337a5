//! Progress without a terminal (issue 16, point 4): backups and restores log a progress line
//! every 10 s (every 20 ms here, through the hidden LIFELINE_PROGRESS_INTERVAL) and end with a
//! line whose bytes are what the operation moved; an operation shorter than the interval logs
//! none, and stdout (with `--json` on it) never carries any.

mod common;

use common::{Pg, Scratch, env_refs, seed, succeeded};

const FAST: (&str, &str) = ("LIFELINE_PROGRESS_INTERVAL", "20");

/// The progress lines `operation` logged on stderr.
fn progress_lines<'a>(out: &'a std::process::Output, operation: &str) -> Vec<&'a str> {
    let stderr = std::str::from_utf8(&out.stderr).expect("utf8 stderr");
    let marker = format!("progress: {operation} ");
    stderr.lines().filter(|l| l.contains(&marker)).collect()
}

/// A numeric field of a log line: ` bytes=N`, ` total_bytes=N`.
fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The last progress line of `operation`, which must be its closing one.
fn last_line<'a>(out: &'a std::process::Output, operation: &str) -> &'a str {
    let lines = progress_lines(out, operation);
    let last = lines
        .last()
        .copied()
        .unwrap_or_else(|| panic!("no progress line for {operation}: {}", common::text(out)));
    assert!(
        last.contains("ended at"),
        "{operation} did not end: {lines:#?}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("progress:"),
        "progress on stdout"
    );
    last
}

fn listed(scratch: &Scratch, kind: &str) -> serde_json::Value {
    let out = scratch.lifeline(&["list", "--json"], &[]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json");
    list.as_array()
        .expect("a list")
        .iter()
        .find(|b| b["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} backup in {list}"))
        .clone()
}

#[test]
fn backups_and_restores_log_progress_without_a_terminal() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    pg.switch_and_archive();
    let db = pg.db_env();
    let mut env = env_refs(&db);

    // Ten seconds between lines: a backup of a small cluster ends before the first.
    let out = scratch.lifeline(&["backup", "postgres"], &env);
    succeeded(&out, "quiet backup");
    assert!(
        progress_lines(&out, "backup").is_empty(),
        "{:#?}",
        progress_lines(&out, "backup")
    );

    env.push(FAST);
    let out = scratch.lifeline(&["backup", "postgres"], &env);
    succeeded(&out, "base backup");
    let line = last_line(&out, "backup");
    let newest = scratch.lifeline(&["list", "--json"], &[]);
    let newest: serde_json::Value = serde_json::from_slice(&newest.stdout).expect("list --json");
    let newest = &newest[0];
    let size = newest["size_bytes"].as_u64().expect("size");
    assert!(size > 0, "{newest}");
    assert_eq!(field(line, "bytes"), Some(size), "{line}");
    // The total is what the walk found, known from the start.
    assert!(field(line, "total_bytes").is_some_and(|t| t > 0), "{line}");
    assert!(line.contains(" of "), "{line}");

    let id = newest["backup_id"].as_str().expect("id");
    let dir = scratch.path("restored");
    let dir_text = dir.to_str().expect("utf8");
    let out = scratch.lifeline(
        &[
            "restore",
            "postgres",
            "--type",
            "full",
            "--from",
            id,
            "--data-dir",
            dir_text,
        ],
        &[FAST],
    );
    succeeded(&out, "restore");
    let line = last_line(&out, "restore");
    assert_eq!(field(line, "bytes"), Some(size), "{line}");
    assert_eq!(field(line, "total_bytes"), Some(size), "{line}");
    assert!(line.contains("(100%)"), "{line}");

    // A dump's size is unknown until pg_dump ends: bytes and rate, no total.
    let out = scratch.lifeline(&["backup", "postgres", "--kind", "dump"], &env);
    succeeded(&out, "dump");
    let line = last_line(&out, "backup");
    let dump = listed(&scratch, "dump");
    assert_eq!(
        field(line, "bytes"),
        dump["size_bytes"].as_u64(),
        "{line} {dump}"
    );
    assert_eq!(field(line, "total_bytes"), None, "{line}");
    assert!(!line.contains(" of "), "{line}");
}
