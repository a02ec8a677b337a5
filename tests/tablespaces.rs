//! Issue 11, point 1: a cluster with a tablespace and an external WAL directory
//! (`initdb --waldir`) is backed up whole, and a restore of it on the same host never touches
//! production's tablespace or WAL: tablespaces go where they are mapped (or back to their
//! original place only when that place is missing or empty), `pg_wal` is the copy's own.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use storage::manifest::{BackupManifest, EntryKind, Tablespace};

const TABLESPACE: &str = "ledger_space";

/// A running cluster made with `initdb --waldir`, holding a table and its index in tablespace
/// `ledger_space`, whose location has a space in its name (PostgreSQL refuses a quote there;
/// the mapped locations below have one).
struct Production {
    pg: Pg,
    waldir: PathBuf,
    location: PathBuf,
    oid: u32,
}

fn production(scratch: &Scratch) -> Production {
    let waldir = scratch.path("prod wal");
    let location = scratch.path("prod ts place");
    std::fs::create_dir(&location).expect("tablespace dir");
    chown_postgres(&location);
    let pg = Pg::init_with(
        scratch,
        "prod",
        &["--waldir", waldir.to_str().expect("utf8")],
    );
    pg.start();
    let quoted = location.to_str().expect("utf8").replace('\'', "''");
    pg.psql(&format!(
        "CREATE TABLESPACE {TABLESPACE} LOCATION '{quoted}'"
    ));
    pg.psql(&format!(
        "CREATE TABLE ledger (id int PRIMARY KEY USING INDEX TABLESPACE {TABLESPACE}, note text) \
         TABLESPACE {TABLESPACE}"
    ));
    pg.psql("INSERT INTO ledger SELECT g, 'entry ' || g FROM generate_series(1, 2000) g");
    pg.psql("CREATE TABLE plain AS SELECT g AS id FROM generate_series(1, 300) g");
    let oid = pg
        .psql(&format!(
            "SELECT oid FROM pg_tablespace WHERE spcname = '{TABLESPACE}'"
        ))
        .parse()
        .expect("oid");
    Production {
        pg,
        waldir,
        location,
        oid,
    }
}

