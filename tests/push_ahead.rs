//! Archive look-ahead: `wal push --ahead` (the detached worker every `wal push` starts) stores
//! the segments PostgreSQL has marked ready, byte for byte, and touches nothing in pg_wal;
//! PostgreSQL's own `wal push` of each then only confirms it.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use common::{Pg, Scratch, code, text};

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

fn ready(pg: &Pg) -> Vec<String> {
    listing(&pg.data.join("pg_wal/archive_status"))
        .into_iter()
        .filter_map(|n| n.strip_suffix(".ready").map(str::to_string))
        .filter(|n| n.len() == 24)
        .collect()
}

#[test]
fn look_ahead_stores_ready_segments_exactly_and_leaves_pg_wal_alone() {
    let scratch = Scratch::new();
    let pg = Pg::init(&scratch, "primary");
    // Archiving fails for now, so that segments wait, marked ready.
    let conf = pg.data.join("postgresql.conf");
    let mut settings = std::fs::read_to_string(&conf).expect("read conf");
    settings.push_str("archive_command = 'false'\n");
    std::fs::write(&conf, settings).expect("write conf");
    pg.start();
    pg.psql("CREATE TABLE t (id int, payload text)");
    for round in 0..5 {
        pg.psql(&format!(
            "INSERT INTO t SELECT g, md5(g::text) FROM generate_series({}, {}) g",
            round * 1000,
            round * 1000 + 999
        ));
        pg.psql("SELECT pg_switch_wal()");
    }
    let waiting = ready(&pg);
    assert!(waiting.len() >= 5, "segments waiting: {waiting:?}");
    let pg_wal_before = listing(&pg.data.join("pg_wal"));
    let status_before = listing(&pg.data.join("pg_wal/archive_status"));

    // The worker, as `wal push` starts it: in the data directory, as postgres.
    let (uid, gid) = (
        std::fs::metadata(&pg.data).expect("data").uid(),
        std::fs::metadata(&pg.data).expect("data").gid(),
    );
    let first = format!("pg_wal/{}", waiting[0]);
    let out = Command::new(&scratch.bin)
        .args(["--backup-dir", scratch.repo.to_str().expect("utf8")])
        .args(["wal", "push", "--ahead", &first])
        .env_clear()
        .env("LIFELINE_WAL_PUSH_AHEAD", "2")
        .current_dir(&pg.data)
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run the worker");
    assert_eq!(code(&out), 0, "{}", text(&out));

    // Exactly two segments, from the second after the one being pushed, byte for byte.
    let stored = |name: &str| {
        let dest = scratch.path(&format!("fetched-{name}"));
        let out = scratch.lifeline(
            &["wal", "fetch", name, dest.to_str().expect("utf8")],
            &[("LIFELINE_WAL_PREFETCH", "0")],
        );
        (code(&out) == 0).then(|| std::fs::read(&dest).expect("fetched"))
    };
    for name in &waiting[..2] {
        assert!(
            stored(name).is_none(),
            "{name}: the current segment and the next are their own pushes'"
        );
    }
    for name in &waiting[2..4] {
        let original = std::fs::read(pg.data.join("pg_wal").join(name)).expect("segment");
        assert!(stored(name) == Some(original), "{name} not stored exactly");
    }
    assert!(
        stored(&waiting[4]).is_none(),
        "the limit of 2 segments was exceeded"
    );
    // Nothing in pg_wal changed: PostgreSQL keeps its own bookkeeping.
    assert_eq!(listing(&pg.data.join("pg_wal")), pg_wal_before);
    assert_eq!(
        listing(&pg.data.join("pg_wal/archive_status")),
        status_before
    );

    // Archiving works again: every segment is archived, those stored ahead only confirmed.
    pg.psql(&format!(
        "ALTER SYSTEM SET archive_command = '{} {} wal push %p'",
        scratch.bin.display(),
        scratch.repository_args()
    ));
    pg.psql("SELECT pg_reload_conf()");
    pg.switch_and_archive();
    // (`false` failed before; lifeline never did.)
    let failed_lifeline = format!("failed archive command was: {}", scratch.bin.display());
    assert!(!pg.log().contains(&failed_lifeline), "{}", pg.log());
    for name in &waiting {
        assert!(stored(name).is_some(), "{name} not archived");
    }
    assert!(
        pg.log()
            .contains("already archived with identical contents"),
        "no segment was confirmed instead of stored again:\n{}",
        pg.log()
    );
}
