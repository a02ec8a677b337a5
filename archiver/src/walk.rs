//! The walk of PGDATA: what a base backup copies, and where each entry is read from. The
//! manifest records no links: tablespaces are copied as though their version directory lived
//! at `pg_tblspc/<oid>/` in PGDATA, so a restore decides where every byte goes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use storage::manifest::{EntryKind, Tablespace};
use tracing::warn;

use crate::ArchiveError;

/// A file or directory found under PGDATA (or inside a tablespace it links to).
pub(crate) struct WalkEntry {
    /// The path the manifest records, relative to PGDATA.
    pub(crate) rel: String,
    /// Where it is read from.
    pub(crate) abs: PathBuf,
    pub(crate) kind: EntryKind,
    pub(crate) mode: u32,
    pub(crate) size: u64,
    pub(crate) mtime: i64,
}

/// What a walk of PGDATA found.
pub(crate) struct Walk {
    pub(crate) entries: Vec<WalkEntry>,
    /// Tablespace links `pg_tblspc/<oid>`, by oid, with where each one points.
    pub(crate) linked: BTreeMap<u32, PathBuf>,
    /// In-place tablespaces (`allow_in_place_tablespaces`): real directories under
    /// `pg_tblspc`, copied as ordinary entries.
    pub(crate) in_place: BTreeSet<u32>,
}

/// Files omitted wherever they are.
pub(crate) const FILES_OMITTED: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "pg_internal.init",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label.old",
];

/// List what a base backup copies. The manifest records no links: a tablespace link
/// `pg_tblspc/<oid>` becomes a directory holding the tablespace's `version_dir` (read from the
/// link's target; other majors' directories there are not ours), `pg_wal` and the other
/// directories whose contents are omitted become empty directories even when they are links
/// elsewhere (as pg_basebackup writes them), and any other link is skipped with a warning. So a
/// restore never has to recreate a link to a place on the backed-up host.
pub(crate) fn walk_data_dir(
    root: &Path,
    version_dir: &str,
    skipped_contents: &[&str],
) -> Result<Walk, ArchiveError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let io = |path: &Path, source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    };
    let entry = |rel: String, abs: PathBuf, meta: &std::fs::Metadata| WalkEntry {
        rel,
        abs,
        kind: if meta.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::File
        },
        mode: meta.permissions().mode() & 0o7777,
        size: if meta.is_dir() { 0 } else { meta.len() },
        mtime: meta.mtime(),
    };
    let mut walk = Walk {
        entries: Vec::new(),
        linked: BTreeMap::new(),
        in_place: BTreeSet::new(),
    };
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel_dir)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel_dir.is_empty() => continue,
            Err(e) => return Err(io(&dir, e)),
        };
        for dir_entry in entries {
            let dir_entry = dir_entry.map_err(|e| io(&dir, e))?;
            let name = dir_entry.file_name().to_string_lossy().into_owned();
            let abs = dir_entry.path();
            let rel = if rel_dir.is_empty() {
                name.clone()
            } else {
                format!("{rel_dir}/{name}")
            };
            if FILES_OMITTED.contains(&name.as_str()) || name.starts_with("pgsql_tmp") {
                continue;
            }
            let meta = match std::fs::symlink_metadata(&abs) {
                Ok(m) => m,
                // Dropped while we walk: WAL replay recreates whatever state is right.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&abs, e)),
            };
            let is_link = meta.file_type().is_symlink();
            if rel_dir.is_empty() && skipped_contents.contains(&name.as_str()) {
                if !(is_link || meta.is_dir()) {
                    continue;
                }
                let mut item = entry(rel, abs, &meta);
                item.kind = EntryKind::Dir;
                item.size = 0;
                // Whatever its mode here, or wherever it links to, the restored directory is
                // the server's own: private.
                if is_link || name == "pg_wal" {
                    item.mode = 0o700;
                }
                walk.entries.push(item);
                continue;
            }
            let tablespace_oid = (rel_dir == "pg_tblspc")
                .then(|| name.parse::<u32>().ok())
                .flatten();
            if is_link {
                let target = std::fs::read_link(&abs).map_err(|e| io(&abs, e))?;
                let Some(oid) = tablespace_oid else {
                    warn!(
                        "{} is a link to {}: skipped (a base backup copies only PGDATA and its \
                         tablespaces; back that place up separately)",
                        abs.display(),
                        target.display()
                    );
                    continue;
                };
                // Read through the link: a relative target resolves as PostgreSQL resolves it.
                let target_meta = std::fs::metadata(&abs).map_err(|e| {
                    ArchiveError::Precondition(format!(
                        "tablespace link {} points to {}, which cannot be read ({e}): run the \
                         backup as a user that can read every tablespace",
                        abs.display(),
                        target.display()
                    ))
                })?;
                let version_abs = abs.join(version_dir);
                let version_meta = std::fs::metadata(&version_abs)
                    .ok()
                    .filter(std::fs::Metadata::is_dir)
                    .ok_or_else(|| {
                        ArchiveError::Precondition(format!(
                            "tablespace {oid} at {} has no {version_dir} directory, so it does \
                             not belong to this server's PostgreSQL version: check the link {}",
                            target.display(),
                            abs.display()
                        ))
                    })?;
                let mut item = entry(rel.clone(), abs.clone(), &target_meta);
                item.kind = EntryKind::Dir;
                walk.entries.push(item);
                let version_rel = format!("{rel}/{version_dir}");
                walk.entries.push(entry(
                    version_rel.clone(),
                    version_abs.clone(),
                    &version_meta,
                ));
                stack.push((version_abs, version_rel));
                walk.linked.insert(oid, target);
                continue;
            }
            if meta.is_dir() {
                if let Some(oid) = tablespace_oid {
                    walk.in_place.insert(oid);
                }
                stack.push((abs.clone(), rel.clone()));
            } else if !meta.is_file() {
                continue;
            }
            walk.entries.push(entry(rel, abs, &meta));
        }
    }
    walk.entries.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(walk)
}

