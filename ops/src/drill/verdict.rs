//! What a drill concludes: the verdict written into the backup's `.metadata` and the catalog,
//! and the report the operator reads (text, JSON, and a JSON file beside the operation logs).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{DrillError, Report};

/// Whether the drill proved the backup restorable; the word the catalog and `.metadata` keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Verified,
    Failed,
}

impl Verdict {
    /// The backup's restorability this verdict records.
    pub fn restorability(self) -> storage::Restorability {
        match self {
            Verdict::Verified => storage::Restorability::Verified,
            Verdict::Failed => storage::Restorability::Failed,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.restorability().as_str()
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The newest archived WAL when the drill ended: how much would be lost now (RPO).
#[derive(Debug, Clone)]
pub struct NewestWal {
    pub name: String,
    pub age: Duration,
}

/// A finished drill.
#[derive(Debug, Clone)]
pub struct DrillReport {
    pub backup_id: String,
    pub started_at: jiff::Timestamp,
    pub verdict: Verdict,
    /// Why the backup failed; empty when verified.
    pub reason: String,
    /// From the start to the verified, promoted server.
    pub rto: Duration,
    pub rpo: Option<NewestWal>,
    /// The checks of the scratch server, when the rehearsal got that far.
    pub checks: Option<Report>,
    /// The restore's own line (what was restored, how much, how fast), when it got that far;
    /// not part of the report's text.
    pub restored: Option<String>,
    /// The scratch directory, when kept for inspection (its server stopped).
    pub kept: Option<PathBuf>,
}

impl DrillReport {
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Verified
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "backup_id": self.backup_id,
            "started_at": self.started_at,
            "result": self.verdict.as_str(),
            "reason": if self.reason.is_empty() { None } else { Some(&self.reason) },
            "rto_seconds": self.rto.as_secs_f64(),
            "rpo_seconds": self.rpo.as_ref().map(|w| w.age.as_secs_f64()),
            "newest_archived_wal": self.rpo.as_ref().map(|w| &w.name),
            "checks": self.checks.as_ref().map(Report::json),
            "scratch_dir": self.kept.as_ref().map(|p| p.display().to_string()),
        })
    }
}

/// The checks, the verdict with its reason, RTO and RPO; the kept directory is not part of it.
impl fmt::Display for DrillReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(report) = &self.checks {
            f.write_str(&report.text())?;
        }
        let why = if self.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.reason)
        };
        writeln!(f, "drill of {}: {}{why}", self.backup_id, self.verdict)?;
        writeln!(
            f,
            "RTO measured: {:.1} s from the start to a verified, promoted server",
            self.rto.as_secs_f64()
        )?;
        match &self.rpo {
            Some(wal) => writeln!(
                f,
                "RPO now: {:.0} s (newest archived WAL {})",
                wal.age.as_secs_f64(),
                wal.name
            ),
            None => writeln!(f, "RPO now: unknown (no archived WAL in the catalog)"),
        }
    }
}

/// The verdict into the backup's `.metadata` (where a catalog rebuild finds it) and the
/// catalog. A reason left by an earlier failed drill is cleared by a passing one.
pub(super) async fn record_verdict(
    storage: &dyn storage::Storage,
    catalog_path: &Path,
    report: &DrillReport,
) -> Result<(), DrillError> {
    let backup_id = report.backup_id.clone();
    let restorability = report.verdict.restorability();
    let verdict = restorability.as_str();
    let checked_at = report.started_at.to_string();
    let rto = format!("{:.1}", report.rto.as_secs_f64());
    let labels = [
        ("restorability", verdict),
        ("restorability_checked_at", checked_at.as_str()),
        ("restorability_rto_seconds", rto.as_str()),
        ("restorability_reason", report.reason.as_str()),
    ];
    catalog::label_backup(storage, &backup_id, &labels)
        .await
        .map_err(|source| DrillError::RecordVerdict {
            backup_id: backup_id.clone(),
            source,
        })?;
    let catalog_path = catalog_path.to_path_buf();
    super::blocking("catalog update", move || {
        let mut catalog = super::open_catalog(&catalog_path)?;
        if let Some(mut record) = catalog.backup(&backup_id)? {
            record.restorability = restorability;
            catalog.upsert_backup(&record)?;
        }
        Ok(())
    })
    .await
}