/// The one backup in the scratch repository.
fn only_manifest(scratch: &Scratch) -> BackupManifest {
    let ids: Vec<String> = std::fs::read_dir(scratch.repo.join("backups"))
        .expect("backups dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 1, "one backup: {ids:?}");
    let key = format!("backups/{}/manifest", ids[0]);
    let framed = std::fs::read(scratch.repo.join(&key)).expect("manifest object");
    let plain = storage::object::decode(&key, &framed).expect("manifest decodes");
    BackupManifest::from_json(&key, &plain).expect("manifest")
}

#[test]
fn backup_copies_each_tablespace_and_records_no_links() {
    let scratch = Scratch::new();
    let prod = production(&scratch);
    // Another major's directory in the same location is not this cluster's to copy.
    let other_major = prod.location.join("PG_14_202107181");
    std::fs::create_dir_all(other_major.join("5")).expect("mkdir");
    std::fs::write(other_major.join("5/999"), b"not ours").expect("write");
    chown_postgres(&other_major);
    // A link someone left in PGDATA: not followed, not recorded.
    let elsewhere = scratch.path("elsewhere");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    std::fs::write(elsewhere.join("unrelated"), b"x").expect("write");
    chown_postgres(&elsewhere);
    std::os::unix::fs::symlink(&elsewhere, prod.pg.data.join("stray link")).expect("symlink");

    let out = backup(&scratch, &prod.pg);
    assert!(
        out.contains("stray link"),
        "the skipped link is named: {out}"
    );
    let manifest = only_manifest(&scratch);
    assert_eq!(
        manifest.tablespaces,
        vec![Tablespace {
            oid: prod.oid,
            name: TABLESPACE.into(),
            location: prod.location.to_str().expect("utf8").into(),
        }]
    );
    let links: Vec<&str> = manifest
        .files
        .iter()
        .filter(|f| f.kind == EntryKind::Symlink || f.link_target.is_some())
        .map(|f| f.path.as_str())
        .collect();
    assert!(links.is_empty(), "no link entries: {links:?}");
    let pg_wal = manifest
        .files
        .iter()
        .find(|f| f.path == "pg_wal")
        .expect("pg_wal recorded");
    assert_eq!((pg_wal.kind, pg_wal.mode), (EntryKind::Dir, 0o700));
    assert!(
        !manifest.files.iter().any(|f| f.path.starts_with("pg_wal/")),
        "no WAL contents"
    );
    assert!(
        !manifest
            .files
            .iter()
            .any(|f| f.path.contains("stray link") || f.path.contains("PG_14_")),
        "neither the stray link nor another major's directory is copied"
    );
    // The table's file is in the backup under the path PostgreSQL gives it, with its bytes.
    let relpath = prod.pg.psql("SELECT pg_relation_filepath('ledger')");
    assert!(
        relpath.starts_with(&format!("pg_tblspc/{}/PG_15_", prod.oid)),
        "{relpath}"
    );
    let file = manifest
        .files
        .iter()
        .find(|f| f.path == relpath)
        .unwrap_or_else(|| panic!("{relpath} in the manifest"));
    assert_eq!(file.kind, EntryKind::File);
    assert_eq!(
        file.size,
        std::fs::metadata(prod.pg.data.join(&relpath))
            .expect("table file")
            .len()
    );
    assert!(file.size > 0 && (!file.blocks.is_empty() || file.bundle_offset.is_some()));
    let link = manifest
        .files
        .iter()
        .find(|f| f.path == format!("pg_tblspc/{}", prod.oid))
        .expect("the tablespace's directory");
    assert_eq!(link.kind, EntryKind::Dir);
    assert_eq!(
        manifest.tablespace_map.as_deref().map(str::trim),
        Some(format!("{} {}", prod.oid, prod.location.display()).as_str()),
        "pg_backup_stop's tablespace_map is kept for reference"
    );
}

#[test]
fn restores_of_a_tablespace_cluster_never_touch_production() {
    let scratch = Scratch::new();
    let prod = production(&scratch);
    let at_backup = prod.pg.snapshot();
    backup(&scratch, &prod.pg);
    prod.pg.psql(
        "INSERT INTO ledger SELECT g, 'after backup ' || g FROM generate_series(2001, 2500) g",
    );
    prod.pg.switch_and_archive();

    // (a) The original location is production's, in use: without a map the restore refuses
    // before writing anything, and says which tablespace and which flag.
    let refused = scratch.path("copy refused");
    let out = scratch.restore(&["--type", "full"], &refused);
    let message = text(&out);
    assert!(!out.status.success(), "restore without a map: {message}");
    assert!(
        message.contains(TABLESPACE) && message.contains("--tablespace-map"),
        "names the tablespace and the flag: {message}"
    );
    assert!(
        std::fs::read_dir(&refused).map_or(true, |mut d| d.next().is_none()),
        "nothing written into {}",
        refused.display()
    );

    // (b) Mapped, the copy runs beside production on the same host with the backup's rows and
    // its own tablespace and WAL.
    let map_one = scratch.path("copy one's ts");
    let map_arg = format!("{TABLESPACE}={}", map_one.display());
    let copy = scratch.restore_and_recover(
        &["--type", "full", "--tablespace-map", &map_arg],
        "copy one",
        "restore with --tablespace-map",
    );
    assert_eq!(copy.snapshot(), at_backup, "the copy has the backup's rows");
    assert_links_to(&copy.data.join(format!("pg_tblspc/{}", prod.oid)), &map_one);
    assert_real_dir(&copy.data.join("pg_wal"));
    assert_links_stay_within(&copy.data, &[&copy.data, &map_one]);
    assert_tablespace_map_names(&copy.data, &map_one, &prod.location);
    write_marker(&copy, "written-by-copy-one");
    prod.pg.psql(
        "INSERT INTO ledger SELECT g, 'while copy ran ' || g FROM generate_series(2501, 2600) g",
    );
    copy.stop();
    drop(copy);
    assert!(
        holds(&map_one, b"written-by-copy-one"),
        "the copy writes into its own tablespace"
    );

    let all_dir = scratch.path("copy two's tablespaces");
    let waldir = scratch.path("copy two wal");
    let copy = scratch.restore_and_recover(
        &[
            "--type",
            "full",
            "--tablespace-map-all",
            all_dir.to_str().expect("utf8"),
            "--waldir",
            waldir.to_str().expect("utf8"),
        ],
        "copy two",
        "restore with --tablespace-map-all and --waldir",
    );
    assert_eq!(copy.snapshot(), at_backup, "the copy has the backup's rows");
    let mapped = all_dir.join(TABLESPACE);
    assert_links_to(&copy.data.join(format!("pg_tblspc/{}", prod.oid)), &mapped);
    assert_links_to(&copy.data.join("pg_wal"), &waldir);
    assert_links_stay_within(&copy.data, &[&copy.data, &all_dir, &waldir]);
    assert_tablespace_map_names(&copy.data, &mapped, &prod.location);
    write_marker(&copy, "written-by-copy-two");
    copy.stop();
    drop(copy);
    assert!(holds(&mapped, b"written-by-copy-two"));
    assert!(
        holds(&waldir, b"written-by-copy-two"),
        "the copy's WAL is in --waldir"
    );

    // Neither copy wrote a byte into production's tablespace or WAL, and production survives a
    // crash with every row it had.
    for marker in [&b"written-by-copy-one"[..], b"written-by-copy-two"] {
        for dir in [&prod.location, &prod.waldir] {
            assert!(
                !holds(dir, marker),
                "a copy wrote into production's {}",
                dir.display()
            );
        }
    }
    let before_crash = prod.pg.snapshot();
    assert_eq!(prod.pg.psql("SELECT count(*) FROM ledger"), "2600");
    prod.pg.crash();
    prod.pg.start();
    assert_eq!(
        prod.pg.snapshot(),
        before_crash,
        "production after a crash restart has every row, row for row"
    );

    // (c) With the original location gone (the host lost it), an unmapped restore puts the
    // tablespace back where it was.
    prod.pg.stop();
    std::fs::rename(&prod.location, scratch.path("prod ts moved away")).expect("move away");
    let copy = scratch.restore_and_recover(
        &["--type", "full"],
        "copy three",
        "restore to the original, now missing, location",
    );
    assert_eq!(copy.snapshot(), at_backup, "the copy has the backup's rows");
    assert_links_to(
        &copy.data.join(format!("pg_tblspc/{}", prod.oid)),
        &prod.location,
    );
    assert_real_dir(&copy.data.join("pg_wal"));
    assert_links_stay_within(&copy.data, &[&copy.data, &prod.location]);
}

fn assert_links_to(link: &Path, expected: &Path) {
    let meta =
        std::fs::symlink_metadata(link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
    assert!(
        meta.file_type().is_symlink(),
        "{} is a link",
        link.display()
    );
    assert_eq!(
        std::fs::canonicalize(link).expect("link resolves"),
        std::fs::canonicalize(expected).expect("expected dir exists"),
        "{} points at {}",
        link.display(),
        expected.display()
    );
}

fn assert_real_dir(path: &Path) {
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        meta.file_type().is_dir(),
        "{} is a real directory, not a link",
        path.display()
    );
}

/// Every link under `root` (not followed) resolves inside one of `allowed`.
fn assert_links_stay_within(root: &Path, allowed: &[&Path]) {
    let allowed: Vec<PathBuf> = allowed
        .iter()
        .map(|p| std::fs::canonicalize(p).expect("allowed dir exists"))
        .collect();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            if meta.file_type().is_symlink() {
                let target = std::fs::canonicalize(&path)
                    .unwrap_or_else(|e| panic!("link {} dangles: {e}", path.display()));
                assert!(
                    allowed.iter().any(|a| target.starts_with(a)),
                    "{} links to {}, outside {allowed:?}",
                    path.display(),
                    target.display()
                );
            } else if meta.is_dir() {
                stack.push(path);
            }
        }
    }
}

/// The restored `tablespace_map` (renamed `.old` once recovery used it) names the mapped place,
/// never production's.
fn assert_tablespace_map_names(data: &Path, mapped: &Path, original: &Path) {
    let mut found = false;
    for name in ["tablespace_map", "tablespace_map.old"] {
        let Ok(map) = std::fs::read_to_string(data.join(name)) else {
            continue;
        };
        found = true;
        assert!(
            !map.contains(original.to_str().expect("utf8")),
            "{name} names production's location: {map}"
        );
        assert!(
            map.contains(mapped.to_str().expect("utf8")),
            "{name} names the mapped location: {map}"
        );
    }
    assert!(
        found,
        "the restore wrote a tablespace_map into {}",
        data.display()
    )
}

/// A row only this copy has, flushed to its files.
fn write_marker(copy: &Pg, marker: &str) {
    copy.psql(&format!("INSERT INTO ledger VALUES (900001, '{marker}')"));
    copy.psql("CHECKPOINT");
}

/// Whether any file under `dir` contains `needle`.
fn holds(dir: &Path, needle: &[u8]) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    return true;
                }
            }
        }
    }
    false
}
