//! Thresholds on what `status` finds: the seed's promises measured on every run. `alert-rpo`
//! (default 15 minutes, the seed's RPO) on the age of the last archived WAL, `alert-backup-age`
//! (default 26 hours: a daily backup plus slack) on the newest backup of each service and kind,
//! plus what is always wrong: a gap in the WAL chain, an archiver failing now. `status` exits 1
//! on any alert, `status --nagios` prints one Nagios line and exits 0/1/2, and `status
//! --notify` (the check timer) notifies when the alerts change: crossed, or cleared.

use std::path::Path;
use std::time::Duration;

use crate::Settings;
use crate::status::RepositoryStatus;

/// `alert-rpo` and `alert-backup-age`.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub rpo: Duration,
    pub backup_age: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            rpo: Duration::from_secs(15 * 60),
            backup_age: Duration::from_secs(26 * 3600),
        }
    }
}

/// Nagios's order, and its exit codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    Ok = 0,
    Warning = 1,
    Critical = 2,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "OK",
            Severity::Warning => "WARNING",
            Severity::Critical => "CRITICAL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Alert {
    pub severity: Severity,
    /// Which threshold (`rpo`, `backup-age postgresql base`, `wal-gap`, ...): stable from run
    /// to run, unlike the message's figures, so that an alert that stays is notified once.
    pub key: String,
    pub message: String,
}

fn alert(severity: Severity, key: &str, message: String) -> Alert {
    Alert {
        severity,
        key: key.to_string(),
        message,
    }
}

/// Every threshold `status` crosses; `archiver_failing` is what the server says when it
/// answered (see [`archiver_failing`]).
pub fn alerts(
    status: &RepositoryStatus,
    t: &Thresholds,
    archiver_failing: Option<String>,
) -> Vec<Alert> {
    let mut out = Vec::new();
    // A cluster with base backups must archive WAL; dumps alone need none.
    let has_base = status
        .last_backups()
        .iter()
        .any(|b| b.kind == storage::BackupKind::Base);
    match status.wal_age_seconds() {
        Some(age) if age > t.rpo.as_secs_f64() => out.push(alert(
            Severity::Critical,
            "rpo",
            format!(
                "the last WAL was archived {age:.0} s ago, over alert-rpo ({} s): archiving has stalled; run lifeline check",
                t.rpo.as_secs()
            ),
        )),
        Some(_) => {}
        None if has_base => out.push(alert(
            Severity::Critical,
            "rpo",
            "no WAL archived: set archive_command = 'lifeline wal push %p' and run lifeline check".into(),
        )),
        None => {}
    }
    if status.last_backups().is_empty() {
        out.push(alert(
            Severity::Warning,
            "backup-age",
            "no backup yet: run lifeline backup postgres".into(),
        ));
    }
    let now = jiff::Timestamp::now().as_microsecond();
    for b in status.last_backups() {
        let age = (now - b.finished_at_us) as f64 / 1e6;
        if age > t.backup_age.as_secs_f64() {
            out.push(alert(
                Severity::Warning,
                &format!("backup-age {} {}", b.service, b.kind),
                format!(
                    "the last {} {} backup is {:.1} h old, over alert-backup-age ({:.0} h): check its timer and log",
                    b.service,
                    b.kind,
                    age / 3600.0,
                    t.backup_age.as_secs_f64() / 3600.0
                ),
            ));
        }
    }
    if let Some(gap) = status.wal_gap() {
        out.push(alert(Severity::Critical, "wal-gap", gap));
    }
    if let Some(failing) = archiver_failing {
        out.push(alert(Severity::Critical, "archiver", failing));
    }
    out
}

/// What the server says about archiving, when it answers within 3 s: `Some` when it is failing now.
pub async fn archiver_failing(server: &crate::pg::Server) -> Option<String> {
    let client = crate::pg::connect(server, &server.address(), Duration::from_secs(3))
        .await
        .ok()?;
    let check = crate::check::archiver_failures(&client).await;
    (!check.passed).then_some(check.detail)
}

/// The worst severity among `alerts`.
pub fn worst(alerts: &[Alert]) -> Severity {
    alerts
        .iter()
        .map(|a| a.severity)
        .max()
        .unwrap_or(Severity::Ok)
}

/// One Nagios plugin line: `LIFELINE OK|WARNING|CRITICAL - what | perfdata`.
pub fn nagios_line(status: &RepositoryStatus, t: &Thresholds, alerts: &[Alert]) -> String {
    let word = worst(alerts).as_str();
    let what = if alerts.is_empty() {
        match status.wal_age_seconds() {
            Some(age) => format!("last WAL {age:.0} s ago, {} backups", status.backup_count()),
            None => format!("{} backups", status.backup_count()),
        }
    } else {
        alerts
            .iter()
            .map(|a| a.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut perf = vec![format!("repository_bytes={}B", status.repository_bytes())];
    if let Some(age) = status.wal_age_seconds() {
        perf.push(format!("wal_age={age:.0}s;;{}", t.rpo.as_secs()));
    }
    format!("LIFELINE {word} - {what} | {}", perf.join(" "))
}

/// For the check timer: notify when the alerts differ from the last run's (crossed or
/// cleared), remembered in `BACKUP_DIR/.alert_state`. Never fails the run.
pub async fn notify_on_change(settings: &Settings, alerts: &[Alert]) {
    let Some(dir) = settings.backup_dir.as_deref() else {
        return;
    };
    let path = dir.join(".alert_state");
    let state: String = alerts.iter().map(|a| format!("{}\n", a.key)).collect();
    // Never through a link: lifeline's own files are read as they are.
    let before = crate::status_file::read_regular(&path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    if before == state {
        return;
    }
    remember(dir, &path, &state);
    let details: Vec<&str> = alerts.iter().map(|a| a.message.as_str()).collect();
    let (ok, summary) = match details.first() {
        None => (true, "all thresholds are met again".to_string()),
        Some(first) => (
            false,
            format!("{} threshold(s) crossed: {first}", details.len()),
        ),
    };
    settings
        .notify("status", ok, &summary, &details.join("\n"))
        .await;
}

fn remember(dir: &Path, path: &Path, state: &str) {
    let owner = storage::private::Owner::of(dir);
    let options = storage::atomic::WriteOptions::private(owner);
    if let Err(e) = storage::atomic::write(path, state.as_bytes(), options) {
        tracing::warn!("{} not written: {e}", path.display());
    }
}
