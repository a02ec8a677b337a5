//! `lifeline status`: the last backups, the last archived WAL and its age (the RPO now), the
//! repository's size, and whether the WAL chains from the oldest base backup are whole.

use std::fmt;

use catalog::listing::{mib, utc_time};
use catalog::{BackupRecord, Catalog, WalRecord};
use storage::Storage;
use storage::wal::Lsn;

use crate::OpsError;

/// What `status` found.
pub struct RepositoryStatus {
    repository: String,
    repository_bytes: u64,
    backups: usize,
    /// The newest backup of each service and kind, newest first.
    last_backups: Vec<BackupRecord>,
    last_wal: Option<WalRecord>,
    wal_age_seconds: Option<f64>,
    wal_files: u64,
    wal_bytes: u64,
    chains: Chains,
}

/// The WAL chains checked from the start of the oldest base backup, as `verify` checks them.
enum Chains {
    /// Nothing to check: no cluster or no base backup yet.
    NotApplicable,
    Checked {
        from: Lsn,
        chains: restore::WalChains,
    },
    /// The repository's cluster or its history files could not be read.
    Unreadable(String),
}

/// How `status` reports: text, `--json`, or one `--nagios` line; `--notify` for the check
/// timer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Output {
    pub json: bool,
    pub nagios: bool,
    pub notify: bool,
}

impl Output {
    pub fn new(json: bool, nagios: bool, notify: bool) -> Output {
        Output {
            json,
            nagios,
            notify,
        }
    }
}

/// `status`: what it prints and its exit code (1 on any alert; with `--nagios`, 0, 1 or 2).
pub async fn run(
    settings: &crate::Settings,
    server: &crate::pg::Server,
    output: Output,
) -> Result<(String, u8), OpsError> {
    use crate::alerts;
    let storage = settings.repository().await?;
    let status = RepositoryStatus::gather(storage.as_ref(), &settings.open_catalog()?).await?;
    let failing = alerts::archiver_failing(server).await;
    let found = alerts::alerts(&status, &settings.thresholds, failing);
    if output.notify {
        alerts::notify_on_change(settings, &found).await;
    }
    let worst = alerts::worst(&found) as u8;
    if output.nagios {
        return Ok((
            alerts::nagios_line(&status, &settings.thresholds, &found),
            worst,
        ));
    }
    // Which server the PostgreSQL lines are about, when a failover's record decides it.
    let promoted = settings.ops.failover.promoted.as_ref();
    let text = if output.json {
        let mut json = status.to_json();
        json["alerts"] = serde_json::json!(found);
        json["promoted_primary"] = promoted.map_or(serde_json::Value::Null, |p| p.to_json());
        crate::json_output(&json)?
    } else {
        let lines = found
            .iter()
            .map(|a| format!("\nALERT {}: {}", a.severity.as_str(), a.message));
        let database = promoted.map(|p| format!("database: {}\n", p.note()));
        format!(
            "{}{status}{}",
            database.unwrap_or_default(),
            lines.collect::<String>()
        )
    };
    Ok((text, u8::from(worst > 0)))
}

impl RepositoryStatus {
    pub fn last_backups(&self) -> &[BackupRecord] {
        &self.last_backups
    }

    /// Seconds since the last WAL was archived, if any was.
    pub fn wal_age_seconds(&self) -> Option<f64> {
        self.wal_age_seconds
    }

    pub fn backup_count(&self) -> usize {
        self.backups
    }

    pub fn repository_bytes(&self) -> u64 {
        self.repository_bytes
    }

    /// Gaps in the WAL chain (0 when it was not checked).
    pub fn wal_gap_count(&self) -> usize {
        match &self.chains {
            Chains::Checked { chains, .. } => chains.gaps.len(),
            _ => 0,
        }
    }

    /// What is wrong with the WAL chain, if something is.
    pub fn wal_gap(&self) -> Option<String> {
        match &self.chains {
            Chains::Checked { chains, .. } if !chains.is_clean() => Some(self.chains.to_string()),
            Chains::Unreadable(e) => Some(format!("the WAL chain cannot be checked: {e}")),
            _ => None,
        }
    }

    pub async fn gather(storage: &dyn Storage, catalog: &Catalog) -> Result<Self, OpsError> {
        let backups = catalog.backups(None)?;
        let last_wal = catalog.last_wal()?;
        let (wal_files, wal_bytes) = catalog.wal_totals()?;
        let listing = storage.list("").await?;
        let chains = wal_chains(storage, &listing, &backups).await;
        let now = jiff::Timestamp::now().as_microsecond();
        let mut last_backups: Vec<BackupRecord> = Vec::new();
        for b in backups.iter().rev() {
            if !last_backups
                .iter()
                .any(|l| l.service == b.service && l.kind == b.kind)
            {
                last_backups.push(b.clone());
            }
        }
        Ok(RepositoryStatus {
            repository: storage.describe(),
            repository_bytes: listing.iter().map(|m| m.size).sum(),
            backups: backups.len(),
            last_backups,
            wal_age_seconds: last_wal
                .as_ref()
                .map(|w| (now - w.archived_at_us) as f64 / 1e6),
            last_wal,
            wal_files,
            wal_bytes,
            chains,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "repository": self.repository,
            "repository_bytes": self.repository_bytes,
            "backups": self.backups,
            "last_backups": self.last_backups.iter().map(BackupRecord::to_json).collect::<Vec<_>>(),
            "last_wal": self.last_wal.as_ref().map(|w| serde_json::json!({
                "name": w.name,
                "archived_at": jiff::Timestamp::from_microsecond(w.archived_at_us).ok(),
                "age_seconds": self.wal_age_seconds,
            })),
            "wal_files": self.wal_files,
            "wal_bytes": self.wal_bytes,
            "wal_chain": self.chains.to_json(),
        })
    }
}

