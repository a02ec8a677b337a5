//! Put a base backup into a data directory, ready to recover when PostgreSQL starts.
//!
//! Nothing that looks complete is left behind by a failed restore: a marker file is written
//! first, `global/pg_control` (without which PostgreSQL will not start) is written under a
//! temporary name and renamed last, and on any error everything written is removed.
//! Chunks are fetched, decompressed and verified `parallelism` at a time.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use storage::manifest::{BackupManifest, ChunkRef, EntryKind};
use storage::{Storage, StorageExt, layout, object};
use tracing::debug;

use crate::RestoreError;

const MARKER: &str = ".lifeline-restore-incomplete";
const CONTROL_FILE: &str = "global/pg_control";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Stop as soon as the backup is consistent.
    Immediate,
    /// Replay up to and including this instant, on the newest timeline.
    Time(jiff::Timestamp),
    /// Replay everything the archive holds, on the newest timeline (a failover or a drill).
    EndOfArchive,
}

/// Whether the restored server archives WAL (`archive_mode` in `postgresql.auto.conf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveMode {
    /// `archive_mode = 'off'`: a copy started for a test never writes into the repository.
    #[default]
    Off,
    /// Keep the backed-up server's setting: the restore makes the new primary (failover).
    Preserve,
}

impl std::str::FromStr for ArchiveMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" => Ok(ArchiveMode::Off),
            "preserve" => Ok(ArchiveMode::Preserve),
            _ => Err(format!(
                "--archive-mode {s:?}: use off (the restored server archives nothing) or preserve"
            )),
        }
    }
}

/// Where the backup's tablespaces go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TablespaceMapping {
    /// `--tablespace-map NAME=DIR`: NAME is the tablespace's name or oid.
    pub each: Vec<(String, PathBuf)>,
    /// `--tablespace-map-all DIR`: every other tablespace into `DIR/<name>`.
    pub all: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub data_dir: PathBuf,
    pub parallelism: usize,
    /// Chunk groups read from the repository at once.
    pub downloads: usize,
    /// Check that every chunk exists before writing anything.
    pub verify_first: bool,
    pub target: RecoveryTarget,
    /// The `restore_command` to write (absolute binary path, no secrets).
    pub restore_command: String,
    pub tablespaces: TablespaceMapping,
    /// `--waldir`: `pg_wal` becomes a link to this empty or new directory; otherwise a real
    /// directory inside the data directory.
    pub waldir: Option<PathBuf>,
    pub archive_mode: ArchiveMode,
    pub timeline: crate::TargetTimeline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    pub files: usize,
    pub bytes: u64,
}

pub async fn read_manifest(
    storage: &dyn Storage,
    backup_id: &str,
) -> Result<BackupManifest, RestoreError> {
    Ok(BackupManifest::load(storage, backup_id).await?)
}

