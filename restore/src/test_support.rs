//! Fixtures shared by this crate's unit tests.

use catalog::BackupRecord;

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
        retention: "7_days".into(),
        restorability: storage::Restorability::Unverified,
        server_version: String::new(),
        source: storage::BackupSource::Primary,
    }
}
