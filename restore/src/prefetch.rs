//! `wal fetch` read-ahead: recovery asks for one segment at a time and waits for each; with a
//! remote repository most of that wait is the round trip. After serving segment N, the next
//! segments are fetched in parallel into a spool directory (outside PGDATA), so that the
//! following requests are answered from local disk.
//!
//! Spool layout: `<spool>/<sysid>/<WAL file name>.<blake3 hex>` holds the segment already
//! verified and decompressed by the prefetcher (off recovery's critical path), written to a
//! temporary name and renamed, so a reader sees whole files only. Serving a file re-hashes it
//! against the checksum in its name and renames it onto the path PostgreSQL asked for (a copy
//! when the spool is on another filesystem); a file that fails is discarded and the segment is
//! read from the repository instead. One prefetcher runs per cluster at a time (an advisory
//! lock); files older than the segment just requested are removed.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use storage::Durability;
use storage::Storage;
use storage::atomic::{self, TempName, WriteOptions};
use storage::manifest::ClusterIdentity;
use storage::private::{self, Owner};
use storage::wal::{DEFAULT_SEGMENT_SIZE, Segment, WalFileName};
use tracing::{debug, warn};

use crate::RestoreError;
use crate::error::blocking;
use crate::wal_file::{hand_over_blocking, read_archived};

const TEMP_MARK: &str = ".partial.";
const LOCK_NAME: &str = ".lock";

/// Where prefetched segments of one cluster wait, and how much may wait there.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    /// Segments fetched ahead of the one requested.
    pub segments: usize,
    /// Upper bound on the stored bytes waiting in the spool.
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefetchReport {
    pub fetched: usize,
    pub bytes: u64,
}

impl Spool {
    pub fn new(root: impl Into<PathBuf>, segments: usize, max_bytes: u64) -> Spool {
        Spool {
            root: root.into(),
            segments,
            max_bytes,
        }
    }

    fn dir(&self, system_identifier: u64) -> PathBuf {
        self.root.join(system_identifier.to_string())
    }

    /// Move the spooled copy of `name` to `dest` once it matches its checksum; its size, or
    /// `None` when the spool has no good copy.
    pub async fn serve(&self, system_identifier: u64, name: &str, dest: &Path) -> Option<u64> {
        let dir = self.dir(system_identifier);
        let name = name.to_string();
        let dest = dest.to_path_buf();
        let served = tokio::task::spawn_blocking(move || serve_blocking(&dir, &name, &dest)).await;
        served.ok().flatten()
    }

    /// True when read-ahead past `requested` is worth starting: fewer than half of the
    /// segments it would fetch are waiting, and no prefetcher is at work.
    pub fn wants_refill(&self, system_identifier: u64, requested: &str) -> bool {
        if self.segments == 0
            || !requested
                .parse::<WalFileName>()
                .is_ok_and(|n| matches!(n, WalFileName::Segment { .. }))
        {
            return false;
        }
        let dir = self.dir(system_identifier);
        let waiting = std::fs::read_dir(&dir).map_or(0, |entries| {
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    !name.contains(TEMP_MARK)
                        && name != LOCK_NAME
                        && wal_name_part(&name) > requested
                })
                .count()
        });
        if waiting * 2 >= self.segments {
            return false;
        }
        // Probing the lock takes it for an instant; a prefetcher starting then simply finds
        // nothing to do next time.
        !held_by_another(&dir)
    }

    /// Empty the cluster's spool (a restore starts from the repository, nothing older).
    pub fn clear(&self, system_identifier: u64) -> Result<(), RestoreError> {
        let dir = self.dir(system_identifier);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(RestoreError::io(&dir, e)),
        }
    }

    /// Fetch the segments after `requested` into the spool, `parallel` at a time. Returns at
    /// once when another prefetcher holds the spool.
    pub async fn prefetch_after(
        &self,
        storage: &dyn Storage,
        sysid: u64,
        requested: &str,
        parallel: usize,
    ) -> Result<PrefetchReport, RestoreError> {
        let requested: WalFileName = requested.parse().map_err(RestoreError::Refused)?;
        if !matches!(requested, WalFileName::Segment { .. }) || self.segments == 0 {
            return Ok(PrefetchReport::default());
        }
        let dir = self.dir(sysid);
        let root = self.root.clone();
        let setup = dir.clone();
        let locked = blocking("spool setup", move || -> Result<_, RestoreError> {
            // Private, and as root given to the owner of the place the spool is in (BACKUP_DIR).
            let owner = Owner::of(&root);
            // The place the spool lives in (BACKUP_DIR by default) is never created here.
            if let Some(parent) = root.parent()
                && !parent.as_os_str().is_empty()
                && !parent.is_dir()
            {
                return Err(RestoreError::io(
                    parent,
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the spool's directory does not exist",
                    ),
                ));
            }
            private::create_dir_all(&setup, owner).map_err(|e| RestoreError::io(&setup, e))?;
            Ok(lock(&setup, owner)?.map(|lock| (lock, owner)))
        })
        .await?;
        let Some((_lock, owner)) = locked else {
            debug!("another prefetcher is running");
            return Ok(PrefetchReport::default());
        };
        let segment_size = ClusterIdentity::load(storage)
            .await?
            .map_or(DEFAULT_SEGMENT_SIZE, |c| c.segment_size);
        let Some(first) = requested.segment(segment_size) else {
            return Ok(PrefetchReport::default());
        };
        let tidied = (dir.clone(), requested.clone());
        let (held, mut used) =
            blocking("spool tidying", move || tidy(&tidied.0, &tidied.1)).await?;
        let wanted: Vec<WalFileName> = (1..=self.segments as u64)
            .filter_map(|ahead| {
                let segment = Segment {
                    timeline: first.timeline,
                    number: first.number + ahead,
                };
                segment.file_name(segment_size).parse().ok()
            })
            .filter(|name: &WalFileName| !held.contains(&name.to_string()))
            .collect();
        let mut report = PrefetchReport::default();
        let mut fetches = futures::stream::iter(wanted)
            .map(|name| async move {
                let plain = read_archived(storage, sysid, &name).await;
                (name, plain)
            })
            .buffered(parallel.max(1));
        while let Some((name, result)) = fetches.next().await {
            let bytes = match result {
                Ok(bytes) => bytes,
                // The end of the archive (so far): nothing after it exists either.
                Err(RestoreError::Storage(e)) if e.is_not_found() => break,
                Err(e) => {
                    warn!(wal = %name, "prefetch stopped: {e}");
                    break;
                }
            };
            let size = bytes.len() as u64;
            used += size;
            if used > self.max_bytes {
                break;
            }
            let into = dir.clone();
            blocking("spool write", move || store(&into, owner, &name, &bytes)).await?;
            report.fetched += 1;
            report.bytes += size;
        }
        Ok(report)
    }
}

