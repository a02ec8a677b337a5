//! Archive look-ahead: while PostgreSQL's archiver waits on one `wal push` at a time, the
//! segments it has already marked ready are compressed and stored by a detached worker, so
//! that their own `wal push` only has to confirm the stored object (a checksum compare) and
//! can answer at once.
//!
//! Durability is unchanged: the worker stores objects exactly as `wal push` does (create-only,
//! durable), and each segment is still reported archived only by its own `wal push`, once its
//! object is there, matches the file, and is flushed. The worker writes nothing into `pg_wal`
//! (no `.done` files: PostgreSQL's own archiver keeps its bookkeeping), so a worker killed at
//! any point leaves nothing that changes what PostgreSQL does, and there is no queue to
//! overflow: what the worker did not store, `wal push` stores itself.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use storage::wal::WalFileName;
use storage::{Compression, Storage};
use tracing::debug;

use crate::wal_push::{PushOutcome, push_wal};

/// How far ahead the worker goes: at most this many segments and bytes per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AheadLimits {
    pub segments: usize,
    pub bytes: u64,
}

/// What one run of the worker did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AheadReport {
    /// Segments it stored.
    pub archived: Vec<String>,
}

/// The right to run the one look-ahead worker (an advisory lock beside the catalog, released
/// by the kernel when the worker exits however it exits). Taken before the repository is
/// opened, so that a worker with nothing to do costs nothing (no passphrase, no key
/// derivation, no S3 client).
#[derive(Debug)]
pub struct AheadLock {
    _file: File,
    pg_wal: PathBuf,
    current: String,
}

impl AheadLock {
    /// The lock for the segments after `path` (archive_command's `%p`); `None` when another
    /// worker holds it or `path` is not a segment (history and partial files have no
    /// successors to store ahead).
    pub fn try_acquire(catalog_path: &Path, path: &Path) -> Option<AheadLock> {
        let current = segment_name(path)?;
        let pg_wal = path.parent()?.to_path_buf();
        let file = try_lock(&lock_path(catalog_path))?;
        Some(AheadLock {
            _file: file,
            pg_wal,
            current,
        })
    }
}

/// Store the segments after the lock's one that PostgreSQL has marked ready, at most
/// `(segments, bytes)` of them. Never fails: a segment it could not store is stored by its own
/// `wal push`, which reports why.
pub async fn push_ahead(
    lock: &AheadLock,
    storage: &dyn Storage,
    catalog_path: &Path,
    compression: Compression,
    (segments, bytes): (usize, u64),
) -> AheadReport {
    let limits = AheadLimits { segments, bytes };
    let mut report = AheadReport::default();
    let (pg_wal, current) = (&lock.pg_wal, &lock.current);
    for (name, _) in ready_after(pg_wal, current, limits) {
        match push_wal(storage, catalog_path, &pg_wal.join(&name), compression).await {
            Ok(PushOutcome::Archived { .. }) => report.archived.push(name),
            Ok(PushOutcome::AlreadyArchived { .. }) => {}
            Err(e) => {
                // Most often PostgreSQL archived and removed it meanwhile.
                debug!(wal = %name, "look-ahead stops: {e}");
                break;
            }
        }
    }
    report
}

/// The segment's name, when `path` names a segment.
fn segment_name(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    matches!(name.parse::<WalFileName>(), Ok(WalFileName::Segment { .. })).then(|| name.into())
}

/// The lock that keeps one worker at a time. Whoever can write the directory must not make a
/// worker create or lock another file (a link), nor hang it (a FIFO).
fn try_lock(path: &Path) -> Option<File> {
    use rustix::fs::OFlags;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
        .open(path)
        .inspect_err(|e| debug!("look-ahead lock {}: {e}", path.display()))
        .ok()?;
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        debug!("look-ahead lock {} is not a regular file", path.display());
        return None;
    }
    file.try_lock().ok()?;
    Some(file)
}

