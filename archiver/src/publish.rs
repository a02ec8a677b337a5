//! Publishing a backup: naming it, then making it exist. Its manifest is written create-only
//! once everything it names is durable, the plain `.metadata` summary beside it, and the
//! catalog records it last (the catalog is an index of the repository, rebuilt from it).

use std::path::Path;

use catalog::RetentionPolicy;
use storage::manifest::{BackupManifest, StreamManifest};
use storage::{BackupKind, PutMode, Restorability, Service, Storage, StorageExt, layout};

use crate::ArchiveError;
use crate::block_spool::SpooledLists;

/// The retention label a new backup starts with, until a prune classes it: the daily class of
/// the configured policy.
fn new_backup_retention(policy: &RetentionPolicy) -> String {
    catalog::RetentionClass::Daily.label(policy)
}

/// Ids are `backup_YYYYMMDD_HHMMSS` in UTC; a second backup in the same second gets a suffix.
pub(crate) async fn new_backup_id(storage: &dyn Storage) -> Result<String, ArchiveError> {
    let base = jiff::Timestamp::now()
        .strftime("backup_%Y%m%d_%H%M%S")
        .to_string();
    for n in 0..100 {
        let id = if n == 0 {
            base.clone()
        } else {
            format!("{base}_{n}")
        };
        if !storage.exists(&layout::manifest_key(&id)).await?
            && !storage.exists(&layout::stream_manifest_key(&id)).await?
        {
            return Ok(id);
        }
    }
    Err(ArchiveError::Precondition(format!(
        "100 backups named {base}* already exist"
    )))
}

/// Make a base backup exist and record it in the catalog: `manifest`, without its block
/// lists, which are written from `lists`, the object framed in `spill_dir` first.
pub(crate) async fn publish_base_backup(
    storage: &dyn Storage,
    manifest: &BackupManifest,
    lists: SpooledLists,
    spill_dir: &Path,
    catalog_path: &Path,
    policy: &RetentionPolicy,
) -> Result<(), ArchiveError> {
    let summary = MetadataSummary {
        backup_id: &manifest.backup_id,
        service: manifest.service,
        kind: manifest.kind,
        started_at: manifest.started_at,
        finished_at: manifest.finished_at,
        size_bytes: manifest.size_bytes,
        new_bytes: manifest.new_bytes,
        manifest_key: layout::manifest_key(&manifest.backup_id),
        retention: new_backup_retention(policy),
    };
    let extra = serde_json::json!({
        "start_lsn": manifest.start_lsn.to_string(),
        "stop_lsn": manifest.stop_lsn.to_string(),
        "timeline": manifest.timeline.0,
        "server_version": manifest.server_version,
        "major_version": manifest.major(),
        "catalog_version": manifest.catalog_version,
        "source": manifest.source,
    });
    let checksum = storage::manifest::put_manifest_with_lists(
        storage,
        &summary.manifest_key,
        manifest.clone(),
        Box::new(lists),
        spill_dir,
        PutMode::Create,
    )
    .await?;
    metadata(&summary, &checksum, extra).store(storage).await?;
    let record = catalog::BackupRecord::from_manifest(
        manifest,
        &summary.retention,
        Restorability::Unverified,
    );
    record_backup(catalog_path, record, true).await
}

/// Make a stream backup (dump, RDB, AOF) exist and record it in the catalog.
pub(crate) async fn publish_stream_backup(
    storage: &dyn Storage,
    manifest: &StreamManifest,
    catalog_path: &Path,
    policy: &RetentionPolicy,
) -> Result<(), ArchiveError> {
    let summary = MetadataSummary {
        backup_id: &manifest.backup_id,
        service: manifest.service,
        kind: manifest.kind,
        started_at: manifest.started_at,
        finished_at: manifest.finished_at,
        size_bytes: manifest.size_bytes,
        new_bytes: manifest.new_bytes,
        manifest_key: layout::stream_manifest_key(&manifest.backup_id),
        retention: new_backup_retention(policy),
    };
    let extra = serde_json::json!({ "counts": manifest.counts });
    publish_manifest(storage, &summary, manifest, extra).await?;
    let record = catalog::BackupRecord::from_stream_manifest(
        manifest,
        &summary.retention,
        Restorability::Unverified,
    );
    record_backup(catalog_path, record, false).await
}

