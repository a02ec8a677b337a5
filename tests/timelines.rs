//! Timelines and WAL continuity against real PostgreSQL 15 clusters: a segment lost from the
//! middle of the archive is named by `verify` and `status` and refused by `--until latest`; a
//! repository a restored copy archived into (timeline 2) restores production's history with
//! `--target-timeline 1`.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{Pg, Scratch, backup, code, server_second, succeeded, text};

/// Wait until the server has archived every WAL file it marked ready (history files included,
/// which `switch_and_archive` alone may count instead of the segment).
fn wait_archived(pg: &Pg) {
    let status = pg.data.join("pg_wal/archive_status");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = std::fs::read_dir(&status)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with(".ready"))
            })
            .unwrap_or(true);
        if !ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "WAL never archived; log:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Write some rows and archive the segment they are in.
fn write_and_archive(pg: &Pg, sql: &str) {
    pg.psql(sql);
    pg.switch_and_archive();
    wait_archived(pg);
}

/// The directory holding the archived WAL of timeline `timeline` of the repository's cluster.
fn wal_dir(scratch: &Scratch, timeline: u32) -> PathBuf {
    let clusters: Vec<_> = std::fs::read_dir(scratch.repo.join("wal"))
        .expect("wal dir")
        .filter_map(Result::ok)
        .collect();
    assert_eq!(clusters.len(), 1, "one cluster archives here");
    clusters[0].path().join(format!("{timeline:08X}"))
}

/// The complete segments archived on a timeline, in order.
fn segments(scratch: &Scratch, timeline: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(wal_dir(scratch, timeline))
        .expect("timeline dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    names.sort();
    names
}

#[test]
fn a_segment_lost_from_the_middle_is_named_and_until_latest_refuses() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    pg.psql("CREATE TABLE t (id int PRIMARY KEY, v text)");
    pg.psql("INSERT INTO t SELECT g, 'before' FROM generate_series(1, 1000) g");
    backup(&scratch, &pg);
    let at_backup = segments(&scratch, 1);
    // A target inside the first segment after the backup, which the gap does not touch.
    pg.psql("INSERT INTO t VALUES (5001, 'before the target')");
    std::thread::sleep(Duration::from_millis(1100));
    let before_gap = pg.snapshot();
    let target = server_second(&pg);
    std::thread::sleep(Duration::from_millis(1100));
    for round in 0..4 {
        write_and_archive(
            &pg,
            &format!(
                "INSERT INTO t SELECT g, 'round {round}' FROM generate_series({0}, {0} + 999) g",
                10_000 * (round + 1)
            ),
        );
    }
    let after: Vec<String> = segments(&scratch, 1)
        .into_iter()
        .filter(|s| !at_backup.contains(s))
        .collect();
    assert!(after.len() >= 4, "four segments archived: {after:?}");
    // Lost after the backup and before the newest segment: recovery would stop at it.
    let lost = after[1].clone();
    std::fs::remove_file(wal_dir(&scratch, 1).join(&lost)).expect("delete segment");

    for args in [&["verify"][..], &["verify", "--read-data"][..]] {
        let out = scratch.lifeline(args, &[]);
        assert_eq!(
            code(&out),
            1,
            "{args:?} must fail on a lost segment: {}",
            text(&out)
        );
        assert!(
            text(&out).contains(&format!("segment {lost} missing on timeline 1")),
            "{args:?} names the lost segment: {}",
            text(&out)
        );
    }

    // A gap is an alert: status says so and exits 1.
    let out = scratch.lifeline(&["status"], &[]);
    let status = text(&out);
    assert_eq!(code(&out), 1, "{status}");
    assert!(
        status.contains(&format!("WAL gap: first missing {lost} on timeline 1"))
            && status.contains("ALERT CRITICAL: WAL gap"),
        "status shows the gap: {status}"
    );
    let out = scratch.lifeline(&["status", "--json"], &[]);
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert_eq!(json["wal_chain"]["first_missing"], lost.as_str(), "{json}");
    assert_eq!(json["wal_chain"]["missing_segments"], 1, "{json}");
    assert_eq!(json["wal_chain"]["whole"], false, "{json}");

    let dir = scratch.path("restored");
    let out = scratch.restore(&["--type", "pitr", "--until", "latest"], &dir);
    assert_ne!(
        code(&out),
        0,
        "--until latest crossed a gap: {}",
        text(&out)
    );
    assert!(
        text(&out).contains(&lost) && text(&out).contains("--until"),
        "the refusal names the segment and suggests --until before it: {}",
        text(&out)
    );
    assert!(
        !dir.exists(),
        "the refused restore wrote into the data directory"
    );

    // What the refusal suggests: a time before the gap restores.
    let restored = scratch.restore_and_recover(
        &["--type", "pitr", "--until", &target],
        "before-gap",
        "restore to a time before the gap",
    );
    assert_eq!(restored.snapshot(), before_gap);
}

