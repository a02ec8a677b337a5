//! Put a Redis backup back: the files of a stream backup written into a data directory so that
//! a redis-server started on it loads them.
//!
//! Refused while a redis-server runs in that directory (Redis works in its `dir`, so its
//! process's working directory says which one it uses): it would overwrite the restored files
//! with its own on the next save, or on shutdown. Files that would be loaded instead of the
//! restored ones (an AOF directory, an older `dump.rdb`) are moved aside into
//! `lifeline-replaced-<time>/`, not deleted. Each file is written to a temporary name, checked
//! chunk by chunk, fsynced and renamed, then the directory is fsynced.

use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use storage::atomic::{StagedFile, WriteOptions};
use storage::manifest::{ChunkRef, StreamManifest};
use storage::private::Owner;
use storage::{Storage, layout};

use crate::RestoreError;
use crate::restore_base::decode_chunk;

/// What would be loaded in place of a restored RDB, or is a leftover of an interrupted save.
const SHADOWS: &[&str] = &["appendonlydir", "appendonly.aof", "dump.rdb"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisRestoreReport {
    pub files: Vec<PathBuf>,
    pub bytes: u64,
    /// Where files that were in the way were moved, if any were.
    pub moved_aside: Option<PathBuf>,
}

/// The pid of a redis-server working in `dir`, if one is.
pub fn redis_running_in(dir: &Path) -> Option<u32> {
    let dir = std::fs::canonicalize(dir).ok()?;
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            if !comm.trim().starts_with("redis-server") {
                return None;
            }
            let cwd = std::fs::read_link(entry.path().join("cwd")).ok()?;
            (cwd == dir).then_some(pid)
        })
}

/// How a Redis backup is restored.
#[derive(Debug, Clone)]
pub struct RedisRestoreOptions {
    /// Chunks read from the repository at once.
    pub transfers: usize,
    /// Whom the restored files and the directories the restore creates are given to: Redis's
    /// user when root restores for it. `Owner::KEEP` keeps the process's own.
    pub owner: Owner,
    /// Bytes written of the backup's size (`storage::progress::none()` for none).
    pub progress: std::sync::Arc<dyn storage::progress::Progress>,
}

/// The manifest of the stream backup (dump, RDB, AOF) `backup_id`.
pub(crate) async fn load_stream_manifest(
    storage: &dyn Storage,
    backup_id: &str,
) -> Result<StreamManifest, RestoreError> {
    StreamManifest::load(storage, backup_id)
        .await
        .map_err(|source| RestoreError::ReadManifest {
            backup_id: backup_id.to_string(),
            source: Box::new(source.into()),
        })
}

/// `manifest` as a whole, and every pack it needs present: checked before anything changes.
pub(crate) async fn check_backup(
    storage: &dyn Storage,
    manifest: &StreamManifest,
    transfers: usize,
) -> Result<(), RestoreError> {
    crate::validate::validate_stream(manifest)?;
    crate::restore_base::check_packs_exist(
        storage,
        &manifest.backup_id,
        manifest.packs(),
        transfers,
    )
    .await
}

/// Restore the files of `manifest` into `dir` (created if missing) as `options` say.
pub async fn restore_redis(
    storage: &dyn Storage,
    manifest: &StreamManifest,
    dir: &Path,
    options: &RedisRestoreOptions,
) -> Result<RedisRestoreReport, RestoreError> {
    let owner = options.owner;
    // Nothing is moved aside for a backup that cannot be read whole.
    check_backup(storage, manifest, options.transfers).await?;
    let moved_aside = prepare_dir(dir, owner)?;
    let mut report = RedisRestoreReport {
        files: Vec::new(),
        bytes: 0,
        moved_aside,
    };
    let written = write_files(storage, manifest, dir, options, &mut report).await;
    if let Err(e) = written {
        return Err(put_back(dir, report.moved_aside.as_deref(), e));
    }
    options.progress.finish();
    Ok(report)
}

/// After a failed restore, the files that were moved aside go back where Redis looks for
/// them; if that fails too, the error says where they are.
fn put_back(dir: &Path, aside: Option<&Path>, error: RestoreError) -> RestoreError {
    let Some(aside) = aside else {
        return error;
    };
    let moved = std::fs::read_dir(aside).map(|entries| {
        entries.flatten().try_for_each(|entry| {
            let back = dir.join(entry.file_name());
            match std::fs::symlink_metadata(&back) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&back)?,
                Ok(_) => std::fs::remove_file(&back)?,
                Err(_) => {}
            }
            std::fs::rename(entry.path(), back)
        })
    });
    match moved.and_then(|r| r) {
        Ok(()) => {
            let _ = std::fs::remove_dir(aside);
            let _ = fsync_dir(dir);
            error
        }
        Err(e) => RestoreError::Refused(format!(
            "{error}; the files that were in {} are in {} and could not be put back ({e}): move them back before starting Redis",
            dir.display(),
            aside.display()
        )),
    }
}

