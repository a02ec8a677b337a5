//! Rebuild the catalog from the repository alone: the path a lost host takes.

use storage::manifest::{BackupManifest, ClusterIdentity, StreamManifest};
use storage::wal::WalFileName;
use storage::{ObjectHeader, ObjectMeta, Storage, StorageExt, layout, object};

use crate::{BackupRecord, Catalog, CatalogError, Restorability, RetentionClass, WalRecord};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildSummary {
    pub backups: usize,
    pub wal_files: usize,
    pub clusters: usize,
    /// Objects that could not be read back (named, so the operator can look).
    pub unreadable: Vec<String>,
}

fn micros(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl WalRecord {
    /// The catalog row of an archived WAL object (`header` when it was read).
    pub fn new(
        system_identifier: u64,
        name: &WalFileName,
        segment_size: u64,
        header: Option<&ObjectHeader>,
        stored_bytes: u64,
        archived_at_us: i64,
    ) -> Self {
        WalRecord {
            system_identifier,
            name: name.to_string(),
            kind: name.kind().to_string(),
            timeline: name.timeline().0,
            segment_number: name.segment(segment_size).map(|s| s.number),
            size_bytes: header.map_or(0, |h| h.plain_len),
            stored_bytes,
            checksum: header.map_or_else(String::new, |h| h.checksum.to_hex().to_string()),
            archived_at_us,
        }
    }

    /// The same, from a repository listing.
    pub fn from_listing(
        system_identifier: u64,
        name: &WalFileName,
        meta: &ObjectMeta,
        header: Option<&ObjectHeader>,
        segment_size: u64,
    ) -> Self {
        let at = micros(meta.last_modified);
        WalRecord::new(system_identifier, name, segment_size, header, meta.size, at)
    }
}

impl BackupRecord {
    /// The catalog row of a complete backup, from its manifest.
    pub fn from_manifest(
        m: &BackupManifest,
        retention: &str,
        restorability: Restorability,
    ) -> Self {
        BackupRecord {
            backup_id: m.backup_id.clone(),
            service: m.service,
            kind: m.kind,
            system_identifier: m.system_identifier,
            timeline: m.timeline.0,
            start_lsn: m.start_lsn.0,
            stop_lsn: m.stop_lsn.0,
            start_wal: m.start_wal.clone(),
            stop_wal: m.stop_wal.clone(),
            started_at_us: m.started_at.as_microsecond(),
            finished_at_us: m.finished_at.as_microsecond(),
            size_bytes: m.size_bytes,
            new_bytes: m.new_bytes,
            file_count: m.files.len() as u64,
            retention: retention.to_string(),
            restorability,
            server_version: m.server_version.clone(),
            source: m.source,
        }
    }

    /// The catalog row of a complete stream backup (Redis, dumps): no cluster, no WAL.
    pub fn from_stream_manifest(
        m: &StreamManifest,
        retention: &str,
        restorability: Restorability,
    ) -> Self {
        BackupRecord {
            backup_id: m.backup_id.clone(),
            service: m.service,
            kind: m.kind,
            system_identifier: 0,
            timeline: 0,
            start_lsn: 0,
            stop_lsn: 0,
            start_wal: String::new(),
            stop_wal: String::new(),
            started_at_us: m.started_at.as_microsecond(),
            finished_at_us: m.finished_at.as_microsecond(),
            size_bytes: m.size_bytes,
            new_bytes: m.new_bytes,
            file_count: m.files.len() as u64,
            retention: retention.to_string(),
            restorability,
            server_version: m.server_version.clone(),
            source: storage::BackupSource::Primary,
        }
    }
}

/// Read every manifest and WAL object header in `storage` and make the catalog say exactly that.
pub async fn rebuild(
    storage: &dyn Storage,
    catalog: &mut Catalog,
) -> Result<RebuildSummary, CatalogError> {
    let mut summary = RebuildSummary::default();
    let mut backups = Vec::new();
    for meta in storage.list(layout::BACKUPS_PREFIX).await? {
        if let Some(backup_id) = layout::parse_stream_manifest_key(&meta.key) {
            match StreamManifest::load(storage, backup_id).await {
                Ok(m) => {
                    let (retention, restorability) = read_metadata_labels(storage, backup_id).await;
                    backups.push(BackupRecord::from_stream_manifest(
                        &m,
                        &retention,
                        restorability,
                    ));
                }
                Err(e) => summary.unreadable.push(format!("{}: {e}", meta.key)),
            }
            continue;
        }
        let Some(backup_id) = layout::parse_manifest_key(&meta.key) else {
            continue;
        };
        let manifest = match BackupManifest::load(storage, backup_id).await {
            Ok(m) => m,
            Err(e) => {
                summary.unreadable.push(format!("{}: {e}", meta.key));
                continue;
            }
        };
        let (retention, restorability) = read_metadata_labels(storage, backup_id).await;
        backups.push(BackupRecord::from_manifest(
            &manifest,
            &retention,
            restorability,
        ));
    }
    let segment_size = read_segment_size(storage).await;
    let mut wal = Vec::new();
    let mut clusters: Vec<(u64, i64)> = Vec::new();
    for meta in storage.list(layout::WAL_PREFIX).await? {
        let Some((sysid, name)) = layout::parse_wal_key(&meta.key) else {
            continue;
        };
        let header = match storage
            .get_range(&meta.key, 0..object::HEADER_LEN as u64)
            .await
        {
            Ok(bytes) => ObjectHeader::parse(&meta.key, &bytes),
            Err(e) => Err(e),
        };
        let header = match header {
            Ok(h) => h,
            Err(e) => {
                summary.unreadable.push(format!("{}: {e}", meta.key));
                continue;
            }
        };
        let record = WalRecord::from_listing(sysid, &name, &meta, Some(&header), segment_size);
        match clusters.iter_mut().find(|(id, _)| *id == sysid) {
            Some((_, first)) => *first = (*first).min(record.archived_at_us),
            None => clusters.push((sysid, record.archived_at_us)),
        }
        wal.push(record);
    }
    for b in backups.iter().filter(|b| b.system_identifier != 0) {
        if !clusters.iter().any(|(id, _)| *id == b.system_identifier) {
            clusters.push((b.system_identifier, b.started_at_us));
        }
    }
    summary.backups = backups.len();
    summary.wal_files = wal.len();
    summary.clusters = clusters.len();
    catalog.replace_all(&clusters, &wal, &backups)?;
    Ok(summary)
}

/// WAL segment numbers depend on the segment size, which `cluster.json` records.
async fn read_segment_size(storage: &dyn Storage) -> u64 {
    let identity = storage
        .get_bytes(layout::CLUSTER_KEY)
        .await
        .ok()
        .and_then(|b| serde_json::from_slice::<ClusterIdentity>(&b).ok());
    identity.map_or(storage::wal::DEFAULT_SEGMENT_SIZE, |i| i.segment_size)
}

async fn read_metadata_labels(storage: &dyn Storage, backup_id: &str) -> (String, Restorability) {
    match storage::manifest::BackupMetadata::load(storage, backup_id).await {
        Ok(m) => (m.retention, m.restorability),
        Err(_) => (
            RetentionClass::Daily.label(&crate::RetentionPolicy::default()),
            Restorability::Unverified,
        ),
    }
}

/// Record labels (`retention`, `restorability`, ...) in the backup's `.metadata`, where
/// [`rebuild`] reads them back; the object is replaced whole.
pub async fn label_backup(
    storage: &dyn Storage,
    backup_id: &str,
    labels: &[(&str, &str)],
) -> Result<(), CatalogError> {
    let mut metadata = storage::manifest::BackupMetadata::load(storage, backup_id).await?;
    let mut changed = false;
    for (name, value) in labels {
        changed |= metadata.set_label(name, value);
    }
    if changed {
        metadata.store(storage).await?;
    }
    Ok(())
}