/// `000000010000000000000005` of `000000010000000000000005.<hash>`.
fn wal_name_part(file_name: &str) -> &str {
    file_name.split('.').next().unwrap_or(file_name)
}

fn serve_blocking(dir: &Path, name: &str, dest: &Path) -> Option<u64> {
    let prefix = format!("{name}.");
    let entry = std::fs::read_dir(dir).ok()?.flatten().find(|e| {
        let file = e.file_name().to_string_lossy().into_owned();
        file.starts_with(&prefix) && !file.contains(TEMP_MARK)
    })?;
    let path = entry.path();
    let file_name = entry.file_name().to_string_lossy().into_owned();
    let expected = &file_name[prefix.len()..];
    // Hashed through a small buffer and then renamed: this runs while recovery waits, so no
    // 16 MiB allocation and no copy.
    let mut hasher = blake3::Hasher::new();
    let size = std::fs::File::open(&path)
        .and_then(|file| {
            hasher
                .update_reader(std::io::BufReader::with_capacity(1 << 16, file))
                .map(|_| ())
        })
        .and_then(|()| std::fs::metadata(&path))
        .ok()?
        .len();
    if hasher.finalize().to_hex().as_str() != expected {
        warn!(wal = %name, "the prefetched copy failed its checksum; reading the repository");
        let _ = std::fs::remove_file(&path);
        return None;
    }
    if std::fs::rename(&path, dest).is_ok() {
        return Some(size);
    }
    // Another filesystem: copy, then drop the spooled file.
    let bytes = std::fs::read(&path).ok()?;
    let written = hand_over_blocking(dest, &bytes).ok();
    let _ = std::fs::remove_file(&path);
    written.map(|()| size)
}

/// True when a prefetcher holds the spool's lock (probed without creating anything).
fn held_by_another(dir: &Path) -> bool {
    let path = dir.join(LOCK_NAME);
    match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(file) => matches!(flock(file, &path), Ok(None)),
        Err(_) => false,
    }
}

/// Take the prefetcher's lock, creating its file (private, given to `owner`) if needed.
fn lock(dir: &Path, owner: Owner) -> Result<Option<std::fs::File>, RestoreError> {
    let path = dir.join(LOCK_NAME);
    let file =
        private::open_or_create_file(&path, owner).map_err(|e| RestoreError::io(&path, e))?;
    flock(file, &path)
}

fn flock(file: std::fs::File, path: &Path) -> Result<Option<std::fs::File>, RestoreError> {
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(RestoreError::io(path, e.into())),
    }
}

/// Remove what recovery has gone past (and leftovers of interrupted writes); return the
/// names still held and their total size.
fn tidy(dir: &Path, requested: &WalFileName) -> Result<(Vec<String>, u64), RestoreError> {
    let requested = requested.to_string();
    let entries = std::fs::read_dir(dir).map_err(|e| RestoreError::io(dir, e))?;
    let (mut held, mut used) = (Vec::new(), 0);
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == LOCK_NAME {
            continue;
        }
        if name.contains(TEMP_MARK) || wal_name_part(&name) <= requested.as_str() {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        used += entry.metadata().map(|m| m.len()).unwrap_or(0);
        held.push(wal_name_part(&name).to_string());
    }
    Ok((held, used))
}