async fn write_files(
    storage: &dyn Storage,
    manifest: &StreamManifest,
    dir: &Path,
    options: &RedisRestoreOptions,
    report: &mut RedisRestoreReport,
) -> Result<(), RestoreError> {
    options.progress.set_total(manifest.size_bytes);
    for file in &manifest.files {
        // `dump.rdb`, or `appendonlydir/appendonly.aof.1.base.rdb`: plain names, one level.
        let parts: Vec<&str> = file.name.split('/').collect();
        if parts.len() > 2 || parts.iter().any(|p| p.is_empty() || p.starts_with('.')) {
            return Err(RestoreError::Refused(format!(
                "the manifest names a file outside the data directory: {:?}",
                file.name
            )));
        }
        let path = dir.join(&file.name);
        if let Some(parent) = path.parent().filter(|p| *p != dir) {
            create_subdir(parent, options.owner)?;
        }
        write_file(storage, &file.chunks, &path, options).await?;
        report.bytes += file.size;
        report.files.push(path);
    }
    // Each file's directory was synced as it was committed; `dir` holds a new appendonlydir.
    fsync_dir(dir)
}

/// Redis's `appendonlydir`: made (and given to `owner`) if missing, refused if it is a link (a
/// restore never writes through a link it did not make).
fn create_subdir(dir: &Path, owner: Owner) -> Result<(), RestoreError> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(RestoreError::Refused(format!(
            "{} is a link: a restore does not write through links; replace it with a directory",
            dir.display()
        ))),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir(dir)
            .and_then(|()| owner.apply_path(dir))
            .map_err(|e| RestoreError::io(dir, e)),
        Err(e) => Err(RestoreError::io(dir, e)),
    }
}

/// Restore an RDB file from disk (an older backup, a copy from another host) as `dump.rdb`.
pub fn restore_redis_file(file: &Path, dir: &Path) -> Result<RedisRestoreReport, RestoreError> {
    let (mut source, magic) = open_rdb_file(file)?;
    let moved_aside = prepare_dir(dir, Owner::KEEP)?;
    let path = dir.join("dump.rdb");
    let copied =
        StagedFile::create(&path, redis_file_options(Owner::KEEP)).and_then(|mut staged| {
            staged.write_all(&magic)?;
            let rest = std::io::copy(&mut source, &mut staged.as_file()).map_err(|e| {
                storage::atomic::WriteError {
                    path: staged.temp_path().to_path_buf(),
                    source: e,
                }
            })?;
            staged.commit().map(|()| rest + magic.len() as u64)
        });
    let bytes = copied.map_err(|e| RestoreError::io(&path, e.source))?;
    fsync_dir(dir)?;
    Ok(RedisRestoreReport {
        files: vec![path],
        bytes,
        moved_aside,
    })
}

/// `file` opened, and its first bytes, which must be an RDB file's `REDIS`.
pub(crate) fn open_rdb_file(file: &Path) -> Result<(std::fs::File, [u8; 5]), RestoreError> {
    use std::io::Read;
    let mut source = std::fs::File::open(file).map_err(|e| RestoreError::io(file, e))?;
    let mut magic = [0u8; 5];
    source
        .read_exact(&mut magic)
        .map_err(|e| RestoreError::io(file, e))?;
    if &magic != b"REDIS" {
        return Err(RestoreError::Refused(format!(
            "{} is not an RDB file (it does not start with REDIS); nothing was changed",
            file.display()
        )));
    }
    Ok((source, magic))
}

/// Refused while a redis-server works in `dir`.
pub(crate) fn refuse_if_running(dir: &Path) -> Result<(), RestoreError> {
    match redis_running_in(dir) {
        Some(pid) => Err(RestoreError::Refused(format!(
            "redis-server (pid {pid}) is running in {}: stop it first (`redis-cli shutdown nosave` \
             or `systemctl stop redis-server`), then restore again; nothing was changed",
            dir.display()
        ))),
        None => Ok(()),
    }
}

/// Create `dir` (what of it was missing given to `owner`), refuse if a redis-server works
/// there, and move what would shadow the restored files aside. Nothing changes when it
/// refuses.
fn prepare_dir(dir: &Path, owner: Owner) -> Result<Option<PathBuf>, RestoreError> {
    create_dirs(dir, owner)?;
    refuse_if_running(dir)?;
    move_shadows_aside(dir, owner)
}

/// `create_dir_all`, giving each directory it creates to `owner`.
fn create_dirs(dir: &Path, owner: Owner) -> Result<(), RestoreError> {
    let mut missing = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| std::fs::symlink_metadata(p).is_err()) {
        missing.push(path);
        at = path.parent();
    }
    std::fs::create_dir_all(dir).map_err(|e| RestoreError::io(dir, e))?;
    for path in missing.into_iter().rev() {
        owner
            .apply_path(path)
            .map_err(|e| RestoreError::io(path, e))?;
    }
    Ok(())
}

