//! How backups read to the operator: the `list` table and the JSON form of a backup that
//! `list --json` and `status --json` share.

use std::fmt::Write as _;

use storage::wal::Lsn;

use crate::BackupRecord;

/// A time in the catalog as `YYYY-MM-DD HH:MM:SS` (UTC), or `?`.
pub fn utc_time(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us).map_or_else(
        |_| "?".into(),
        |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

/// Bytes as MiB with one decimal, so that a few KiB do not read as 0.
pub fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1u32 << 20))
}

impl BackupRecord {
    /// The backup as `list --json` and `status --json` show it.
    pub fn to_json(&self) -> serde_json::Value {
        let wal = self.kind == storage::BackupKind::Base;
        serde_json::json!({
            "backup_id": self.backup_id,
            "service": self.service,
            "kind": self.kind,
            // Only complete backups are listed; the field stays for the readers of the JSON.
            "state": "complete",
            // What does not apply (a Redis snapshot has no cluster, a dump no WAL) is null.
            "system_identifier": (self.system_identifier != 0).then(|| self.system_identifier.to_string()),
            "timeline": wal.then_some(self.timeline),
            "start_lsn": wal.then(|| Lsn(self.start_lsn).to_string()),
            "stop_lsn": wal.then(|| Lsn(self.stop_lsn).to_string()),
            "start_wal": (!self.start_wal.is_empty()).then_some(&self.start_wal),
            "stop_wal": (!self.stop_wal.is_empty()).then_some(&self.stop_wal),
            "started_at": jiff::Timestamp::from_microsecond(self.started_at_us).ok(),
            "finished_at": jiff::Timestamp::from_microsecond(self.finished_at_us).ok(),
            "duration_seconds": self.seconds(),
            "size_bytes": self.size_bytes,
            "new_bytes": self.new_bytes,
            "files": self.file_count,
            "retention": self.retention,
            "restorability": self.restorability,
            "server_version": (!self.server_version.is_empty()).then_some(&self.server_version),
            "major_version": self.major(),
            "source": (self.kind == storage::BackupKind::Base).then_some(self.source),
        })
    }

    /// The PostgreSQL major of a PostgreSQL backup, when the catalog knows its version.
    pub fn major(&self) -> Option<u32> {
        if self.service != storage::Service::Postgresql {
            return None;
        }
        storage::pg_version::major_of_version(&self.server_version)
    }

    /// Where a base backup's files were read; "-" for the others.
    fn source_label(&self) -> &'static str {
        match self.kind {
            storage::BackupKind::Base => self.source.as_str(),
            _ => "-",
        }
    }

    fn version_label(&self) -> &str {
        match self.server_version.as_str() {
            "" => "?",
            version => version.split_whitespace().next().unwrap_or(version),
        }
    }

    fn seconds(&self) -> f64 {
        (self.finished_at_us - self.started_at_us) as f64 / 1e6
    }
}

/// The `list` table: one line per backup under a header, or what to do when there is none.
pub fn backup_table(backups: &[BackupRecord]) -> String {
    if backups.is_empty() {
        return "no backups yet: run `lifeline backup postgres`\n".into();
    }
    let mut table = format!(
        "{:<26} {:<10} {:<5} {:<8} {:<8} {:<20} {:>8} {:>10} {:>9} {:>3} {:<12} {:<9} RESTORABILITY\n",
        "BACKUP",
        "SERVICE",
        "KIND",
        "VERSION",
        "SOURCE",
        "STARTED (UTC)",
        "SECONDS",
        "SIZE MiB",
        "NEW MiB",
        "TL",
        "STOP LSN",
        "RETENTION",
    );
    for b in backups {
        let _ = writeln!(
            table,
            "{:<26} {:<10} {:<5} {:<8} {:<8} {:<20} {:>8.1} {:>10} {:>9} {:>3} {:<12} {:<9} {}",
            b.backup_id,
            b.service,
            b.kind,
            b.version_label(),
            b.source_label(),
            utc_time(b.started_at_us),
            b.seconds(),
            mib(b.size_bytes),
            mib(b.new_bytes),
            b.timeline,
            Lsn(b.stop_lsn).to_string(),
            b.retention,
            b.restorability
        );
    }
    table
}
