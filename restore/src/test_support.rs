//! Fixtures shared by this crate's unit tests.

use catalog::{BackupRecord, BackupState};

/// A complete base backup of cluster 1 with the given id, timeline, LSNs and times.
pub(crate) fn complete_backup(
    id: &str,
    timeline: u32,
    (start_lsn, stop_lsn): (u64, u64),
    (started_at_us, finished_at_us): (i64, i64),
) -> BackupRecord {
    BackupRecord {
        backup_id: id.into(),
        service: storage::Service::Postgresql,
        kind: storage::BackupKind::Base,
        system_identifier: 1,
        timeline,
        start_lsn,
        stop_lsn,
        start_wal: String::new(),
        stop_wal: String::new(),
        started_at_us,
        finished_at_us,
        size_bytes: 0,
        new_bytes: 0,
        file_count: 0,
        state: BackupState::Complete,
        retention: "7_days".into(),
        restorability: storage::Restorability::Unverified,
    }
}

/// A base-backup manifest of nothing, for tests to fill in.
pub(crate) fn empty_manifest() -> storage::manifest::BackupManifest {
    let json = serde_json::json!({
        "format": 1, "backup_id": "b", "service": "postgresql", "kind": "base",
        "system_identifier": 1, "server_version": "15", "database": "postgres",
        "timeline": 1, "start_lsn": "0/0", "stop_lsn": "0/0", "start_wal": "", "stop_wal": "",
        "segment_size": 16777216, "started_at": "2025-01-01T00:00:00Z",
        "finished_at": "2025-01-01T00:00:00Z", "block_size": 8192, "files": [], "bundle": [],
        "backup_label": "", "row_counts": {}, "size_bytes": 0, "new_bytes": 0
    });
    serde_json::from_value(json).expect("the empty manifest parses")
}