/// Refuse a data directory that holds anything (or belongs to a running server).
pub(crate) fn check_target_dir(dir: &Path) -> Result<bool, RestoreError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_none() {
                return Ok(true);
            }
            let running = dir.join("postmaster.pid").exists();
            Err(RestoreError::Refused(format!(
                "{} is not empty{}: restore into an empty or new directory (--data-dir), or move the old one aside first",
                dir.display(),
                if running {
                    " and a server may be running on it (postmaster.pid exists); stop it first"
                } else {
                    ""
                }
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(RestoreError::io(dir, e)),
    }
}

/// Restore `manifest` into `opts.data_dir` and write the recovery settings.
pub async fn restore_base(
    storage: Arc<dyn Storage>,
    manifest: &BackupManifest,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    let existed = check_target_dir(&opts.data_dir)?;
    if opts.verify_first {
        check_chunks_exist(storage.as_ref(), manifest, opts.parallelism).await?;
        debug!("every pack the backup needs is present");
    }
    if !existed {
        std::fs::create_dir_all(&opts.data_dir).map_err(|e| RestoreError::io(&opts.data_dir, e))?;
    }
    let result = restore_into(storage, manifest, opts).await;
    if result.is_err() {
        clean_up(&opts.data_dir, existed);
    }
    result
}

fn clean_up(dir: &Path, existed: bool) {
    if !existed {
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

async fn check_chunks_exist(
    storage: &dyn Storage,
    manifest: &BackupManifest,
    parallelism: usize,
) -> Result<(), RestoreError> {
    let packs: std::collections::BTreeSet<String> =
        manifest.chunks().map(|c| c.pack.clone()).collect();
    let missing: Vec<String> = futures::stream::iter(packs)
        .map(|pack| async move {
            match storage.exists(&layout::pack_key(&pack)).await {
                Ok(true) => Ok(None),
                Ok(false) => Ok(Some(pack)),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(parallelism.max(1) * 4)
        .try_filter_map(|m| async move { Ok(m) })
        .try_collect()
        .await?;
    if let Some(first) = missing.first() {
        return Err(RestoreError::Refused(format!(
            "backup {} is damaged: {} pack(s) missing from the repository, e.g. {}; nothing was written. \
             Restore an older backup (--from BACKUP_ID) and run `lifeline verify --read-data`",
            manifest.backup_id,
            missing.len(),
            layout::pack_key(first)
        )));
    }
    Ok(())
}

fn target_path(root: &Path, rel: &str) -> Result<PathBuf, RestoreError> {
    if rel
        .split('/')
        .any(|p| p.is_empty() || p == "." || p == "..")
        || rel.starts_with('/')
    {
        return Err(RestoreError::Refused(format!(
            "the manifest names an unsafe path {rel:?}: the backup is corrupt"
        )));
    }
    // The control file is written under a temporary name and renamed last.
    if rel == CONTROL_FILE {
        return Ok(root.join("global/pg_control.lifeline-partial"));
    }
    Ok(root.join(rel))
}

async fn restore_into(
    storage: Arc<dyn Storage>,
    manifest: &BackupManifest,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    let root = opts.data_dir.clone();
    let io = |p: &Path, e| RestoreError::io(p, e);
    std::fs::write(root.join(MARKER), manifest.backup_id.as_bytes())
        .map_err(|e| io(&root.join(MARKER), e))?;
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io(&root, e))?;

    // Directories and links first, then the files (empty, at their final size) in parallel:
    // creating an inode is slow enough on some filesystems (0.5 ms measured here) that a
    // thousand files in a row cost more than writing their data.
    let mut files = Vec::new();
    for entry in &manifest.files {
        let path = target_path(&root, &entry.path)?;
        match entry.kind {
            EntryKind::Dir => {
                std::fs::create_dir_all(&path).map_err(|e| io(&path, e))?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(entry.mode))
                    .map_err(|e| io(&path, e))?;
            }
            EntryKind::Symlink => {
                let target = entry.link_target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(target, &path).map_err(|e| io(&path, e))?;
            }
            EntryKind::File => files.push((path, entry.size, entry.mode)),
        }
    }
    let batch = files.len().div_ceil(opts.parallelism.max(1) * 2).max(1);
    let batches: Vec<Vec<_>> = files.chunks(batch).map(<[_]>::to_vec).collect();
    futures::stream::iter(batches)
        .map(|batch| async move {
            tokio::task::spawn_blocking(move || create_files(&batch))
                .await
                .map_err(|e| RestoreError::Refused(format!("file creation task failed: {e}")))?
        })
        .buffer_unordered(opts.parallelism.max(1) * 2)
        .try_collect::<()>()
        .await?;

    debug!("directories and files created");
    let parallelism = opts.parallelism.max(1);
    let plan = plan_writes(manifest, &root)?;
    let locks = FileLocks::default();
    let groups = plan
        .into_iter()
        .flat_map(|(pack, chunks)| write_groups(&pack, chunks));
    futures::stream::iter(groups)
        .map(|group| {
            let (storage, locks) = (storage.clone(), locks.clone());
            async move {
                let bytes = fetch_group(storage.as_ref(), &group).await?;
                tokio::task::spawn_blocking(move || write_group(&group, &bytes, &locks))
                    .await
                    .map_err(|e| RestoreError::Refused(format!("write task failed: {e}")))?
            }
        })
        // More reads than cores: a task waiting on a read or a flush leaves the cores busy.
        .buffer_unordered(opts.downloads.max(1))
        .try_collect::<()>()
        .await?;
    debug!("all files written");
    write_recovery_files(manifest, opts)?;

    // fsync exactly what was written (a syncfs would also flush every other writer's dirty
    // data on the filesystem), then publish pg_control and sync its directory.
    let mut written: Vec<PathBuf> = manifest
        .files
        .iter()
        .filter(|f| f.kind != EntryKind::Symlink)
        .map(|f| target_path(&root, &f.path))
        .collect::<Result<_, _>>()?;
    written.extend(
        [
            "backup_label",
            "tablespace_map",
            "recovery.signal",
            "postgresql.auto.conf",
        ]
        .map(|f| root.join(f)),
    );
    written.push(root.clone());
    futures::stream::iter(written)
        .map(|path| async move {
            tokio::task::spawn_blocking(move || fsync_path(&path))
                .await
                .map_err(|e| RestoreError::Refused(format!("fsync task failed: {e}")))?
        })
        .buffer_unordered(parallelism * 4)
        .try_collect::<()>()
        .await?;
    debug!("data directory durable");
    let control = root.join(CONTROL_FILE);
    std::fs::rename(root.join("global/pg_control.lifeline-partial"), &control)
        .map_err(|e| io(&control, e))?;
    std::fs::remove_file(root.join(MARKER)).map_err(|e| io(&root.join(MARKER), e))?;
    fsync_path(&root.join("global"))?;
    fsync_path(&root)?;

    Ok(RestoreReport {
        files: manifest
            .files
            .iter()
            .filter(|f| f.kind == EntryKind::File)
            .count(),
        bytes: manifest.size_bytes,
    })
}

pub(crate) fn decode_chunk(
    pack_key: &str,
    chunk: &ChunkRef,
    framed: &[u8],
) -> Result<Vec<u8>, RestoreError> {
    let name = format!("chunk {} in {pack_key}", chunk.hash);
    let plain = object::decode(&name, framed)?;
    // The header verified the bytes; the hash proves they are the bytes the manifest meant.
    if plain.len() as u64 != chunk.len || object::checksum(&plain).to_hex().as_str() != chunk.hash {
        return Err(RestoreError::Storage(storage::StorageError::Corrupt {
            key: name,
            reason: "content does not match the chunk the manifest names".into(),
        }));
    }
    Ok(plain)
}

fn create_files(files: &[(PathBuf, u64, u32)]) -> Result<(), RestoreError> {
    for (path, size, mode) in files {
        let file = std::fs::File::create(path).map_err(|e| RestoreError::io(path, e))?;
        file.set_len(*size).map_err(|e| RestoreError::io(path, e))?;
        file.set_permissions(std::fs::Permissions::from_mode(*mode))
            .map_err(|e| RestoreError::io(path, e))?;
    }
    Ok(())
}

/// fsync a file or directory that may not exist (tablespace_map is optional).
fn fsync_path(path: &Path) -> Result<(), RestoreError> {
    match std::fs::File::open(path) {
        Ok(file) => file.sync_all().map_err(|e| RestoreError::io(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RestoreError::io(path, e)),
    }
}

/// `range` of a chunk's plaintext belongs at `offset` of `path`.
#[derive(Debug, Clone)]
struct Target {
    path: Arc<PathBuf>,
    offset: u64,
    range: std::ops::Range<usize>,
}

/// Every chunk the restore needs, by pack (in pack order), each with every place it goes:
/// a chunk used twice is fetched and decoded once.
type WritePlan = BTreeMap<String, Vec<(ChunkRef, Vec<Target>)>>;

fn plan_writes(manifest: &BackupManifest, root: &Path) -> Result<WritePlan, RestoreError> {
    let mut by_pack: BTreeMap<String, HashMap<String, (ChunkRef, Vec<Target>)>> = BTreeMap::new();
    let mut add = |chunk: &ChunkRef, target: Target| {
        by_pack
            .entry(chunk.pack.clone())
            .or_default()
            .entry(chunk.hash.clone())
            .or_insert_with(|| (chunk.clone(), Vec::new()))
            .1
            .push(target);
    };
    for entry in manifest.files.iter().filter(|e| !e.blocks.is_empty()) {
        let path = Arc::new(target_path(root, &entry.path)?);
        let mut offset = 0;
        for chunk in &entry.blocks {
            add(
                chunk,
                Target {
                    path: path.clone(),
                    offset,
                    range: 0..chunk.len as usize,
                },
            );
            offset += chunk.len;
        }
    }
    // Small files: cut the bundle stream back into files at their recorded offsets.
    let mut small: Vec<(u64, u64, Arc<PathBuf>)> = Vec::new();
    for f in &manifest.files {
        if let Some(start) = f.bundle_offset {
            small.push((start, f.size, Arc::new(target_path(root, &f.path)?)));
        }
    }
    small.sort_by_key(|f| f.0);
    let mut stream_offset = 0u64;
    let mut first = 0;
    for chunk in &manifest.bundle {
        let chunk_end = stream_offset + chunk.len;
        let mut i = first;
        while i < small.len() && small[i].0 < chunk_end {
            let (start, size, path) = &small[i];
            let end = start + size;
            let (from, to) = ((*start).max(stream_offset), end.min(chunk_end));
            if to > from {
                let range = (from - stream_offset) as usize..(to - stream_offset) as usize;
                add(
                    chunk,
                    Target {
                        path: path.clone(),
                        offset: from - start,
                        range,
                    },
                );
            }
            if end <= chunk_end {
                first = i + 1;
            }
            i += 1;
        }
        stream_offset = chunk_end;
    }
    if let Some((_, _, path)) = small.iter().skip(first).find(|f| f.1 > 0) {
        return Err(RestoreError::Refused(format!(
            "the backup's bundle of small files ends before {}: the manifest is corrupt",
            path.display()
        )));
    }
    Ok(by_pack
        .into_iter()
        .map(|(pack, chunks)| {
            let mut chunks: Vec<_> = chunks.into_values().collect();
            chunks.sort_by_key(|(c, _)| c.offset);
            (pack, chunks)
        })
        .collect())
}

/// Neighbouring chunks of one pack, read with one ranged request and decoded and written by
/// one task: memory stays at a few groups in flight however large the packs are.
struct WriteGroup {
    pack_key: String,
    /// The byte range of the pack that holds the chunks.
    start: u64,
    end: u64,
    chunks: Vec<(ChunkRef, Vec<Target>)>,
}

const CHUNKS_PER_GROUP: usize = 16;

fn write_groups(pack: &str, chunks: Vec<(ChunkRef, Vec<Target>)>) -> Vec<WriteGroup> {
    let key = layout::pack_key(pack);
    let mut groups = Vec::new();
    let mut chunks = chunks.into_iter().peekable();
    while chunks.peek().is_some() {
        let chunks: Vec<_> = chunks.by_ref().take(CHUNKS_PER_GROUP).collect();
        let start = chunks.iter().map(|(c, _)| c.offset).min().unwrap_or(0);
        let end = chunks
            .iter()
            .map(|(c, _)| c.offset.saturating_add(c.stored))
            .max()
            .unwrap_or(0);
        groups.push(WriteGroup {
            pack_key: key.clone(),
            start,
            end,
            chunks,
        });
    }
    groups
}

async fn fetch_group(storage: &dyn Storage, group: &WriteGroup) -> Result<Vec<u8>, RestoreError> {
    let bytes = storage
        .get_range(&group.pack_key, group.start..group.end)
        .await?;
    if (bytes.len() as u64) < group.end - group.start {
        return Err(RestoreError::Storage(storage::StorageError::Corrupt {
            key: group.pack_key.clone(),
            reason: "the pack is shorter than the manifest says".into(),
        }));
    }
    Ok(bytes)
}

/// One lock per file: writers to the same file take turns in user space instead of spinning
/// on the inode lock in the kernel (which, measured, cost more than the copy itself).
/// The lock also counts the bytes written since the file was last flushed.
type FileLocks = Arc<Mutex<HashMap<Arc<PathBuf>, Arc<Mutex<u64>>>>>;

/// Flush a file to disk every this many bytes, so that writeback runs alongside decoding
/// instead of all at the end.
const FLUSH_EVERY: u64 = 64 << 20;

/// Decode one chunk at a time and write it to each of its places: one decoded chunk per task
/// is all the plaintext held in memory.
fn write_group(group: &WriteGroup, bytes: &[u8], locks: &FileLocks) -> Result<(), RestoreError> {
    let mut open: HashMap<Arc<PathBuf>, std::fs::File> = HashMap::new();
    for (chunk, targets) in &group.chunks {
        // The manifest is checksummed, but a slice of its numbers must still never panic.
        let framed = usize::try_from(chunk.offset - group.start)
            .ok()
            .and_then(|from| bytes.get(from..from.checked_add(chunk.stored as usize)?))
            .ok_or_else(|| {
                RestoreError::Refused(format!(
                    "chunk {} lies outside {}: the manifest is corrupt",
                    chunk.hash, group.pack_key
                ))
            })?;
        let plain = decode_chunk(&group.pack_key, chunk, framed)?;
        for target in targets {
            let slice = plain.get(target.range.clone()).ok_or_else(|| {
                RestoreError::Refused(format!(
                    "chunk {} is shorter than the manifest says",
                    chunk.hash
                ))
            })?;
            let file = match open.entry(target.path.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(target.path.as_ref())
                        .map_err(|err| RestoreError::io(target.path.as_ref(), err))?,
                ),
            };
            write_locked(locks, &target.path, file, slice, target.offset)?;
        }
    }
    Ok(())
}

/// Write under the file's lock, and flush the file every `FLUSH_EVERY` bytes.
fn write_locked(
    locks: &FileLocks,
    path: &Arc<PathBuf>,
    file: &std::fs::File,
    slice: &[u8],
    offset: u64,
) -> Result<(), RestoreError> {
    let lock = locks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(path.clone())
        .or_default()
        .clone();
    let mut unflushed = lock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    file.write_all_at(slice, offset)
        .map_err(|e| RestoreError::io(path.as_ref(), e))?;
    *unflushed += slice.len() as u64;
    let flush = *unflushed >= FLUSH_EVERY;
    if flush {
        *unflushed = 0;
    }
    drop(unflushed);
    if flush {
        file.sync_data()
            .map_err(|e| RestoreError::io(path.as_ref(), e))?;
    }
    Ok(())
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn write_recovery_files(
    manifest: &BackupManifest,
    opts: &RestoreOptions,
) -> Result<(), RestoreError> {
    let root = &opts.data_dir;
    let write = |name: &str, text: &str| {
        let path = root.join(name);
        std::fs::write(&path, text).map_err(|e| RestoreError::io(&path, e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| RestoreError::io(&path, e))
    };
    write("backup_label", &manifest.backup_label)?;
    if let Some(map) = &manifest.tablespace_map {
        write("tablespace_map", map)?;
    }
    write("recovery.signal", "")?;
    let mut settings = format!(
        "\n# Added by lifeline restore of {} at {}\nrestore_command = {}\nrecovery_target_action = 'promote'\n",
        manifest.backup_id,
        jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        quote(&opts.restore_command)
    );
    match &opts.target {
        RecoveryTarget::Immediate => {
            settings
                .push_str("recovery_target = 'immediate'\nrecovery_target_timeline = 'current'\n");
        }
        RecoveryTarget::Time(t) => {
            settings.push_str(&format!(
                "recovery_target_time = {}\nrecovery_target_inclusive = on\nrecovery_target_timeline = 'latest'\n",
                quote(&t.strftime("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
            ));
        }
        RecoveryTarget::EndOfArchive => settings.push_str("recovery_target_timeline = 'latest'\n"),
    }
    let auto_conf = root.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto_conf).unwrap_or_default();
    text.push_str(&settings);
    std::fs::write(&auto_conf, text).map_err(|e| RestoreError::io(&auto_conf, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(hash: &str, len: u64, pack: &str, offset: u64) -> ChunkRef {
        ChunkRef {
            hash: hash.into(),
            len,
            pack: pack.into(),
            offset,
            stored: 10,
        }
    }

    fn file(
        path: &str,
        size: u64,
        bundle_offset: Option<u64>,
        blocks: Vec<ChunkRef>,
    ) -> storage::manifest::FileEntry {
        storage::manifest::FileEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o600,
            size,
            mtime: 0,
            link_target: None,
            blocks,
            bundle_offset,
        }
    }

    #[test]
    fn the_bundle_is_cut_back_into_files_and_shared_chunks_are_fetched_once() {
        let manifest_json = serde_json::json!({
            "format": 1, "backup_id": "b", "service": "postgresql", "kind": "base",
            "system_identifier": 1, "server_version": "15", "database": "postgres",
            "timeline": 1, "start_lsn": "0/0", "stop_lsn": "0/0", "start_wal": "", "stop_wal": "",
            "segment_size": 16777216, "started_at": "2025-01-01T00:00:00Z",
            "finished_at": "2025-01-01T00:00:00Z", "block_size": 8192, "files": [], "bundle": [],
            "backup_label": "", "row_counts": {}, "size_bytes": 0, "new_bytes": 0
        });
        let mut manifest: BackupManifest = serde_json::from_value(manifest_json).expect("manifest");
        // Files of 5, 0, 12 and 3 bytes in a bundle cut into chunks of 8, 8 and 4 bytes.
        manifest.files = vec![
            file("a", 5, Some(0), vec![]),
            file("empty", 0, Some(5), vec![]),
            file("b", 12, Some(5), vec![]),
            file("c", 3, Some(17), vec![]),
            file(
                "big",
                16,
                None,
                vec![chunk("z", 8, "p1", 0), chunk("z", 8, "p1", 0)],
            ),
        ];
        manifest.bundle = vec![
            chunk("x", 8, "p1", 10),
            chunk("y", 8, "p2", 0),
            chunk("w", 4, "p2", 10),
        ];
        let root = Path::new("/r");
        let plan = plan_writes(&manifest, root).expect("plan");
        let mut written: BTreeMap<String, u64> = BTreeMap::new();
        for chunks in plan.values() {
            for (_, targets) in chunks {
                for t in targets {
                    *written.entry(t.path.display().to_string()).or_default() +=
                        t.range.len() as u64;
                }
            }
        }
        let expect = |p: &str| written.get(&format!("/r/{p}")).copied().unwrap_or(0);
        assert_eq!(
            (
                expect("a"),
                expect("empty"),
                expect("b"),
                expect("c"),
                expect("big")
            ),
            (5, 0, 12, 3, 16)
        );
        // The zero block used twice is one chunk with two targets.
        let p1 = &plan["p1"];
        assert_eq!(p1.iter().filter(|(c, _)| c.hash == "z").count(), 1);
        assert_eq!(
            p1.iter().find(|(c, _)| c.hash == "z").map(|(_, t)| t.len()),
            Some(2)
        );
        // A bundle that ends too early is refused.
        manifest.bundle.pop();
        assert!(plan_writes(&manifest, root).is_err());
    }

    #[test]
    fn refuses_non_empty_directories_and_unsafe_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(check_target_dir(dir.path()).expect("empty is fine"));
        assert!(!check_target_dir(&dir.path().join("new")).expect("missing is fine"));
        std::fs::write(dir.path().join("PG_VERSION"), "15").expect("write");
        assert!(check_target_dir(dir.path()).is_err());
        for bad in ["../etc", "/etc/passwd", "a//b", "a/./b"] {
            assert!(target_path(dir.path(), bad).is_err(), "{bad}");
        }
        assert!(quote("it's").contains("it''s"));
    }
}
