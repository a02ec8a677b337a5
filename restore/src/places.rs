//! Where each part of a base backup goes: the data directory, one directory per tablespace
//! (mapped, or its original location when that is missing or empty) and, with `--waldir`,
//! `pg_wal`. Every place is decided and checked before the first write, and every write goes
//! straight to its real place: the restore never writes through a link, and the only links it
//! makes are `pg_tblspc/<oid>` and `pg_wal`, to places chosen here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use storage::manifest::{BackupManifest, Tablespace};

use crate::RestoreError;
use crate::restore_base::{RestoreOptions, TablespaceMapping};
use crate::validate::tablespace_link_oid;

/// The control file is written under a temporary name and renamed last: without it
/// PostgreSQL will not start, so a half-restored directory never looks complete.
pub(crate) const CONTROL_FILE: &str = "global/pg_control";
pub(crate) const CONTROL_PARTIAL: &str = "global/pg_control.lifeline-partial";

/// A directory the restore writes into, and whether it was there (empty) before.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    pub dir: PathBuf,
    pub existed: bool,
}

impl Place {
    /// Back to how it was: removed if the restore made it, emptied if it was there.
    fn clean_up(&self) {
        if !self.existed {
            let _ = std::fs::remove_dir_all(&self.dir);
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            // Links are removed, never followed.
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
        }
    }

