//! Temporary files that processes killed mid-write leave behind.
//!
//! Every local put writes `.tmp.<name>.<pid>.<n>` beside its target and renames or links it
//! into place ([`crate::LocalStorage`]); the `wal fetch` spool writes
//! `<WAL name>.partial.<pid>` and renames it. A `kill -9`, an OOM kill or a power cut between
//! the two leaves the temporary file forever: `list` ignores it, so nothing else ever removes
//! it, and a WAL segment's leaves 16 MiB each time.
//!
//! A running writer's temporary file looks the same as a dead one's, so only age tells them
//! apart: callers remove what is older than a grace period longer than any write takes.
//! These functions work on a local directory by path; S3 has no temporary objects (an
//! interrupted multipart upload is the bucket's lifecycle rule to clean).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::StorageError;
use crate::storage::TEMP_PREFIX;

/// Marks a temporary name in the `wal fetch` spool (`restore::prefetch`).
const SPOOL_TEMP_MARK: &str = ".partial.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub path: PathBuf,
    pub size: u64,
    /// Since its last write (zero when its time is in the future).
    pub age: Duration,
}

/// Is `name` a repository put's temporary name?
pub fn is_repository_temp(name: &str) -> bool {
    name.starts_with(TEMP_PREFIX)
}

/// Is `name` a spool write's temporary name (`<WAL name>.partial.<pid>`)? A spooled partial
/// segment (`<name>.partial.<blake3 hex>`) is not: its suffix is 64 hex digits, not a pid.
pub fn is_spool_temp(name: &str) -> bool {
    name.rsplit_once(SPOOL_TEMP_MARK)
        .is_some_and(|(base, pid)| {
            !base.is_empty()
                && !pid.is_empty()
                && pid.len() <= 10
                && pid.bytes().all(|b| b.is_ascii_digit())
        })
}

/// Every repository temporary file under `root` (a local repository), at any depth.
pub fn find_in_repository(root: &Path, now: SystemTime) -> Result<Vec<Leftover>, StorageError> {
    find(root, now, is_repository_temp)
}

/// Every spool temporary file under `root` (the `wal fetch` spool), at any depth.
pub fn find_in_spool(root: &Path, now: SystemTime) -> Result<Vec<Leftover>, StorageError> {
    find(root, now, is_spool_temp)
}

/// Both kinds, each file once (the spool may live inside the repository directory).
pub fn find_all(
    repository: Option<&Path>,
    spool: Option<&Path>,
    now: SystemTime,
) -> Result<Vec<Leftover>, StorageError> {
    let mut out = Vec::new();
    if let Some(root) = repository {
        out.extend(find_in_repository(root, now)?);
    }
    if let Some(root) = spool {
        out.extend(find_in_spool(root, now)?);
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup_by(|a, b| a.path == b.path);
    Ok(out)
}

/// Total size of `leftovers`.
pub fn total_size(leftovers: &[Leftover]) -> u64 {
    leftovers.iter().map(|l| l.size).sum()
}

/// What [`remove_older_than`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removal {
    pub removed: usize,
    pub removed_bytes: u64,
    /// Younger than the grace period: perhaps still being written.
    pub kept: usize,
}

/// Remove the leftovers at least `grace` old. One that has vanished meanwhile (its writer
/// finished) counts as neither removed nor kept.
pub fn remove_older_than(leftovers: &[Leftover], grace: Duration) -> Result<Removal, StorageError> {
    let mut removal = Removal::default();
    for leftover in leftovers {
        if leftover.age < grace {
            removal.kept += 1;
            continue;
        }
        match std::fs::remove_file(&leftover.path) {
            Ok(()) => {
                removal.removed += 1;
                removal.removed_bytes += leftover.size;
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io(&leftover.path, e)),
        }
    }
    Ok(removal)
}