impl fmt::Display for RepositoryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "repository: {} ({} MiB)",
            self.repository,
            mib(self.repository_bytes)
        )?;
        if self.last_backups.is_empty() {
            writeln!(f, "backups: none yet; run `lifeline backup postgres`")?;
        }
        for b in &self.last_backups {
            let origin = match (b.major(), b.kind) {
                (Some(major), storage::BackupKind::Base) => {
                    format!("PostgreSQL {major} from the {}, ", b.source)
                }
                (Some(major), _) => format!("PostgreSQL {major}, "),
                (None, _) => String::new(),
            };
            writeln!(
                f,
                "last {} {} backup: {} finished {} UTC ({origin}{} MiB, {})",
                b.service,
                b.kind,
                b.backup_id,
                utc_time(b.finished_at_us),
                mib(b.size_bytes),
                b.restorability
            )?;
        }
        match (&self.last_wal, self.wal_age_seconds) {
            (Some(w), Some(age)) => writeln!(
                f,
                "last archived WAL: {} at {} UTC, {:.0} s ago (the RPO now); {} WAL files, {} MiB",
                w.name,
                utc_time(w.archived_at_us),
                age,
                self.wal_files,
                mib(self.wal_bytes)
            )?,
            _ => writeln!(
                f,
                "last archived WAL: none; set archive_command = 'lifeline wal push %p'"
            )?,
        }
        writeln!(f, "{}", self.chains)?;
        write!(f, "backups in the catalog: {}", self.backups)
    }
}

/// Walk the WAL chains of the repository's cluster. The WAL comes from the repository listing
/// status already makes (not the catalog, which still lists a segment lost from the repository);
/// where they start comes from the catalog's oldest complete base backup.
async fn wal_chains(
    storage: &dyn Storage,
    listing: &[storage::ObjectMeta],
    backups: &[BackupRecord],
) -> Chains {
    let identity = match storage::manifest::ClusterIdentity::load(storage).await {
        Ok(Some(identity)) => identity,
        Ok(None) => return Chains::NotApplicable,
        Err(e) => return Chains::Unreadable(e.to_string()),
    };
    let Some(sysid) = identity.system_identifier() else {
        return Chains::Unreadable("cluster.json is corrupt".into());
    };
    let kept: Vec<restore::BackupWal> = backups
        .iter()
        .filter(|b| b.system_identifier == sysid && b.kind == storage::BackupKind::Base)
        .map(|b| restore::BackupWal {
            timeline: b.timeline,
            start: Lsn(b.start_lsn),
            stop: Lsn(b.stop_lsn),
        })
        .collect();
    let Some(from) = kept.iter().map(|b| b.start).min() else {
        return Chains::NotApplicable;
    };
    let wal = restore::wal_records(listing, sysid, identity.segment_size);
    match restore::timeline_histories(storage, sysid, &wal).await {
        Ok(histories) => Chains::Checked {
            from,
            chains: restore::check_wal_chains(&wal, &histories, identity.segment_size, &kept),
        },
        Err(e) => Chains::Unreadable(e.to_string()),
    }
}

impl Chains {
    fn to_json(&self) -> serde_json::Value {
        match self {
            Chains::NotApplicable => serde_json::Value::Null,
            Chains::Checked { from, chains } => serde_json::json!({
                "checked_from": from.to_string(),
                "whole": chains.is_clean(),
                "first_missing": chains.gaps.first().map(|g| &g.first_missing),
                "missing_segments": chains.missing_segments(),
                "gaps": chains.gaps,
                "missing_histories": chains.missing_histories,
            }),
            Chains::Unreadable(e) => serde_json::json!({ "error": e }),
        }
    }
}

impl fmt::Display for Chains {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Chains::NotApplicable => write!(f, "WAL chain: not checked (no base backup yet)"),
            Chains::Checked { from, chains } if chains.is_clean() => write!(
                f,
                "WAL chain: whole from the oldest base backup ({from}) to the newest segment"
            ),
            Chains::Checked { chains, .. } => {
                let first = chains.gaps.first().map_or_else(
                    || "no segment, but a history file".to_string(),
                    |g| format!("{} on timeline {}", g.first_missing, g.timeline),
                );
                let histories = match chains.missing_histories.len() {
                    0 => String::new(),
                    n => format!(" and {n} history file(s)"),
                };
                write!(
                    f,
                    "WAL gap: first missing {first}; {} segment(s){histories} missing in all. \
                     Recovery across the gap stops there: `lifeline verify` names each one",
                    chains.missing_segments(),
                )
            }
            Chains::Unreadable(e) => write!(f, "WAL chain: not checked: {e}"),
        }
    }
}
