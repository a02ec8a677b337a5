//! `wal fetch` read-ahead: recovery asks for one segment at a time and waits for each; with a
//! remote repository most of that wait is the round trip. After serving segment N, the next
//! segments are fetched in parallel into a spool directory (outside PGDATA), so that the
//! following requests are answered from local disk.
//!
//! Spool layout: `<spool>/<sysid>/<WAL file name>` holds the object exactly as stored (framed,
//! compressed), written to a temporary name and renamed, so a reader sees whole files only.
//! Serving a file decodes it, which verifies its checksum; a file that fails is discarded and
//! the segment is read from the repository instead. One prefetcher runs per cluster at a time
//! (an advisory lock); files older than the segment just requested are removed.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use storage::manifest::ClusterIdentity;
use storage::wal::{DEFAULT_SEGMENT_SIZE, Segment, WalFileName};
use storage::{Storage, StorageExt, layout};
use tracing::{debug, warn};

use crate::RestoreError;

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

    fn path_of(&self, system_identifier: u64, name: &WalFileName) -> PathBuf {
        self.dir(system_identifier).join(name.to_string())
    }

    /// The stored object for `name`, if the spool holds it.
    pub(crate) async fn take(&self, system_identifier: u64, name: &WalFileName) -> Option<Vec<u8>> {
        tokio::fs::read(self.path_of(system_identifier, name))
            .await
            .ok()
    }

    pub(crate) async fn discard(&self, system_identifier: u64, name: &WalFileName) {
        let _ = tokio::fs::remove_file(self.path_of(system_identifier, name)).await;
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
                    name.as_str() > requested && !name.contains(TEMP_MARK) && name != LOCK_NAME
                })
                .count()
        });
        if waiting * 2 >= self.segments {
            return false;
        }
        // Probing the lock takes it for an instant; a prefetcher starting then simply finds
        // nothing to do next time.
        !matches!(try_lock(&dir), Ok(None))
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
        std::fs::create_dir_all(&dir).map_err(|e| RestoreError::io(&dir, e))?;
        let Some(_lock) = try_lock(&dir)? else {
            debug!("another prefetcher is running");
            return Ok(PrefetchReport::default());
        };
        let segment_size = ClusterIdentity::load(storage)
            .await?
            .map_or(DEFAULT_SEGMENT_SIZE, |c| c.segment_size);
        let Some(first) = requested.segment(segment_size) else {
            return Ok(PrefetchReport::default());
        };
        let (held, mut used) = tidy(&dir, &requested)?;
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
                let key = layout::wal_key(sysid, &name);
                (name, storage.get_bytes(&key).await)
            })
            .buffered(parallel.max(1));
        while let Some((name, result)) = fetches.next().await {
            let bytes = match result {
                Ok(bytes) => bytes,
                // The end of the archive (so far): nothing after it exists either.
                Err(e) if e.is_not_found() => break,
                Err(e) => {
                    warn!(wal = %name, "prefetch stopped: {e}");
                    break;
                }
            };
            used += bytes.len() as u64;
            if used > self.max_bytes {
                break;
            }
            store(&dir, &name, &bytes)?;
            report.fetched += 1;
            report.bytes += bytes.len() as u64;
        }
        Ok(report)
    }
}

fn try_lock(dir: &Path) -> Result<Option<std::fs::File>, RestoreError> {
    let path = dir.join(LOCK_NAME);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| RestoreError::io(&path, e))?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(Some(file)),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(RestoreError::io(&path, e.into())),
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
        if name.contains(TEMP_MARK) || name <= requested {
            let _ = std::fs::remove_file(entry.path());
            continue;
        }
        used += entry.metadata().map(|m| m.len()).unwrap_or(0);
        held.push(name);
    }
    Ok((held, used))
}

fn store(dir: &Path, name: &WalFileName, bytes: &[u8]) -> Result<(), RestoreError> {
    use std::io::Write;
    let path = dir.join(name.to_string());
    let temp = dir.join(format!("{name}{TEMP_MARK}{}", std::process::id()));
    // No fsync: a spool file lost in a crash is fetched again, and a torn one fails its
    // checksum when served.
    let written = std::fs::File::create(&temp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&temp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(RestoreError::io(&path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FetchOutcome, fetch_wal};
    use storage::{Compression, Durability, LocalStorage, PutMode, object};

    const SYSID: u64 = 7;

    fn segment_name(n: u32) -> String {
        format!("00000001000000000000{n:04X}")
    }

    async fn repository_with_segments(dir: &Path, count: u32) -> LocalStorage {
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
        let outcome = fetch_wal(&storage, Some(SYSID), &segment_name(2), &dest, Some(&spool))
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
        let spooled = dir.path().join("spool/7").join(segment_name(3));
        let mut bytes = std::fs::read(&spooled).expect("spooled");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&spooled, bytes).expect("corrupt");
        let outcome = fetch_wal(&storage, Some(SYSID), &segment_name(3), &dest, Some(&spool))
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
        assert_eq!(left, [segment_name(5), segment_name(6)]);
    }

    #[tokio::test]
    async fn the_byte_bound_limits_what_waits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = repository_with_segments(dir.path(), 6).await;
        let one = storage
            .head(&layout::wal_key(
                SYSID,
                &segment_name(2).parse().expect("name"),
            ))
            .await
            .expect("head")
            .size;
        let spool = Spool::new(dir.path().join("spool"), 5, 2 * one);
        let report = spool
            .prefetch_after(&storage, SYSID, &segment_name(1), 2)
            .await
            .expect("prefetch");
        assert_eq!(report.fetched, 2);
        assert!(report.bytes <= 2 * one);
    }
}