fn find(
    root: &Path,
    now: SystemTime,
    matches: fn(&str) -> bool,
) -> Result<Vec<Leftover>, StorageError> {
    let mut out = Vec::new();
    // The root itself is not followed either: a spool or repository directory replaced by a
    // link (to `/`, to another user's tree) would turn the walk, and prune's deletes, loose.
    if std::fs::symlink_metadata(root).is_ok_and(|m| m.file_type().is_symlink()) {
        return Ok(out);
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // A missing directory has no leftovers; one removed while walking neither.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(StorageError::io(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io(&dir, e))?;
            let path = entry.path();
            // Links are never followed: a link out of the repository is not ours to count
            // or remove.
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io(&path, e)),
            };
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            if !meta.is_file() || !entry.file_name().to_str().is_some_and(matches) {
                continue;
            }
            let modified = meta.modified().unwrap_or(now);
            out.push(Leftover {
                path,
                size: meta.len(),
                age: now.duration_since(modified).unwrap_or_default(),
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, len: usize, age: Duration) {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, vec![7u8; len]).expect("write");
        std::fs::File::options()
            .write(true)
            .open(path)
            .and_then(|f| f.set_modified(SystemTime::now() - age))
            .expect("age");
    }

    #[test]
    fn names_of_temporary_files() {
        assert!(is_repository_temp(".tmp.000000010000000000000001.4242.0"));
        assert!(!is_repository_temp("000000010000000000000001"));
        assert!(!is_repository_temp("x.tmp.1"));
        assert!(is_spool_temp("000000010000000000000003.partial.4242"));
        assert!(!is_spool_temp(&format!(
            "000000010000000000000003.partial.{}",
            "0123456789".repeat(6) + "0123"
        )));
        assert!(!is_spool_temp(&format!(
            "000000010000000000000003.{}",
            blake3::hash(b"x").to_hex()
        )));
        assert!(!is_spool_temp("000000010000000000000003.partial."));
        assert!(!is_spool_temp(".lock"));
    }

    #[test]
    fn finds_counts_and_removes_only_old_leftovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        let hour = Duration::from_secs(3600);
        let old_wal = repo.join("wal/7/00000001/.tmp.000000010000000000000001.99.0");
        let old_pack = repo.join("packs/ab/.tmp.abcdef.99.3");
        let young_pack = repo.join("packs/cd/.tmp.cdef.100.0");
        let kept_object = repo.join("wal/7/00000001/000000010000000000000002");
        let spool_temp = repo.join("spool/7/000000010000000000000003.partial.99");
        let spooled = repo.join("spool/7/000000010000000000000004.0a1b");
        write(&old_wal, 3 << 20, 30 * hour);
        write(&old_pack, 1000, 25 * hour);
        write(&young_pack, 10, Duration::ZERO);
        write(&kept_object, 5, 100 * hour);
        write(&spool_temp, 20, 48 * hour);
        write(&spooled, 20, 48 * hour);
        // A link to a temporary-looking file elsewhere is neither counted nor removed.
        let outside = dir.path().join(".tmp.outside");
        write(&outside, 1, 48 * hour);
        std::os::unix::fs::symlink(&outside, repo.join("packs/.tmp.link")).expect("link");

        let now = SystemTime::now();
        let spool = repo.join("spool");
        let found = find_all(Some(&repo), Some(&spool), now).expect("find");
        let paths: Vec<&Path> = found.iter().map(|l| l.path.as_path()).collect();
        assert_eq!(
            paths,
            vec![
                old_pack.as_path(),
                young_pack.as_path(),
                spool_temp.as_path(),
                old_wal.as_path()
            ]
        );
        assert_eq!(total_size(&found), (3 << 20) + 1000 + 10 + 20);
        assert!(found[0].age >= 25 * hour);

        let removal = remove_older_than(&found, 24 * hour).expect("remove");
        assert_eq!(
            removal,
            Removal {
                removed: 3,
                removed_bytes: (3 << 20) + 1000 + 20,
                kept: 1
            }
        );
        for path in [&old_wal, &old_pack, &spool_temp] {
            assert!(!path.exists(), "{} left", path.display());
        }
        for path in [&young_pack, &kept_object, &spooled, &outside] {
            assert!(path.exists(), "{} removed", path.display());
        }
        // Removing again finds the file gone: not an error, not counted.
        assert_eq!(
            remove_older_than(&found, Duration::ZERO).expect("again"),
            Removal {
                removed: 1,
                removed_bytes: 10,
                kept: 0
            }
        );
        assert!(
            find_all(Some(&dir.path().join("missing")), None, now)
                .expect("missing")
                .is_empty()
        );
    }
}
