//! Backups of whole streams: a Redis RDB snapshot now (AOF and logical dumps next). The stream
//! is cut by content, so tonight's snapshot of a mostly unchanged dataset shares most of its
//! chunks with last night's, and only the new chunks are stored.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use storage::manifest::{ChunkRef, MANIFEST_FORMAT, StreamFile, StreamManifest};
use storage::{Compression, Storage, layout};
use tracing::{info, warn};

use crate::base_backup::{
    MetadataSummary, metadata_json, new_backup_id, put_manifest, put_metadata,
};
use crate::chunk_store::store_stream;
use crate::{ArchiveError, RedisOptions, open_rdb};

#[derive(Debug, Clone)]
pub struct RdbBackupOptions {
    pub redis: RedisOptions,
    pub compression: Compression,
    pub parallelism: usize,
    pub uploads: usize,
    pub catalog_path: PathBuf,
}

/// Snapshot Redis over the replication protocol into the repository.
pub async fn run_rdb_backup(
    storage: Arc<dyn Storage>,
    opts: &RdbBackupOptions,
) -> Result<StreamManifest, ArchiveError> {
    let redis = opts.redis.clone();
    let (reader, facts) = tokio::task::spawn_blocking(move || open_rdb(&redis))
        .await
        .map_err(|e| ArchiveError::Precondition(format!("Redis connection task failed: {e}")))??;
    let previous =
        previous_stream_chunks(storage.as_ref(), &opts.catalog_path, "redis", "rdb").await;
    let backup_id = new_backup_id(storage.as_ref()).await?;
    let started_at = jiff::Timestamp::now();
    info!(backup = %backup_id, diskless = facts.diskless, "receiving the RDB snapshot");
    let stored = store_stream(
        storage.clone(),
        reader,
        previous,
        opts.compression,
        opts.parallelism,
        opts.uploads,
    )
    .await?;
    storage.sync().await?;
    let manifest = StreamManifest {
        format: MANIFEST_FORMAT,
        backup_id,
        service: "redis".into(),
        kind: "rdb".into(),
        server_version: facts.version,
        source: format!("{}:{}", opts.redis.host, opts.redis.port),
        started_at,
        finished_at: jiff::Timestamp::now(),
        files: vec![StreamFile {
            name: "dump.rdb".into(),
            size: stored.size,
            chunks: stored.chunks,
        }],
        counts: facts
            .keys
            .iter()
            .map(|(db, keys)| (format!("db{db}"), *keys))
            .collect::<BTreeMap<_, _>>(),
        size_bytes: stored.size,
        new_bytes: stored.new_bytes,
    };
    write_stream_manifest(storage.as_ref(), &manifest, &opts.catalog_path).await?;
    info!(
        backup = %manifest.backup_id,
        size_bytes = manifest.size_bytes,
        new_bytes = manifest.new_bytes,
        "RDB backup complete"
    );
    Ok(manifest)
}

/// Chunks of the newest complete backup of this service and kind: those need not be stored again.
pub(crate) async fn previous_stream_chunks(
    storage: &dyn Storage,
    catalog_path: &Path,
    service: &'static str,
    kind: &'static str,
) -> HashMap<String, ChunkRef> {
    let path = catalog_path.to_path_buf();
    let latest = tokio::task::spawn_blocking(move || {
        let catalog = catalog::Catalog::open(&path).ok()?;
        catalog
            .backups(Some(service))
            .ok()?
            .into_iter()
            .rfind(|b| b.kind == kind && b.state == catalog::BackupState::Complete)
    })
    .await
    .ok()
    .flatten();
    let Some(latest) = latest else {
        return HashMap::new();
    };
    match StreamManifest::load(storage, &latest.backup_id).await {
        Ok(m) => m.chunks().map(|c| (c.hash.clone(), c.clone())).collect(),
        Err(e) => {
            warn!(
                "previous backup {} unreadable, storing every chunk again: {e}",
                latest.backup_id
            );
            HashMap::new()
        }
    }
}

pub(crate) async fn write_stream_manifest(
    storage: &dyn Storage,
    manifest: &StreamManifest,
    catalog_path: &Path,
) -> Result<(), ArchiveError> {
    let checksum = put_manifest(
        storage,
        &layout::stream_manifest_key(&manifest.backup_id),
        &manifest.to_json(),
    )
    .await?;
    let summary = MetadataSummary {
        backup_id: &manifest.backup_id,
        service: &manifest.service,
        kind: &manifest.kind,
        started_at: manifest.started_at,
        finished_at: manifest.finished_at,
        size_bytes: manifest.size_bytes,
        new_bytes: manifest.new_bytes,
        manifest_key: layout::stream_manifest_key(&manifest.backup_id),
        manifest_checksum: checksum,
    };
    let metadata = metadata_json(&summary, serde_json::json!({ "counts": manifest.counts }));
    put_metadata(storage, &manifest.backup_id, metadata).await?;
    let record = catalog::BackupRecord::from_stream_manifest(manifest, "7_days", "UNVERIFIED");
    let path = catalog_path.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), ArchiveError> {
        catalog::Catalog::open(&path)?.upsert_backup(&record)?;
        Ok(())
    })
    .await
    .map_err(|e| ArchiveError::Precondition(format!("catalog task failed: {e}")))?
}