fn store(dir: &Path, owner: Owner, name: &WalFileName, bytes: &[u8]) -> Result<(), RestoreError> {
    let path = dir.join(format!("{name}.{}", blake3::hash(bytes).to_hex()));
    // No fsync: a spool file lost in a crash is fetched again, and a torn one fails its
    // checksum when served.
    let options = WriteOptions::private(owner)
        .durability(Durability::Deferred)
        .temp(TempName::Marked(TEMP_MARK));
    atomic::write(&path, bytes, options).map_err(|e| RestoreError::io(&path, e.source))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use crate::{FetchOutcome, FetchRequest, fetch_wal};
    use storage::{Compression, LocalStorage, PutMode, layout, object};

    const SYSID: u64 = 7;

    fn segment_name(n: u32) -> String {
        format!("00000001000000000000{n:04X}")
    }

    async fn fetch(
        storage: &LocalStorage,
        name: &str,
        dest: &Path,
        spool: &Spool,
    ) -> Result<FetchOutcome, crate::FetchError> {
        let request = FetchRequest {
            name,
            dest,
            system_identifier: Some(SYSID),
            spool: Some(spool),
        };
        let storage: Arc<dyn Storage> = Arc::new(storage.clone());
        fetch_wal(&request, || async { Ok(storage) }).await
    }

    async fn repository_with_segments(dir: &Path, count: u32) -> LocalStorage {
        std::fs::create_dir(dir.join("repo")).expect("repo dir");
        let storage = LocalStorage::open(dir.join("repo")).expect("repo");
        for n in 1..=count {
            let name: WalFileName = segment_name(n).parse().expect("name");
            let plain = vec![n as u8; 8192];
            let (_, stored) = object::encode(&plain, Compression::default()).expect("encode");
            storage
                .put_bytes(
                    &layout::wal_key(SYSID, &name),
                    stored,
                    PutMode::Create,
                    Durability::Immediate,
                )
                .await
                .expect("put");
        }
        storage
    }

    fn spooled_file(dir: &Path, name: &str) -> PathBuf {
        std::fs::read_dir(dir.join("spool/7"))
            .expect("spool")
            .flatten()
            .map(|e| e.path())
            .find(|p| p.to_string_lossy().contains(name))
            .expect("spooled")
    }

    #[tokio::test]
    async fn segments_are_read_ahead_served_once_and_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = repository_with_segments(dir.path(), 6).await;
        let spool = Spool::new(dir.path().join("spool"), 3, 1 << 30);
        assert!(spool.wants_refill(SYSID, &segment_name(1)));
        assert!(!spool.wants_refill(SYSID, "00000002.history"));

        let report = spool
            .prefetch_after(&storage, SYSID, &segment_name(1), 2)
            .await
            .expect("prefetch");
        assert_eq!(report.fetched, 3, "segments 2, 3 and 4");
        assert!(!spool.wants_refill(SYSID, &segment_name(1)));

        let dest = dir.path().join("out");
        let outcome = fetch(&storage, &segment_name(2), &dest, &spool)
            .await
            .expect("fetch");
        assert!(matches!(
            outcome,
            FetchOutcome::Fetched {
                from_spool: true,
                ..
            }
        ));
        assert_eq!(std::fs::read(&dest).expect("read"), vec![2u8; 8192]);

        // A spooled copy that fails its checksum is discarded; the repository answers.
        let spooled = spooled_file(dir.path(), &segment_name(3));
        let mut bytes = std::fs::read(&spooled).expect("spooled");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&spooled, bytes).expect("corrupt");
        let outcome = fetch(&storage, &segment_name(3), &dest, &spool)
            .await
            .expect("fetch");
        assert!(matches!(
            outcome,
            FetchOutcome::Fetched {
                from_spool: false,
                ..
            }
        ));
        assert_eq!(std::fs::read(&dest).expect("read"), vec![3u8; 8192]);
        assert!(!spooled.exists());

        // Read-ahead stops at the end of the archive and removes what recovery went past.
        let report = spool
            .prefetch_after(&storage, SYSID, &segment_name(4), 2)
            .await
            .expect("prefetch");
        assert_eq!(report.fetched, 2, "segments 5 and 6; 7 is not archived");
        let mut left: Vec<String> = std::fs::read_dir(dir.path().join("spool/7"))
            .expect("spool")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != LOCK_NAME)
            .collect();
        left.sort();
        let names: Vec<&str> = left.iter().map(|n| wal_name_part(n)).collect();
        assert_eq!(names, [segment_name(5), segment_name(6)]);
    }

    #[tokio::test]
    async fn the_byte_bound_limits_what_waits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = repository_with_segments(dir.path(), 6).await;
        // Segments wait decompressed: 8 KiB each here.
        let one = 8192;
        let spool = Spool::new(dir.path().join("spool"), 5, 2 * one);
        let report = spool
            .prefetch_after(&storage, SYSID, &segment_name(1), 2)
            .await
            .expect("prefetch");
        assert_eq!(report.fetched, 2);
        assert!(report.bytes <= 2 * one);
    }
}