    /// Create the directory (and, for a location named by the operator, its parents).
    fn create(&self) -> Result<(), RestoreError> {
        if self.existed {
            return Ok(());
        }
        if let Some(parent) = self.dir.parent() {
            std::fs::create_dir_all(parent).map_err(|e| RestoreError::io(parent, e))?;
        }
        std::fs::create_dir(&self.dir).map_err(|e| RestoreError::io(&self.dir, e))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Places {
    pub root: Place,
    /// By tablespace oid.
    pub tablespaces: BTreeMap<u32, Place>,
    pub waldir: Option<Place>,
}

impl Places {
    /// Decide and check every place; nothing is written.
    pub fn plan(manifest: &BackupManifest, opts: &RestoreOptions) -> Result<Self, RestoreError> {
        let root = Place {
            existed: check_empty(&opts.data_dir, "the data directory", "--data-dir")?,
            dir: absolute(&opts.data_dir)?,
        };
        let mut tablespaces = BTreeMap::new();
        for ts in &manifest.tablespaces {
            tablespaces.insert(ts.oid, tablespace_place(ts, &opts.tablespaces)?);
        }
        check_mapping_names(manifest, &opts.tablespaces)?;
        let waldir = match &opts.waldir {
            Some(dir) => Some(Place {
                existed: check_empty(dir, "--waldir", "--waldir")?,
                dir: absolute(dir)?,
            }),
            None => None,
        };
        let places = Places {
            root,
            tablespaces,
            waldir,
        };
        places.check_apart()?;
        Ok(places)
    }

    fn others(&self) -> impl Iterator<Item = (String, &Place)> {
        self.tablespaces
            .iter()
            .map(|(oid, p)| (format!("tablespace {oid}"), p))
            .chain(self.waldir.iter().map(|p| ("--waldir".to_string(), p)))
    }

    /// No place inside another: two tablespaces in one directory would share their version
    /// directory, and a tablespace inside the data directory would be restored twice.
    fn check_apart(&self) -> Result<(), RestoreError> {
        let all: Vec<(String, &Place)> =
            std::iter::once(("the data directory".to_string(), &self.root))
                .chain(self.others())
                .collect();
        for (i, (a, pa)) in all.iter().enumerate() {
            for (b, pb) in &all[i + 1..] {
                if pa.dir.starts_with(&pb.dir) || pb.dir.starts_with(&pa.dir) {
                    return Err(RestoreError::Refused(format!(
                        "{a} ({}) and {b} ({}) overlap: give each its own directory, outside the others; nothing was written",
                        pa.dir.display(),
                        pb.dir.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Create the data directory, the tablespace directories and `--waldir`.
    pub fn create(&self) -> Result<(), RestoreError> {
        self.root.create()?;
        for (_, place) in self.others() {
            place.create()?;
        }
        Ok(())
    }

    /// Remove everything the restore wrote. Call only once every writer has stopped.
    pub fn clean_up(&self) {
        for (_, place) in self.others() {
            place.clean_up();
        }
        self.root.clean_up();
    }

    /// Where the manifest's `rel` is written: inside the data directory, or straight into a
    /// tablespace's or the WAL's own directory.
    pub fn destination(&self, rel: &str) -> PathBuf {
        if rel == CONTROL_FILE {
            return self.root.dir.join(CONTROL_PARTIAL);
        }
        let (head, rest) = match rel.match_indices('/').nth(1) {
            Some((i, _)) => (&rel[..i], Some(&rel[i + 1..])),
            None => (rel, None),
        };
        if let Some(place) = tablespace_link_oid(head).and_then(|oid| self.tablespaces.get(&oid)) {
            return rest.map_or_else(|| place.dir.clone(), |r| place.dir.join(r));
        }
        if let (Some(wal), Some(rest)) = (&self.waldir, rel.strip_prefix("pg_wal")) {
            if rest.is_empty() {
                return wal.dir.clone();
            }
            if let Some(rest) = rest.strip_prefix('/') {
                return wal.dir.join(rest);
            }
        }
        self.root.dir.join(rel)
    }

    /// The `tablespace_map` naming the chosen places (PostgreSQL recreates the links from it),
    /// with `\`, newlines and carriage returns escaped as PostgreSQL writes them.
    pub fn tablespace_map(&self) -> Option<String> {
        if self.tablespaces.is_empty() {
            return None;
        }
        let mut map = String::new();
        for (oid, place) in &self.tablespaces {
            let mut escaped = String::new();
            for c in place.dir.to_string_lossy().chars() {
                if matches!(c, '\\' | '\n' | '\r') {
                    escaped.push('\\');
                }
                escaped.push(c);
            }
            map.push_str(&format!("{oid} {escaped}\n"));
        }
        Some(map)
    }
}

fn absolute(path: &Path) -> Result<PathBuf, RestoreError> {
    std::path::absolute(path).map_err(|e| RestoreError::io(path, e))
}

/// Whether `dir` exists (then it must be an empty directory, not a link), refusing otherwise.
fn check_empty(dir: &Path, what: &str, flag: &str) -> Result<bool, RestoreError> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(RestoreError::io(dir, e)),
    };
    if meta.file_type().is_symlink() && flag != "--data-dir" {
        return Err(RestoreError::Refused(format!(
            "{what} {} is a link: name the directory itself ({flag}); nothing was written",
            dir.display()
        )));
    }
    let mut entries = std::fs::read_dir(dir).map_err(|e| RestoreError::io(dir, e))?;
    if entries.next().is_none() {
        return Ok(true);
    }
    let running = dir.join("postmaster.pid").exists();
    Err(RestoreError::Refused(format!(
        "{what} {} is not empty{}: restore into an empty or new directory ({flag}), or move the old one aside first; nothing was written",
        dir.display(),
        if running {
            " and a server may be running on it (postmaster.pid exists); stop it first"
        } else {
            ""
        }
    )))
}

fn tablespace_place(ts: &Tablespace, mapping: &TablespaceMapping) -> Result<Place, RestoreError> {
    let oid = ts.oid.to_string();
    let named = mapping
        .each
        .iter()
        .find(|(name, _)| *name == ts.name || *name == oid);
    let what = format!("tablespace {:?} (oid {})", ts.name, ts.oid);
    if let Some((name, dir)) = named {
        return Ok(Place {
            existed: check_empty(dir, &what, &format!("--tablespace-map {name}=DIR"))?,
            dir: absolute(dir)?,
        });
    }
    if let Some(all) = &mapping.all {
        let dir = all.join(&ts.name);
        return Ok(Place {
            existed: check_empty(&dir, &what, "--tablespace-map-all")?,
            dir: absolute(&dir)?,
        });
    }
    let original = PathBuf::from(&ts.location);
    if !original.is_absolute() {
        return Err(RestoreError::Refused(format!(
            "{what} was at {:?}, not an absolute path: map it with --tablespace-map {}=DIR; nothing was written",
            ts.location, ts.name
        )));
    }
    let existed = check_empty(&original, &what, "--tablespace-map").map_err(|e| match e {
        RestoreError::Refused(_) => RestoreError::Refused(format!(
            "{what} would go back to {}, which is in use (not empty, or a link): restore it elsewhere with \
             --tablespace-map {}=DIR or --tablespace-map-all DIR; nothing was written",
            original.display(),
            ts.name
        )),
        other => other,
    })?;
    Ok(Place {
        dir: original,
        existed,
    })
}

/// A `--tablespace-map` that names no tablespace of the backup is a typo, not a no-op.
fn check_mapping_names(
    manifest: &BackupManifest,
    mapping: &TablespaceMapping,
) -> Result<(), RestoreError> {
    for (name, _) in &mapping.each {
        let known = manifest
            .tablespaces
            .iter()
            .any(|t| t.name == *name || t.oid.to_string() == *name);
        if !known {
            let have: Vec<String> = manifest
                .tablespaces
                .iter()
                .map(|t| format!("{} (oid {})", t.name, t.oid))
                .collect();
            return Err(RestoreError::Refused(format!(
                "--tablespace-map {name}=...: backup {} has no tablespace {name:?} ({}); nothing was written",
                manifest.backup_id,
                if have.is_empty() {
                    "it has none".to_string()
                } else {
                    format!("it has {}", have.join(", "))
                }
            )));
        }
    }
    Ok(())
}