/// The report as JSON in `dir` (BACKUP_DIR/logs), private like the logs beside it, written
/// whole (storage::atomic) under a name of its own (`_n` added when a report of the same
/// second is there); never creates BACKUP_DIR itself. Losing it only warns. Blocking.
pub(super) fn store_report(dir: &Path, report: &serde_json::Value) {
    use storage::atomic::{StagedFile, WriteOptions};
    let stamp = jiff::Zoned::now().strftime("%Y%m%d_%H%M%S").to_string();
    let owner = storage::private::Owner::of(dir.parent().unwrap_or(dir));
    let bytes = serde_json::to_vec_pretty(report).unwrap_or_default();
    let store = || -> Result<PathBuf, (PathBuf, std::io::Error)> {
        storage::private::create_dir(dir, owner).map_err(|e| (dir.to_path_buf(), e))?;
        for n in 0..100 {
            let path = dir.join(if n == 0 {
                format!("drill_{stamp}.json")
            } else {
                format!("drill_{stamp}_{n}.json")
            });
            let written =
                StagedFile::create(&path, WriteOptions::private(owner)).and_then(|mut staged| {
                    staged.write_all(&bytes)?;
                    staged.commit_new()
                });
            match written {
                Ok(()) => return Ok(path),
                Err(e)
                    if e.source.kind() == std::io::ErrorKind::AlreadyExists && e.path == path =>
                {
                    continue;
                }
                Err(e) => return Err((e.path, e.source)),
            }
        }
        Err((
            dir.to_path_buf(),
            std::io::Error::other("100 drill reports in one second"),
        ))
    };
    if let Err((path, e)) = store() {
        tracing::warn!("drill report not stored in {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Check;

    fn report(verdict: Verdict, reason: &str) -> DrillReport {
        DrillReport {
            backup_id: "b1".into(),
            started_at: jiff::Timestamp::UNIX_EPOCH,
            verdict,
            reason: reason.into(),
            rto: Duration::from_millis(12_340),
            rpo: None,
            checks: None,
            restored: None,
            kept: None,
        }
    }

    #[test]
    fn reports_of_the_same_second_are_stored_side_by_side_whole() {
        let repo = tempfile::tempdir().expect("tempdir");
        let logs = repo.path().join("logs");
        for n in 0..3 {
            store_report(&logs, &serde_json::json!({ "n": n }));
        }
        let mut names: Vec<String> = std::fs::read_dir(&logs)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf8"))
            .collect();
        names.sort();
        assert!(
            names
                .iter()
                .all(|n| n.starts_with("drill_") && n.ends_with(".json")),
            "{names:?}"
        );
        let reports: Vec<serde_json::Value> = names
            .iter()
            .map(|n| {
                serde_json::from_slice(&std::fs::read(logs.join(n)).expect("read")).expect("JSON")
            })
            .collect();
        assert_eq!(reports.len(), 3, "{names:?}");
        for n in 0..3 {
            assert!(
                reports.contains(&serde_json::json!({ "n": n })),
                "{reports:?}"
            );
        }
    }

    #[test]
    fn a_failed_drill_says_why_with_its_rto_and_rpo() {
        let failed = report(Verdict::Failed, "the restore failed: a chunk is missing");
        assert_eq!(
            failed.to_string(),
            "drill of b1: FAILED (the restore failed: a chunk is missing)\n\
             RTO measured: 12.3 s from the start to a verified, promoted server\n\
             RPO now: unknown (no archived WAL in the catalog)\n"
        );
        let json = failed.json();
        assert_eq!(json["result"], "FAILED");
        assert_eq!(json["reason"], "the restore failed: a chunk is missing");
        assert!(json["checks"].is_null() && json["scratch_dir"].is_null());
    }

    #[test]
    fn a_verified_drill_lists_its_checks_and_has_no_reason() {
        let mut verified = report(Verdict::Verified, "");
        verified.rpo = Some(NewestWal {
            name: "000000010000000000000003".into(),
            age: Duration::from_secs(42),
        });
        let mut checks = Report::new("drill", "scratch server");
        checks
            .checks
            .push(Check::pass("write", "write OK at 0/3000000"));
        verified.checks = Some(checks);
        verified.kept = Some(PathBuf::from("/tmp/lifeline-drill-x"));
        let text = verified.to_string();
        assert!(
            text.starts_with("[PASS] write: write OK at 0/3000000\n"),
            "{text}"
        );
        assert!(text.contains("drill of b1: VERIFIED\n"), "{text}");
        assert!(
            text.ends_with("RPO now: 42 s (newest archived WAL 000000010000000000000003)\n"),
            "{text}"
        );
        assert!(!text.contains("lifeline-drill-x"), "{text}");
        let json = verified.json();
        assert!(json["reason"].is_null());
        assert_eq!(json["rpo_seconds"], 42.0);
        assert_eq!(json["scratch_dir"], "/tmp/lifeline-drill-x");
        assert_eq!(json["checks"]["result"], "PASS");
    }
}
