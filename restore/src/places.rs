//! Where each part of a base backup goes: the data directory, one directory per tablespace
//! (mapped, or its original location when that is missing or empty) and, with `--waldir`,
//! `pg_wal`. Every place is decided and checked before the first write, and every write goes
//! straight to its real place: the restore never writes through a link, and the only links it
//! makes are `pg_tblspc/<oid>` and `pg_wal`, to places chosen here.

use std::collections::BTreeMap;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use storage::manifest::{BackupManifest, Tablespace};
use storage::private::Owner;

use crate::RestoreError;
use crate::restore_base::{RestoreOptions, TablespaceMapping};
use crate::validate::tablespace_link_oid;

/// The control file is written under a temporary name and renamed last: without it
/// PostgreSQL will not start, so a half-restored directory never looks complete.
pub(crate) const CONTROL_FILE: &str = "global/pg_control";
pub(crate) const CONTROL_PARTIAL: &str = "global/pg_control.lifeline-partial";

/// A directory the restore writes into, whether it was there (empty) when checked, and what
/// of it and its parents this restore created: a failure removes only those.
#[derive(Debug, Default)]
pub(crate) struct Place {
    pub dir: PathBuf,
    pub existed: bool,
    /// Directories this restore created, parents first.
    created: Mutex<Vec<PathBuf>>,
    /// Set once this restore holds the place; a place it does not hold is never cleaned up,
    /// whatever it created there.
    held: Mutex<Option<Claim>>,
}

/// A restore's hold on a directory: the directory, open from before the first write, whose
/// `flock` keeps every other lifeline restore out (where the file system has such locks).
#[derive(Debug)]
pub(crate) struct Claim {
    dir: std::fs::File,
}

impl Claim {
    /// Flush the directory's whole file system and report any write to it that failed since
    /// the claim was taken (Linux 5.8 and later), even to a file whose error no descriptor
    /// saw before its inode left memory: the fsync of each file by a new descriptor can miss
    /// that one.
    fn sync_file_system(&self, dir: &Path) -> Result<(), RestoreError> {
        rustix::fs::syncfs(&self.dir).map_err(|e| RestoreError::io(dir, e.into()))
    }
}

impl Place {
    pub fn new(dir: PathBuf, existed: bool) -> Place {
        Place {
            dir,
            existed,
            created: Mutex::default(),
            held: Mutex::default(),
        }
    }