/// The segments marked ready (`archive_status/NAME.ready`) that come after `current` but the
/// next, oldest first, within `limits`, with their sizes.
fn ready_after(pg_wal: &Path, current: &str, limits: AheadLimits) -> Vec<(String, u64)> {
    let ready = storage::wal::ready_segments_after(pg_wal, current);
    let mut chosen = Vec::new();
    let mut bytes = 0u64;
    // PostgreSQL asks for the first one the moment the push that started this worker answers:
    // both would compress it. From the second on, the worker is ahead.
    for name in ready.into_iter().skip(1).take(limits.segments) {
        let Ok(meta) = std::fs::metadata(pg_wal.join(&name)) else {
            continue;
        };
        if bytes + meta.len() > limits.bytes {
            break;
        }
        bytes += meta.len();
        chosen.push((name, meta.len()));
    }
    chosen
}

/// Where the worker's lock lives: beside the catalog (`catalog.db-push-ahead.lock`), which
/// the archiving user can write.
pub fn lock_path(catalog_path: &Path) -> PathBuf {
    let mut name = catalog_path
        .file_name()
        .map_or_else(|| "catalog.db".into(), |n| n.to_os_string());
    name.push("-push-ahead.lock");
    catalog_path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEGMENT: u64 = 16 << 20;

    fn pg_wal_with(ready: &[&str], done: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("archive_status")).expect("mkdir");
        for (names, suffix) in [(ready, "ready"), (done, "done")] {
            for name in names {
                let file = File::create(dir.path().join(name)).expect("segment");
                file.set_len(SEGMENT).expect("size");
                File::create(dir.path().join(format!("archive_status/{name}.{suffix}")))
                    .expect("status");
            }
        }
        dir
    }

    fn names(found: Vec<(String, u64)>) -> Vec<String> {
        found.into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn only_ready_segments_after_the_current_one_within_the_limits() {
        let a = "000000010000000000000003";
        let b = "000000010000000000000004";
        let c = "000000010000000000000005";
        let d = "000000010000000000000006";
        let e = "000000010000000000000007";
        let dir = pg_wal_with(&[a, c, d, e, "00000002.history"], &[b]);
        let wide = AheadLimits {
            segments: 8,
            bytes: u64::MAX,
        };
        // The current one, the next one (its own push is about to start), and what is not
        // ready (done, history) are never taken.
        assert_eq!(names(ready_after(dir.path(), a, wide)), vec![d, e]);
        let two = AheadLimits {
            segments: 1,
            bytes: u64::MAX,
        };
        assert_eq!(names(ready_after(dir.path(), a, two)), vec![d]);
        let small = AheadLimits {
            segments: 8,
            bytes: SEGMENT + 1,
        };
        assert_eq!(names(ready_after(dir.path(), a, small)), vec![d]);
        assert!(ready_after(dir.path(), d, wide).is_empty());
    }

    #[test]
    fn one_worker_at_a_time() {
        let dir = tempfile::tempdir().expect("temp dir");
        let lock = dir.path().join(".lock");
        let held = try_lock(&lock).expect("first");
        assert!(try_lock(&lock).is_none(), "a second worker got the lock");
        drop(held);
        assert!(try_lock(&lock).is_some(), "the lock outlived its worker");
        // A FIFO in its place neither hangs the worker nor is taken for the lock.
        std::fs::remove_file(&lock).expect("rm");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &lock,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .expect("mkfifo");
        assert!(try_lock(&lock).is_none(), "a FIFO was taken for the lock");
        std::fs::remove_file(&lock).expect("rm");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &lock).expect("link");
        assert!(try_lock(&lock).is_none(), "a link was followed");
        assert!(
            !dir.path().join("elsewhere").exists(),
            "a file was created through a link"
        );
    }

    #[test]
    fn only_segments_have_successors_to_store_ahead() {
        let dir = tempfile::tempdir().expect("temp dir");
        let catalog = dir.path().join("catalog.db");
        for path in [
            "pg_wal/00000002.history",
            "pg_wal/000000010000000000000003.partial",
        ] {
            assert!(
                AheadLock::try_acquire(&catalog, Path::new(path)).is_none(),
                "{path}"
            );
        }
        let lock = AheadLock::try_acquire(&catalog, Path::new("pg_wal/000000010000000000000003"))
            .expect("a segment");
        assert_eq!(lock.current, "000000010000000000000003");
    }
}