#[test]
fn a_polluted_repository_restores_production_with_target_timeline_1() {
    let scratch = Scratch::new();
    let production = Pg::running(&scratch, "production");
    production.psql("CREATE TABLE t (id int PRIMARY KEY, who text)");
    production.psql("INSERT INTO t SELECT g, 'A' FROM generate_series(1, 100) g");
    backup(&scratch, &production);

    // A copy started for a test with production's archive_command: on promotion it archives
    // 00000002.history and, after its own writes, timeline-2 segments into the same repository.
    let copy = scratch.restore_and_recover(
        &["--type", "full", "--archive-mode", "preserve"],
        "copy",
        "restore of the copy",
    );
    assert_eq!(
        copy.psql("SELECT timeline_id FROM pg_control_checkpoint()"),
        "2"
    );
    write_and_archive(
        &copy,
        "INSERT INTO t SELECT g, 'B' FROM generate_series(1001, 1100) g",
    );
    let copy_rows = copy.snapshot();
    copy.stop();
    assert!(
        wal_dir(&scratch, 2).join("00000002.history").exists(),
        "the copy archived its history file"
    );

    // Production goes on on timeline 1.
    write_and_archive(
        &production,
        "INSERT INTO t SELECT g, 'C' FROM generate_series(2001, 2100) g",
    );
    let production_rows = production.snapshot();
    assert_ne!(production_rows, copy_rows);

    // The default follows the newest timeline, and says which other one continues.
    let dir = scratch.path("latest");
    let out = scratch.restore(&["--type", "pitr", "--until", "latest"], &dir);
    let said = succeeded(&out, "restore of the latest timeline");
    assert!(
        said.contains("recovery follows timeline 2")
            && said.contains("timeline 1 (the backup's own) also continues after this backup")
            && said.contains("--target-timeline 1 (or current) follows it"),
        "the restore names timeline 1 and the flag that selects it: {said}"
    );
    let restored = Pg::recover(&scratch, dir);
    assert_eq!(restored.snapshot(), copy_rows, "latest follows timeline 2");
    restored.stop();

    // Explicit timelines whatever the newest: a server restored before may have archived a
    // timeline of its own (until restores default to --archive-mode off).
    let restored = scratch.restore_and_recover(
        &[
            "--type",
            "pitr",
            "--until",
            "latest",
            "--target-timeline",
            "1",
        ],
        "production-again",
        "restore of timeline 1",
    );
    assert_eq!(
        restored.snapshot(),
        production_rows,
        "--target-timeline 1 gives production's rows (A and C, not B)"
    );
    restored.stop();

    let restored = scratch.restore_and_recover(
        &[
            "--type",
            "pitr",
            "--until",
            "latest",
            "--target-timeline",
            "current",
        ],
        "production-current",
        "restore of the backup's own timeline",
    );
    assert_eq!(
        restored.snapshot(),
        production_rows,
        "--target-timeline current gives production's rows"
    );
    restored.stop();

    // A timeline the archive knows nothing of is refused before anything is written.
    let dir = scratch.path("nowhere");
    let out = scratch.restore(
        &[
            "--type",
            "pitr",
            "--until",
            "latest",
            "--target-timeline",
            "9",
        ],
        &dir,
    );
    assert_ne!(code(&out), 0, "timeline 9 accepted: {}", text(&out));
    assert!(
        text(&out).contains("--target-timeline 9 cannot be followed")
            && text(&out).contains("can follow timeline 1, 2"),
        "the refusal says which timelines can be followed: {}",
        text(&out)
    );
    assert!(
        !dir.exists(),
        "the refused restore wrote into the data directory"
    );

    let restored = scratch.restore_and_recover(
        &[
            "--type",
            "pitr",
            "--until",
            "latest",
            "--target-timeline",
            "2",
        ],
        "copy-again",
        "restore of timeline 2",
    );
    assert_eq!(
        restored.snapshot(),
        copy_rows,
        "--target-timeline 2 gives the copy's rows"
    );
    restored.stop();
}