    /// A directory that was there, already claimed.
    pub fn claimed(dir: PathBuf, claim: Claim) -> Place {
        let place = Place::new(dir, true);
        *place.held() = Some(claim);
        place
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Option<Claim>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// See [`Claim::sync_file_system`]; nothing for a place this restore does not hold.
    pub fn sync_file_system(&self) -> Result<(), RestoreError> {
        match &*self.held() {
            Some(claim) => claim.sync_file_system(&self.dir),
            None => Ok(()),
        }
    }

    fn created(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.created
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Back to how it was: what the restore made is removed (parents only while empty), a
    /// place that was there is emptied, and a place someone else made meanwhile is left alone.
    fn clean_up(&self) {
        let created = std::mem::take(&mut *self.created());
        if self.held().is_none() {
            // Another restore may be writing into it: only what this one made and is still
            // empty goes.
            for dir in created.iter().rev() {
                let _ = std::fs::remove_dir(dir);
            }
            return;
        }
        if created.last() == Some(&self.dir) {
            let _ = std::fs::remove_dir_all(&self.dir);
            for parent in created.iter().rev().skip(1) {
                let _ = std::fs::remove_dir(parent);
            }
            return;
        }
        if !self.existed {
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

    /// Lock the directory against every other lifeline restore until this one ends, then make
    /// sure it is still empty: two restores into one directory would interleave their files.
    fn hold(&self, what: &str, follow_link: bool) -> Result<(), RestoreError> {
        // A delta restore claimed the directories it reuses before its first look inside.
        if self.held().is_some() {
            return Ok(());
        }
        let claim = claim_directory(&self.dir, what, follow_link)?;
        let mut entries =
            std::fs::read_dir(&self.dir).map_err(|e| RestoreError::io(&self.dir, e))?;
        if entries.next().is_some() {
            return Err(RestoreError::Refused(format!(
                "{what} {} was written to while this restore was checking the backup (another \
                 restore?): nothing was written there",
                self.dir.display()
            )));
        }
        *self.held() = Some(claim);
        Ok(())
    }

    /// Whether this user may create the directory (or write into it, when it is there): what
    /// `create` and the first write would find out. The nearest directory that exists must
    /// let it add entries.
    fn check_creatable(&self) -> Result<(), RestoreError> {
        check_creatable(&self.dir)
    }

    /// Create the directory and its missing parents, one level at a time, recording each and
    /// giving it to `owner`: a directory that appeared since the check is refused, not adopted.
    fn create(&self, owner: Owner) -> Result<(), RestoreError> {
        if self.existed {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut at = self.dir.as_path();
        while std::fs::symlink_metadata(at).is_err() {
            missing.push(at.to_path_buf());
            match at.parent() {
                Some(parent) => at = parent,
                None => break,
            }
        }
        if missing.first() != Some(&self.dir) {
            return Err(RestoreError::Refused(format!(
                "{} appeared while the restore was checking the backup (another restore?): nothing was written there",
                self.dir.display()
            )));
        }
        for dir in missing.into_iter().rev() {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| RestoreError::io(&dir, e))?;
            self.created().push(dir.clone());
            owner
                .apply_path(&dir)
                .map_err(|e| RestoreError::io(&dir, e))?;
        }
        Ok(())
    }
}

#[derive(Debug)]
pub(crate) struct Places {
    pub root: Place,
    /// By tablespace oid.
    pub tablespaces: BTreeMap<u32, Place>,
    pub waldir: Option<Place>,
    /// Whom the directories the restore creates are given to.
    pub owner: Owner,
}

impl Places {
    /// Decide and check every place; nothing is written.
    pub fn plan(manifest: &BackupManifest, opts: &RestoreOptions) -> Result<Self, RestoreError> {
        let root_dir = normal(&opts.data_dir, "--data-dir")?;
        let root = Place::new(
            root_dir.clone(),
            check_empty(&root_dir, "the data directory", "--data-dir")?,
        );
        check_mapping_names(manifest, &opts.tablespaces)?;
        let mut tablespaces = BTreeMap::new();
        for ts in &manifest.tablespaces {
            tablespaces.insert(ts.oid, tablespace_place(ts, &opts.tablespaces)?);
        }
        let waldir = match &opts.waldir {
            Some(dir) => {
                let dir = normal(dir, "--waldir")?;
                let existed = check_empty(&dir, "--waldir", "--waldir")?;
                Some(Place::new(dir, existed))
            }
            None => None,
        };
        let places = Places {
            root,
            tablespaces,
            waldir,
            owner: opts.owner,
        };
        places.check_apart()?;
        Ok(places)
    }

    /// The places of a delta restore: the claimed data directory, its tablespaces' directories
    /// (see [`delta_tablespace_places`]) and `--waldir` (see [`delta_waldir`]).
    pub fn for_delta(
        root: Place,
        tablespaces: BTreeMap<u32, Place>,
        waldir: Option<Place>,
        owner: Owner,
    ) -> Result<Self, RestoreError> {
        let places = Places {
            root,
            tablespaces,
            waldir,
            owner,
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
        let resolved: Vec<PathBuf> = all.iter().map(|(_, p)| resolved(&p.dir)).collect();
        for (i, (a, pa)) in all.iter().enumerate() {
            for (j, (b, pb)) in all.iter().enumerate().skip(i + 1) {
                let (ra, rb) = (&resolved[i], &resolved[j]);
                if ra.starts_with(rb) || rb.starts_with(ra) {
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

    /// Every place may be created or written by this user (`SIMULATE_MODE`'s stand-in for
    /// `create`).
    pub fn check_creatable(&self) -> Result<(), RestoreError> {
        self.root.check_creatable()?;
        self.others()
            .try_for_each(|(_, place)| place.check_creatable())
    }

    /// Create the data directory, the tablespace directories and `--waldir`.
    pub fn create(&self) -> Result<(), RestoreError> {
        self.root.create(self.owner)?;
        // --data-dir may name a link; the other places were refused as links when checked.
        self.root.hold("the data directory", true)?;
        for (what, place) in self.others() {
            place.create(self.owner)?;
            place.hold(&what, false)?;
        }
        Ok(())
    }

    /// Flush the file systems of every place this restore holds; see
    /// [`Claim::sync_file_system`].
    pub fn sync_file_systems(&self) -> Result<(), RestoreError> {
        self.root.sync_file_system()?;
        for (_, place) in self.others() {
            place.sync_file_system()?;
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
        if let Some((place, rest)) =
            split_tablespace(rel).and_then(|(oid, rest)| Some((self.tablespaces.get(&oid)?, rest)))
        {
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

/// Whether this user may create `dir` (or write into it, when it is there): the nearest
/// directory that exists must let it add entries.
pub(crate) fn check_creatable(dir: &Path) -> Result<(), RestoreError> {
    let mut at = dir;
    while std::fs::symlink_metadata(at).is_err() {
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    let access = rustix::fs::Access::WRITE_OK | rustix::fs::Access::EXEC_OK;
    rustix::fs::access(at, access).map_err(|e| {
        let (why, fix) = if e == rustix::io::Errno::ROFS {
            (
                "is on a read-only file system".to_string(),
                "mount it read-write, or choose a directory on another file system",
            )
        } else {
            (
                format!("cannot be written by this user ({e})"),
                "choose a directory it may create, or run as its owner",
            )
        };
        RestoreError::Refused(format!(
            "{} {why}, so {} cannot be restored there: {fix}; nothing was written",
            at.display(),
            dir.display()
        ))
    })
}

/// `path` made absolute with `.` and `..` resolved lexically, so that the overlap check sees
/// where it really points; a path that is not UTF-8 cannot be written into PostgreSQL's
/// configuration faithfully and is refused.
pub(crate) fn normal(path: &Path, flag: &str) -> Result<PathBuf, RestoreError> {
    let absolute = std::path::absolute(path).map_err(|e| RestoreError::io(path, e))?;
    let mut out = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    if out.to_str().is_none() {
        return Err(RestoreError::Refused(format!(
            "{flag} {} is not UTF-8: name a directory whose path is; nothing was written",
            path.display()
        )));
    }
    Ok(out)
}

/// Where `path` is once links in its existing part are followed (a `--data-dir` that is a
/// link, a mapped directory under a linked parent): the overlap check compares these.
fn resolved(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut at = path;
    loop {
        if let Ok(real) = std::fs::canonicalize(at) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                at = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// An exclusive `flock` on the directory `dir` itself, held while the claim lives (the kernel
/// drops it when the process dies, even by kill -9). Where the file system has no such locks
/// (some network file systems, or NFS with its lock daemon down) the claim holds none, says
/// so, and nothing excludes a second restore.
pub(crate) fn claim_directory(
    dir: &Path,
    what: &str,
    follow_link: bool,
) -> Result<Claim, RestoreError> {
    use rustix::fs::{FlockOperation, OFlags, flock};
    let flags = match follow_link {
        true => OFlags::DIRECTORY,
        false => OFlags::DIRECTORY | OFlags::NOFOLLOW,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(dir)
        .map_err(|e| RestoreError::io(dir, e))?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Claim { dir: file }),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(RestoreError::Refused(format!(
            "another lifeline restore is writing into {what} {}: let it finish (or stop it), \
             then look at what it reported; nothing was written",
            dir.display()
        ))),
        Err(e) => {
            tracing::warn!(
                "{what} {} cannot be locked ({e}); nothing keeps a second restore out of it",
                dir.display()
            );
            Ok(Claim { dir: file })
        }
    }
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
    // A restore still running leaves the same marker as one interrupted: tell them apart.
    if let Err(running @ RestoreError::Refused(_)) = claim_directory(dir, what, true) {
        return Err(running);
    }
    // Read without blocking: a FIFO by that name would hang the restore.
    if let Ok(Some(marker)) =
        crate::opening::read_small(&dir.join(crate::restore_base::MARKER), 4096)
    {
        let marker = String::from_utf8_lossy(&marker);
        return Err(RestoreError::Refused(format!(
            "{what} {} holds what an interrupted restore of {} left (it was stopped before it \
             could clean up, or it was a --delta restore): restore again with --delta to finish \
             it in place, or remove the directory, and the tablespace and --waldir directories \
             that restore was given, then restore again",
            dir.display(),
            marker.lines().next().unwrap_or_default().trim()
        )));
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
    let oid = ts.oid;
    let what = what_tablespace(ts);
    if let Some((dir, flag)) = mapped_dir(ts, mapping)? {
        let existed = check_empty(&dir, &what, &flag)?;
        return Ok(Place::new(dir, existed));
    }
    let original = PathBuf::from(&ts.location);
    let plain = original.is_absolute()
        && original.parent().is_some()
        && original
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if !plain {
        return Err(RestoreError::Refused(format!(
            "{what} was at {:?}, not a plain absolute path: map it with --tablespace-map {oid}=DIR; nothing was written",
            ts.location
        )));
    }
    // The location comes from the manifest, which whoever can write to the repository can
    // forge: as root, a restore goes only where the operator said.
    if rustix::process::geteuid().is_root() {
        return Err(RestoreError::Refused(format!(
            "{what} would go back to {}, a place the backup names: running as root, a restore puts \
             tablespaces only where you map them (--tablespace-map {oid}=DIR or --tablespace-map-all DIR), \
             or run it as the database's owner; nothing was written",
            original.display()
        )));
    }
    let existed = check_empty(&original, &what, "--tablespace-map").map_err(|e| match e {
        RestoreError::Refused(_) => RestoreError::Refused(format!(
            "{what} would go back to {}, which is in use (not empty, or a link): restore it elsewhere with \
             --tablespace-map {oid}=DIR or --tablespace-map-all DIR; nothing was written",
            original.display(),
        )),
        other => other,
    })?;
    Ok(Place::new(original, existed))
}

/// A manifest path in a tablespace, `pg_tblspc/<oid>[/rest]`: the oid and the rest.
pub(crate) fn split_tablespace(rel: &str) -> Option<(u32, Option<&str>)> {
    let (head, rest) = match rel.match_indices('/').nth(1) {
        Some((i, _)) => (&rel[..i], Some(&rel[i + 1..])),
        None => (rel, None),
    };
    tablespace_link_oid(head).map(|oid| (oid, rest))
}

fn what_tablespace(ts: &Tablespace) -> String {
    format!("tablespace {:?} (oid {})", ts.name, ts.oid)
}

/// Where the operator mapped `ts` (`--tablespace-map`, then `--tablespace-map-all`), with
/// the flag that named it.
fn mapped_dir(
    ts: &Tablespace,
    mapping: &TablespaceMapping,
) -> Result<Option<(PathBuf, String)>, RestoreError> {
    let oid = ts.oid.to_string();
    let named = mapping
        .each
        .iter()
        .find(|(name, _)| *name == ts.name || *name == oid);
    if let Some((name, dir)) = named {
        let flag = format!("--tablespace-map {name}=DIR");
        return Ok(Some((normal(dir, &flag)?, flag)));
    }
    let Some(all) = &mapping.all else {
        return Ok(None);
    };
    // The name becomes a directory name here, and only here.
    if ts.name.is_empty() || ts.name == "." || ts.name == ".." || ts.name.contains(['/', '\0']) {
        return Err(RestoreError::Refused(format!(
            "{} has a name that cannot be a directory name under --tablespace-map-all: map it \
             by oid with --tablespace-map {oid}=DIR; nothing was written",
            what_tablespace(ts)
        )));
    }
    let flag = "--tablespace-map-all".to_string();
    Ok(Some((normal(&all.join(&ts.name), &flag)?, flag)))
}

/// Where a delta restore onto the data directory `root` writes each tablespace of the
/// backup: only where the operator mapped it, since the directory is rewritten in place and a
/// copied data directory's links may lead to another server's tablespace. A mapped directory
/// that is missing or empty is filled in full; one that holds something is reused only when
/// it is where `root`'s own `pg_tblspc/<oid>` leads (the tablespace of this very directory),
/// and is claimed here, before anything in it is looked at.
pub(crate) fn delta_tablespace_places(
    manifest: &BackupManifest,
    mapping: &TablespaceMapping,
    root: &Path,
) -> Result<BTreeMap<u32, Place>, RestoreError> {
    check_mapping_names(manifest, mapping)?;
    let mut places = BTreeMap::new();
    for ts in &manifest.tablespaces {
        let what = what_tablespace(ts);
        let link = root.join("pg_tblspc").join(ts.oid.to_string());
        let Some((dir, flag)) = mapped_dir(ts, mapping)? else {
            return Err(RestoreError::Refused(format!(
                "--delta: {what} is rewritten in place, so name its directory: \
                 --tablespace-map {}=DIR ({}; an empty or new DIR is filled in full); \
                 nothing was written",
                ts.oid,
                where_link_leads(&link)
            )));
        };
        places.insert(ts.oid, reused_place(dir, &what, &flag, &link, root)?);
    }
    Ok(places)
}

/// Where a delta restore onto `root` puts `pg_wal`: inside (`None`), or in the `--waldir`
/// directory, which is reused (its old WAL removed) only where `root`'s own `pg_wal` leads. A
/// `pg_wal` that is a link is followed only when `--waldir` names where it leads.
pub(crate) fn delta_waldir(
    root: &Path,
    waldir: Option<&Path>,
) -> Result<Option<Place>, RestoreError> {
    let link = root.join("pg_wal");
    let Some(dir) = waldir else {
        if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(RestoreError::Refused(format!(
                "--delta: {}, and a delta restore follows no link on its own: name that \
                 directory with --waldir DIR (its old WAL is removed, as in pg_wal), or give an \
                 empty or new DIR; nothing was written",
                where_link_leads(&link)
            )));
        }
        return Ok(None);
    };
    let dir = normal(dir, "--waldir")?;
    reused_place(dir, "--waldir", "--waldir", &link, root).map(Some)
}

/// The mapped directory `dir` of a delta restore: missing or empty, to be filled in full; or
/// holding something and claimed, when it is where the data directory's `link` leads (this
/// directory's own), refused otherwise.
fn reused_place(
    dir: PathBuf,
    what: &str,
    flag: &str,
    link: &Path,
    root: &Path,
) -> Result<Place, RestoreError> {
    // Reached through the data directory (its own link, say): that link is replaced midway.
    if reached_through(&dir, root) {
        return Err(RestoreError::Refused(format!(
            "--delta: {flag} {} lies inside the data directory {}: name the directory itself, \
             outside it; nothing was written",
            dir.display(),
            root.display()
        )));
    }
    let leads_to = std::fs::read_link(link)
        .ok()
        .map(|to| link.parent().map_or(to.clone(), |p| p.join(&to)));
    match check_empty(&dir, what, flag) {
        Ok(existed) => Ok(Place::new(dir, existed)),
        Err(RestoreError::Refused(_)) if leads_to.is_some_and(|to| is_same_dir(&dir, &to)) => {
            let claim = claim_directory(&dir, what, false)?;
            if let Some(server) = running_server_using(&dir) {
                return Err(RestoreError::Refused(format!(
                    "--delta: {what} {} is in use by {server}: a copy of a data directory still \
                     leads to the original's directories. Map it to an empty or new directory \
                     ({flag}); nothing was written",
                    dir.display()
                )));
            }
            Ok(Place::claimed(dir, claim))
        }
        Err(RestoreError::Refused(why)) => Err(RestoreError::Refused(format!(
            "--delta: {why}. A delta restore reuses a directory outside the data directory only \
             where the data directory's own link leads ({}), so that it never rewrites another \
             cluster's",
            where_link_leads(link)
        ))),
        Err(e) => Err(e),
    }
}

/// Whether `dir` lies inside the data directory `root`, by name or through a link on its way
/// (a parent that is a link to the data directory or to a directory inside it).
fn reached_through(dir: &Path, root: &Path) -> bool {
    let real_root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    dir.ancestors().any(|at| {
        at.starts_with(root)
            || std::fs::canonicalize(at).is_ok_and(|real| real.starts_with(&real_root))
    })
}

/// The running server whose data directory links to `dir` (`pg_tblspc/<oid>` or `pg_wal`), as
/// "the server running on DATA (pid N)". A postmaster and its children work in their data
/// directory, so each process's working directory is looked at; those this user may not see
/// (another user's, unless run as root) are not.
fn running_server_using(dir: &Path) -> Option<String> {
    let processes = std::fs::read_dir("/proc").ok()?;
    for process in processes.flatten() {
        let pid = process.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(data) = std::fs::read_link(process.path().join("cwd")) else {
            continue;
        };
        if !data.join("postmaster.pid").exists() || !data.join("PG_VERSION").exists() {
            continue;
        }
        let tablespaces = std::fs::read_dir(data.join("pg_tblspc"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path());
        let mut links = tablespaces.chain(std::iter::once(data.join("pg_wal")));
        if links.any(|link| is_same_dir(dir, &link)) {
            return Some(format!(
                "the server running on {} (pid {})",
                data.display(),
                pid.to_string_lossy()
            ));
        }
    }
    None
}

/// "LINK leads to DIR", or "LINK is not a link".
fn where_link_leads(link: &Path) -> String {
    match std::fs::read_link(link) {
        Ok(to) => format!("{} leads to {}", link.display(), to.display()),
        Err(_) => format!("{} is not a link", link.display()),
    }
}

/// Whether the directory `dir` (not a link) is the one `link` leads to.
pub(crate) fn is_same_dir(dir: &Path, link: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(at), Ok(there)) = (std::fs::symlink_metadata(dir), std::fs::metadata(link)) else {
        return false;
    };
    at.is_dir() && at.dev() == there.dev() && at.ino() == there.ino()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_reached_through_the_data_directory_is_inside_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (data, ts, alias) = (
            tmp.path().join("data"),
            tmp.path().join("ts"),
            tmp.path().join("alias"),
        );
        std::fs::create_dir_all(data.join("pg_tblspc")).expect("data");
        std::fs::create_dir(&ts).expect("ts");
        std::os::unix::fs::symlink(&ts, data.join("pg_tblspc/16385")).expect("link");
        std::os::unix::fs::symlink(&data, &alias).expect("alias");
        assert!(reached_through(&data.join("pg_tblspc/16385/sub"), &data));
        assert!(reached_through(&alias.join("pg_tblspc/16385/sub"), &data));
        assert!(reached_through(&data.join("pg_tblspc/16385/sub"), &alias));
        assert!(!reached_through(&ts.join("sub"), &data));
        assert!(!reached_through(&tmp.path().join("new"), &data));
    }

    /// The advice names the tablespace by oid: a name may hold a space, a quote or `=`.
    #[test]
    fn a_tablespace_in_use_is_mapped_by_oid_in_the_advice() {
        if rustix::process::geteuid().is_root() {
            // As root the original location is refused before it is looked at.
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::write(tmp.path().join("taken"), b"x").expect("write");
        let ts = Tablespace {
            oid: 16385,
            name: "fast = 'ssd'".into(),
            location: tmp.path().display().to_string(),
        };
        let Err(refused) = tablespace_place(&ts, &TablespaceMapping::default()) else {
            panic!("a non-empty original location was accepted");
        };
        let refused = refused.to_string();
        assert!(
            refused.contains("which is in use")
                && refused.contains("--tablespace-map 16385=DIR or --tablespace-map-all DIR"),
            "{refused}"
        );
    }
}