/// The manifest's tablespaces: each server tablespace matched to its link in PGDATA. A link
/// without a tablespace, or a tablespace without a link, means the walk and the server disagree
/// (PGDATA is not this server's, or a tablespace came or went during the backup): refuse rather
/// than record a backup that cannot be put back as it was.
pub(crate) fn match_tablespaces(
    rows: Vec<(u32, String, String)>,
    walk: &Walk,
) -> Result<Vec<Tablespace>, ArchiveError> {
    let mut out = Vec::new();
    for (oid, name, location) in rows {
        if walk.linked.contains_key(&oid) {
            out.push(Tablespace {
                oid,
                name,
                location,
            });
        } else if !walk.in_place.contains(&oid) {
            return Err(ArchiveError::Precondition(format!(
                "the server has tablespace {name} (oid {oid}, at {location}) but PGDATA has no \
                 pg_tblspc/{oid}: PGDATA is not this server's data directory, or the tablespace \
                 was created during the backup; check PGDATA and run the backup again"
            )));
        }
    }
    for (oid, target) in &walk.linked {
        if !out.iter().any(|t| t.oid == *oid) {
            return Err(ArchiveError::Precondition(format!(
                "PGDATA has pg_tblspc/{oid} (a link to {}) but the server has no tablespace \
                 with oid {oid}: it was dropped during the backup, or the link is stray; run the \
                 backup again, or remove the stray link",
                target.display()
            )));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG15: storage::pg_version::Major = storage::pg_version::MAJORS[2];

    #[test]
    fn walk_skips_what_postgres_says_to_skip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for d in ["base/1", "pg_wal/archive_status", "pg_stat_tmp", "global"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        for f in [
            "base/1/1259",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/x",
            "postmaster.pid",
            "global/pg_control",
            "base/1/pg_internal.init",
        ] {
            std::fs::write(root.join(f), b"x").expect("write");
        }
        let rels: Vec<String> = walk_data_dir(root, "PG_15_202209061", PG15.skip_contents)
            .expect("walk")
            .entries
            .into_iter()
            .map(|e| e.rel)
            .collect();
        assert_eq!(
            rels,
            vec![
                "base",
                "base/1",
                "base/1/1259",
                "global",
                "global/pg_control",
                "pg_stat_tmp",
                "pg_wal"
            ]
        );
    }

    fn mkdirs(root: &Path, dirs: &[&str]) {
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
    }

    fn write_files(root: &Path, files: &[&str]) {
        for f in files {
            std::fs::write(root.join(f), b"x").expect("write");
        }
    }

    /// A data directory as `initdb --waldir` plus a tablespace in a place with a space and a
    /// quote in its name leaves it, plus a stray link and an in-place tablespace.
    #[test]
    fn walk_copies_tablespaces_and_records_no_links() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        let space = dir.path().join("my ts's place");
        let waldir = dir.path().join("wal dir");
        let elsewhere = dir.path().join("elsewhere");
        mkdirs(
            &root,
            &["base/1", "global", "pg_tblspc/16400/PG_15_202209061/5"],
        );
        mkdirs(&space, &["PG_15_202209061/5", "PG_14_202107181/5"]);
        mkdirs(&waldir, &["archive_status"]);
        mkdirs(&elsewhere, &["sub"]);
        write_files(
            &root,
            &[
                "base/1/1259",
                "global/pg_control",
                "pg_tblspc/16400/PG_15_202209061/5/16401",
            ],
        );
        write_files(
            &space,
            &[
                "PG_15_202209061/5/16390",
                "PG_15_202209061/5/16390_fsm",
                "PG_14_202107181/5/999",
            ],
        );
        write_files(&waldir, &["000000010000000000000001"]);
        write_files(&elsewhere, &["sub/secret"]);
        std::fs::set_permissions(&space, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        std::fs::set_permissions(&waldir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        symlink(&space, root.join("pg_tblspc/16389")).expect("link");
        symlink(&waldir, root.join("pg_wal")).expect("link");
        symlink(&elsewhere, root.join("base/stray")).expect("link");
        symlink(elsewhere.join("sub/secret"), root.join("global/stray_file")).expect("link");
        symlink(&elsewhere, root.join("pg_tblspc/not_an_oid")).expect("link");

        let walk = walk_data_dir(&root, "PG_15_202209061", PG15.skip_contents).expect("walk");
        let got: Vec<(&str, EntryKind)> = walk
            .entries
            .iter()
            .map(|e| (e.rel.as_str(), e.kind))
            .collect();
        use EntryKind::{Dir, File};
        assert_eq!(
            got,
            vec![
                ("base", Dir),
                ("base/1", Dir),
                ("base/1/1259", File),
                ("global", Dir),
                ("global/pg_control", File),
                ("pg_tblspc", Dir),
                ("pg_tblspc/16389", Dir),
                ("pg_tblspc/16389/PG_15_202209061", Dir),
                ("pg_tblspc/16389/PG_15_202209061/5", Dir),
                ("pg_tblspc/16389/PG_15_202209061/5/16390", File),
                ("pg_tblspc/16389/PG_15_202209061/5/16390_fsm", File),
                ("pg_tblspc/16400", Dir),
                ("pg_tblspc/16400/PG_15_202209061", Dir),
                ("pg_tblspc/16400/PG_15_202209061/5", Dir),
                ("pg_tblspc/16400/PG_15_202209061/5/16401", File),
                ("pg_wal", Dir),
            ]
        );
        let find = |rel: &str| {
            walk.entries
                .iter()
                .find(|e| e.rel == rel)
                .expect("entry recorded")
        };
        assert_eq!(
            find("pg_tblspc/16389/PG_15_202209061/5/16390").abs,
            root.join("pg_tblspc/16389/PG_15_202209061/5/16390"),
            "tablespace files are read from the tablespace (through its link)"
        );
        assert_eq!(
            std::fs::canonicalize(&find("pg_tblspc/16389/PG_15_202209061/5/16390").abs)
                .expect("canonical"),
            std::fs::canonicalize(space.join("PG_15_202209061/5/16390")).expect("canonical"),
        );
        assert_eq!(find("pg_tblspc/16389").mode, 0o750, "the target's mode");
        assert_eq!(find("pg_wal").mode, 0o700);
        assert_eq!(find("pg_wal").size, 0);
        assert_eq!(walk.linked, BTreeMap::from([(16389, space.clone())]));
        assert_eq!(walk.in_place, BTreeSet::from([16400]));
    }

    #[test]
    fn a_tablespace_link_without_this_version_is_refused() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        let space = dir.path().join("ts");
        mkdirs(&root, &["pg_tblspc"]);
        mkdirs(&space, &["PG_14_202107181"]);
        symlink(&space, root.join("pg_tblspc/16389")).expect("link");
        let err = walk_data_dir(&root, "PG_15_202209061", PG15.skip_contents)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("16389") && err.contains("PG_15_202209061"),
            "{err}"
        );
    }

    #[test]
    fn tablespaces_match_their_links_or_the_backup_refuses() {
        let walk = |linked: &[u32], in_place: &[u32]| Walk {
            entries: Vec::new(),
            linked: linked
                .iter()
                .map(|o| (*o, PathBuf::from(format!("/ts/{o}"))))
                .collect(),
            in_place: in_place.iter().copied().collect(),
        };
        let row = |oid: u32, name: &str| (oid, name.to_string(), format!("/ts/{oid}"));
        let got = match_tablespaces(
            vec![row(1, "a"), row(2, "b"), row(3, "inplace")],
            &walk(&[1, 2], &[3]),
        )
        .expect("matched");
        assert_eq!(
            got.iter()
                .map(|t| (t.oid, t.name.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "a"), (2, "b")],
            "in-place tablespaces are plain directories, not listed"
        );
        let err = match_tablespaces(vec![row(1, "a"), row(2, "b")], &walk(&[1], &[]))
            .expect_err("a tablespace without a link")
            .to_string();
        assert!(
            err.contains("tablespace b") && err.contains("pg_tblspc/2"),
            "{err}"
        );
        let err = match_tablespaces(vec![row(1, "a")], &walk(&[1, 7], &[]))
            .expect_err("a link without a tablespace")
            .to_string();
        assert!(
            err.contains("pg_tblspc/7") && err.contains("/ts/7"),
            "{err}"
        );
    }
}
