//! Put a base backup into a data directory, ready to recover when PostgreSQL starts.
//!
//! Nothing that looks complete is left behind by a failed restore: a marker file is written
//! first, `global/pg_control` (without which PostgreSQL will not start) is written under a
//! temporary name and renamed last, and on any error everything written is removed.
//! Chunks are fetched, decompressed and verified `parallelism` at a time.

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub data_dir: PathBuf,
    pub parallelism: usize,
    /// Check that every chunk exists before writing anything.
    pub verify_first: bool,
    pub target: RecoveryTarget,
    /// The `restore_command` to write (absolute binary path, no secrets).
    pub restore_command: String,
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
    let key = layout::manifest_key(backup_id);
    let bytes = storage.get_bytes(&key).await?;
    let plain = object::decode(&key, &bytes)?;
    Ok(BackupManifest::from_json(&key, &plain)?)
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

    // Directories, links and empty files first, so chunk writers only ever open existing files.
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
            EntryKind::File => {
                let file = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
                file.set_len(entry.size).map_err(|e| io(&path, e))?;
                file.set_permissions(std::fs::Permissions::from_mode(entry.mode))
                    .map_err(|e| io(&path, e))?;
            }
        }
    }

    debug!("directories and files created");
    let parallelism = opts.parallelism.max(1);
    // Relation blocks: each lands at its own offset, in any order.
    let mut writes = Vec::new();
    for entry in manifest.files.iter().filter(|e| !e.blocks.is_empty()) {
        let path = Arc::new(target_path(&root, &entry.path)?);
        let mut offset = 0;
        for chunk in &entry.blocks {
            writes.push((path.clone(), offset, chunk.clone()));
            offset += chunk.len;
        }
    }
    futures::stream::iter(writes)
        .map(|(path, offset, chunk)| {
            let storage = storage.clone();
            async move {
                let plain = fetch_chunk(storage.as_ref(), &chunk).await?;
                tokio::task::spawn_blocking(move || write_at(&path, offset, &plain))
                    .await
                    .map_err(|e| RestoreError::Refused(format!("write task failed: {e}")))?
            }
        })
        .buffer_unordered(parallelism * 2)
        .try_collect::<()>()
        .await?;

    debug!("relation blocks written");
    restore_bundle(storage, manifest, &root, parallelism).await?;
    debug!("small files written");
    write_recovery_files(manifest, opts)?;

    let dir = std::fs::File::open(&root).map_err(|e| io(&root, e))?;
    rustix::fs::syncfs(&dir).map_err(|e| io(&root, e.into()))?;
    debug!("data directory durable");
    let control = root.join(CONTROL_FILE);
    std::fs::rename(root.join("global/pg_control.lifeline-partial"), &control)
        .map_err(|e| io(&control, e))?;
    std::fs::remove_file(root.join(MARKER)).map_err(|e| io(&root.join(MARKER), e))?;
    rustix::fs::syncfs(&dir).map_err(|e| io(&root, e.into()))?;

    Ok(RestoreReport {
        files: manifest
            .files
            .iter()
            .filter(|f| f.kind == EntryKind::File)
            .count(),
        bytes: manifest.size_bytes,
    })
}

/// Read one chunk out of its pack and check it is the chunk the manifest names.
pub(crate) async fn fetch_chunk(
    storage: &dyn Storage,
    chunk: &ChunkRef,
) -> Result<Vec<u8>, RestoreError> {
    let key = layout::pack_key(&chunk.pack);
    let bytes = storage
        .get_range(&key, chunk.offset..chunk.offset + chunk.stored)
        .await?;
    let chunk = chunk.clone();
    tokio::task::spawn_blocking(move || decode_chunk(&key, &chunk, &bytes))
        .await
        .map_err(|e| RestoreError::Refused(format!("decompression task failed: {e}")))?
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

fn write_at(path: &Path, offset: u64, data: &[u8]) -> Result<(), RestoreError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| RestoreError::io(path, e))?;
    file.write_all_at(data, offset)
        .map_err(|e| RestoreError::io(path, e))
}

/// The small files: fetch the bundle's chunks in order (several in flight) and cut the stream
/// back into files at the offsets the manifest recorded.
async fn restore_bundle(
    storage: Arc<dyn Storage>,
    manifest: &BackupManifest,
    root: &Path,
    parallelism: usize,
) -> Result<(), RestoreError> {
    let mut files: Vec<(u64, u64, PathBuf)> = manifest
        .files
        .iter()
        .filter_map(|f| f.bundle_offset.map(|o| (o, f.size, f.path.clone())))
        .map(|(o, s, p)| target_path(root, &p).map(|path| (o, s, path)))
        .collect::<Result<_, _>>()?;
    files.sort_by_key(|f| f.0);
    let mut chunks = futures::stream::iter(manifest.bundle.clone())
        .map(|chunk| {
            let storage = storage.clone();
            async move { fetch_chunk(storage.as_ref(), &chunk).await }
        })
        .buffered(parallelism * 2);
    let mut stream_offset = 0u64;
    let mut next_file = 0;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        let chunk_end = stream_offset + chunk.len() as u64;
        // Every file overlapping this chunk gets its part of it.
        let mut i = next_file;
        while i < files.len() && files[i].0 < chunk_end {
            let (start, size, path) = &files[i];
            let end = start + size;
            let from = (*start).max(stream_offset);
            let to = end.min(chunk_end);
            if to > from {
                let slice = &chunk[(from - stream_offset) as usize..(to - stream_offset) as usize];
                write_at(path, from - start, slice)?;
            }
            if end <= chunk_end {
                next_file = i + 1;
            }
            i += 1;
        }
        stream_offset = chunk_end;
    }
    let missing = files.iter().skip(next_file).find(|f| f.1 > 0);
    if let Some((_, _, path)) = missing {
        return Err(RestoreError::Refused(format!(
            "the backup's bundle of small files ends before {}: the manifest is corrupt",
            path.display()
        )));
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
