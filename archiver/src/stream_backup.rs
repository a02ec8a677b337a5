//! Backups of whole streams: a Redis RDB snapshot, the files of an AOF, a logical dump. The stream
//! is cut by content, so tonight's snapshot of a mostly unchanged dataset shares most of its
//! chunks with last night's, and only the new chunks are stored.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use storage::manifest::{MANIFEST_FORMAT, StreamFile, StreamManifest};
use storage::progress::Progress;
use storage::{BackupKind, Compression, Service, Storage};
use tracing::info;

use crate::aof::pin_aof;
use crate::chunk_store::{previous_stream_chunks, store_stream};
use crate::publish::{new_backup_id, publish_stream_backup};
use crate::redis::info_value;
use crate::{ArchiveError, RedisOptions, keyspace, open_rdb};

#[derive(Debug, Clone)]
pub struct RdbBackupOptions {
    pub redis: RedisOptions,
    pub compression: Compression,
    pub parallelism: usize,
    /// Packs uploaded at once (`transfers`).
    pub transfers: usize,
    pub catalog_path: PathBuf,
    /// The policy whose daily label a new backup starts with.
    pub retention: catalog::RetentionPolicy,
    /// Bytes stored of the snapshot or files (`storage::progress::none()` for none).
    pub progress: Arc<dyn Progress>,
}

/// Snapshot Redis over the replication protocol into the repository.
pub async fn run_rdb_backup(
    storage: Arc<dyn Storage>,
    opts: &RdbBackupOptions,
) -> Result<StreamManifest, ArchiveError> {
    let redis = opts.redis.clone();
    let (reader, facts) = tokio::task::spawn_blocking(move || open_rdb(&redis))
        .await
        .map_err(ArchiveError::task("Redis connection task"))??;
    info!(diskless = facts.diskless, "receiving the RDB snapshot");
    // A diskless snapshot's size is known only at its end.
    if let Some(size) = reader.announced_len() {
        opts.progress.set_total(size);
    }
    let sources: Vec<(String, Box<dyn Read + Send>)> =
        vec![("dump.rdb".to_string(), Box::new(reader))];
    store_redis_files(
        storage,
        opts,
        BackupKind::Rdb,
        facts.version,
        facts.keys,
        sources,
    )
    .await
}

/// Copy Redis 7's multi-part AOF (manifest, base and incremental files), pinned consistently
/// (see `aof`), into the repository. Runs on the Redis host: the files are read directly.
pub async fn run_aof_backup(
    storage: Arc<dyn Storage>,
    opts: &RdbBackupOptions,
) -> Result<StreamManifest, ArchiveError> {
    let redis = opts.redis.clone();
    let (pinned, keys, version) = tokio::task::spawn_blocking(move || {
        let pinned = pin_aof(&redis)?;
        let keys = keyspace(&redis)?;
        let version = info_value(&redis, "server", "redis_version")?.unwrap_or_default();
        Ok::<_, ArchiveError>((pinned, keys, version))
    })
    .await
    .map_err(ArchiveError::task("Redis connection task"))??;
    info!(files = pinned.files.len(), "copying the pinned AOF files");
    opts.progress
        .set_total(pinned.files.iter().map(|f| f.size).sum());
    let sources: Vec<(String, Box<dyn Read + Send>)> = pinned
        .files
        .into_iter()
        .map(|f| (f.name.clone(), Box::new(f.reader()) as Box<dyn Read + Send>))
        .collect();
    store_redis_files(storage, opts, BackupKind::Aof, version, keys, sources).await
}

/// Store each file as content-defined chunks and record the backup.
async fn store_redis_files(
    storage: Arc<dyn Storage>,
    opts: &RdbBackupOptions,
    kind: BackupKind,
    server_version: String,
    keys: BTreeMap<u32, u64>,
    sources: Vec<(String, Box<dyn Read + Send>)>,
) -> Result<StreamManifest, ArchiveError> {
    let index = previous_stream_chunks(storage.as_ref(), &opts.catalog_path, kind).await?;
    let backup_id = new_backup_id(storage.as_ref()).await?;
    let started_at = jiff::Timestamp::now();
    let mut files = Vec::with_capacity(sources.len());
    let mut new_bytes = 0;
    for (name, reader) in sources {
        let stored = store_stream(
            storage.clone(),
            reader,
            index.clone(),
            opts.compression,
            opts.parallelism,
            opts.transfers,
            opts.progress.as_ref(),
        )
        .await?;
        new_bytes += stored.new_bytes;
        files.push(StreamFile {
            name,
            size: stored.size,
            chunks: stored.chunks,
        });
    }
    // Every pack was durable when its write ended (chunk_store::Packer): nothing to flush.
    let size_bytes = files.iter().map(|f| f.size).sum();
    let manifest = StreamManifest {
        format: MANIFEST_FORMAT,
        backup_id,
        service: Service::Redis,
        kind,
        server_version,
        source: format!("{}:{}", opts.redis.host, opts.redis.port),
        started_at,
        finished_at: jiff::Timestamp::now(),
        files,
        counts: keys
            .iter()
            .map(|(db, n)| (format!("db{db}"), *n))
            .collect::<BTreeMap<_, _>>(),
        size_bytes,
        new_bytes,
    };
    publish_stream_backup(
        storage.as_ref(),
        &manifest,
        &opts.catalog_path,
        &opts.retention,
    )
    .await?;
    opts.progress.finish();
    info!(
        backup = %manifest.backup_id,
        kind = %kind,
        size_bytes = manifest.size_bytes,
        "Redis backup complete"
    );
    Ok(manifest)
}