fn move_shadows_aside(dir: &Path, owner: Owner) -> Result<Option<PathBuf>, RestoreError> {
    let present: Vec<&str> = SHADOWS
        .iter()
        .copied()
        .filter(|name| dir.join(name).exists())
        .collect();
    if present.is_empty() {
        return Ok(None);
    }
    let aside = dir.join(
        jiff::Timestamp::now()
            .strftime("lifeline-replaced-%Y%m%d_%H%M%S")
            .to_string(),
    );
    create_dirs(&aside, owner)?;
    for name in present {
        std::fs::rename(dir.join(name), aside.join(name))
            .map_err(|e| RestoreError::io(dir.join(name), e))?;
    }
    fsync_dir(dir)?;
    Ok(Some(aside))
}

/// How a restored Redis file is written: private to `owner` (Redis's user), under a hidden
/// temporary name created exclusively (a link there is never followed), durable when in place.
fn redis_file_options(owner: Owner) -> WriteOptions {
    WriteOptions::private(owner)
}

async fn write_file(
    storage: &dyn Storage,
    chunks: &[ChunkRef],
    path: &Path,
    options: &RedisRestoreOptions,
) -> Result<(), RestoreError> {
    let (target, owner, transfers) = (path.to_path_buf(), options.owner, options.transfers);
    let mut staged =
        tokio::task::spawn_blocking(move || StagedFile::create(&target, redis_file_options(owner)))
            .await
            .map_err(RestoreError::task("Redis file writer"))?
            .map_err(|e| RestoreError::io(e.path, e.source))?;
    let mut fetched = futures::stream::iter(chunks)
        .map(|chunk| fetch_chunk(storage, chunk))
        .buffered(transfers.max(1));
    while let Some(plain) = fetched.try_next().await? {
        let len = plain.len() as u64;
        staged = tokio::task::spawn_blocking(move || staged.write_all(&plain).map(|()| staged))
            .await
            .map_err(RestoreError::task("Redis file writer"))?
            .map_err(|e| RestoreError::io(e.path, e.source))?;
        options.progress.advance(len);
    }
    // An error above drops the staged file, which removes its temporary name.
    tokio::task::spawn_blocking(move || staged.commit())
        .await
        .map_err(RestoreError::task("Redis file writer"))?
        .map_err(|e| RestoreError::io(e.path, e.source))
}

pub(crate) async fn fetch_chunk(
    storage: &dyn Storage,
    chunk: &ChunkRef,
) -> Result<Vec<u8>, RestoreError> {
    let pack_key = layout::pack_key(&chunk.pack);
    let framed = storage
        .get_range(&pack_key, chunk.offset..chunk.offset + chunk.stored)
        .await?;
    let (chunk, ids) = (*chunk, storage.chunk_ids());
    tokio::task::spawn_blocking(move || decode_chunk(&pack_key, &chunk, &ids, &framed))
        .await
        .map_err(RestoreError::task("decompression task"))?
}

fn fsync_dir(dir: &Path) -> Result<(), RestoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| RestoreError::io(dir, e))
}

#[cfg(test)]
mod tests {

    use super::*;

    /// Run as root for Redis (a failover), the restore gives Redis's user the files it writes
    /// and the directories it creates.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_root_run_redis_restore_gives_what_it_creates_to_the_owner() {
        if !storage::private::running_as_root() {
            // Only root can give files away.
            return;
        }
        let nobody = 65534;
        let tmp = tempfile::tempdir().expect("tempdir");
        let home = tmp.path().join("home");
        std::fs::create_dir(&home).expect("mkdir");
        std::os::unix::fs::chown(&home, Some(nobody), Some(nobody)).expect("chown");
        let owner = Owner::of(&home);
        assert_eq!(owner.uid(), Some(nobody));
        let storage = testing::MemoryStorage::new();
        let base = b"REDIS0011 base".to_vec();
        let chunks = testing::store_pack(&storage, &[base.as_slice()]).await;
        let json = serde_json::json!({
            "format": 1, "backup_id": "r", "service": "redis", "kind": "aof",
            "server_version": "7", "source": "x", "started_at": "2025-01-01T00:00:00Z",
            "finished_at": "2025-01-01T00:00:00Z", "size_bytes": 0, "new_bytes": 0,
            "files": [{
                "name": "appendonlydir/appendonly.aof.1.base.rdb",
                "size": base.len(),
                "chunks": chunks,
            }],
        });
        let manifest: StreamManifest = serde_json::from_value(json).expect("manifest");
        let dir = home.join("new/redis");
        let options = RedisRestoreOptions {
            transfers: 2,
            owner,
            progress: storage::progress::none(),
        };
        let report = restore_redis(&storage, &manifest, &dir, &options)
            .await
            .expect("restore");
        let file = dir.join("appendonlydir/appendonly.aof.1.base.rdb");
        assert_eq!(report.files, vec![file.clone()]);
        assert_eq!(std::fs::read(&file).expect("restored"), base);
        for path in [
            home.join("new"),
            dir.clone(),
            dir.join("appendonlydir"),
            file,
        ] {
            testing::fixtures::assert_owned_by(&path, nobody, nobody);
        }
    }
}