/// List a published backup in the catalog (off the async threads: SQLite is blocking I/O);
/// a base backup also registers its cluster.
async fn record_backup(
    catalog_path: &Path,
    record: catalog::BackupRecord,
    with_cluster: bool,
) -> Result<(), ArchiveError> {
    let path = catalog_path.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), ArchiveError> {
        let mut catalog = catalog::Catalog::open(&path)?;
        if with_cluster {
            catalog.register_cluster(record.system_identifier, record.started_at_us)?;
        }
        catalog.upsert_backup(&record)?;
        Ok(())
    })
    .await
    .map_err(ArchiveError::task("catalog task"))?
}

/// Make a backup exist: its manifest framed, create-only and durable, then the plain JSON
/// `.metadata` beside it (for people and older tools) with the manifest's checksum.
async fn publish_manifest(
    storage: &dyn Storage,
    summary: &MetadataSummary<'_>,
    manifest: &impl storage::manifest::Manifest,
    extra: serde_json::Value,
) -> Result<(), ArchiveError> {
    let checksum =
        storage::manifest::put_manifest(storage, &summary.manifest_key, manifest, PutMode::Create)
            .await?;
    metadata(summary, &checksum, extra).store(storage).await?;
    Ok(())
}

/// What a `.metadata` file says of any backup (the seed's fields).
struct MetadataSummary<'a> {
    backup_id: &'a str,
    service: Service,
    kind: BackupKind,
    started_at: jiff::Timestamp,
    finished_at: jiff::Timestamp,
    size_bytes: u64,
    new_bytes: u64,
    manifest_key: String,
    /// The retention label the backup starts with.
    retention: String,
}

/// The seed-compatible summary written next to a manifest, with `extra` fields of its kind.
fn metadata(
    summary: &MetadataSummary<'_>,
    manifest_checksum: &blake3::Hash,
    extra: serde_json::Value,
) -> storage::manifest::BackupMetadata {
    let duration = (summary.finished_at.as_second() - summary.started_at.as_second()).max(0);
    storage::manifest::BackupMetadata {
        backup_id: summary.backup_id.to_string(),
        backup_type: "full".into(),
        service: summary.service.to_string(),
        kind: summary.kind.to_string(),
        timestamp: summary
            .started_at
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        size_bytes: summary.size_bytes,
        size_readable: readable_size(summary.size_bytes),
        new_bytes: summary.new_bytes,
        duration_seconds: duration,
        files: vec![summary.manifest_key.clone()],
        checksum: format!("blake3:{}", manifest_checksum.to_hex()),
        verified: true,
        retention: summary.retention.clone(),
        restorability: Restorability::Unverified,
        extra: match extra {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        },
    }
}

fn readable_size(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 10.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_the_seed() {
        assert_eq!(readable_size(536_870_912), "512MB");
        assert_eq!(readable_size(1536), "1.5KB");
        assert_eq!(readable_size(12), "12B");
    }

    #[tokio::test]
    async fn a_new_backup_is_labelled_with_the_configured_daily_window() {
        let storage = testing::MemoryStorage::new();
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog_path = dir.path().join("catalog.db");
        let now = jiff::Timestamp::now();
        let manifest = StreamManifest {
            format: storage::manifest::MANIFEST_FORMAT,
            backup_id: "redis_20250101_000000".into(),
            service: storage::Service::Redis,
            kind: storage::BackupKind::Rdb,
            server_version: "7.0".into(),
            source: "127.0.0.1:6379".into(),
            started_at: now,
            finished_at: now,
            files: Vec::new(),
            counts: Default::default(),
            size_bytes: 0,
            new_bytes: 0,
        };
        let policy = RetentionPolicy {
            daily: 14,
            ..RetentionPolicy::default()
        };
        publish_stream_backup(&storage, &manifest, &catalog_path, &policy)
            .await
            .expect("published");
        let metadata = storage::manifest::BackupMetadata::load(&storage, &manifest.backup_id)
            .await
            .expect("metadata");
        assert_eq!(metadata.retention, "14_days");
        let record = catalog::Catalog::open(&catalog_path)
            .expect("catalog")
            .backup(&manifest.backup_id)
            .expect("query")
            .expect("recorded");
        assert_eq!(record.retention, "14_days");
    }
}
