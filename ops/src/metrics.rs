//! `lifeline metrics`: the Prometheus text format (`prometheus-client`), computed on demand from
//! the catalog, the repository, `.backup_status`, the newest drill report and, when it answers,
//! the server's archiver: nothing is kept in memory between runs (a `wal push` process keeps no
//! counter). With `metrics-textfile = PATH`, the same text is written atomically to PATH after
//! every backup, prune, verify, drill and check, for node_exporter's textfile collector.

use std::path::Path;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::{OpsError, Settings};

type Value = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Backup {
    service: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kept {
    service: String,
    kind: String,
    class: String,
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let metric = Value::default();
    metric.set(value);
    registry.register(name, help, metric);
}

fn family<L>(registry: &mut Registry, name: &str, help: &str) -> Family<L, Value>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Value>::default();
    registry.register(name, help, family.clone());
    family
}

/// The metrics text; `server`, when it answers within 3 s, adds the archiver's failures.
pub async fn render(
    settings: &Settings,
    server: Option<&crate::pg::Server>,
) -> Result<String, OpsError> {
    let storage = settings.repository().await?;
    let catalog = settings.open_catalog()?;
    let status = crate::status::RepositoryStatus::gather(storage.as_ref(), &catalog).await?;
    let mut registry = Registry::default();
    backups(&mut registry, &catalog.backups(None)?);
    if let Some(wal) = catalog.last_wal()? {
        gauge(
            &mut registry,
            "lifeline_wal_last_archived_timestamp_seconds",
            "When the last WAL file was archived",
            wal.archived_at_us as f64 / 1e6,
        );
    }
    if let Some(age) = status.wal_age_seconds() {
        gauge(
            &mut registry,
            "lifeline_wal_archive_age_seconds",
            "Age of the last archived WAL (the RPO now)",
            age,
        );
    }
    gauge(
        &mut registry,
        "lifeline_wal_gaps",
        "Gaps in the WAL chain from the oldest base backup",
        status.wal_gap_count() as f64,
    );
    gauge(
        &mut registry,
        "lifeline_repository_size_bytes",
        "Bytes stored in the repository",
        status.repository_bytes() as f64,
    );
    if let Some(dir) = settings.backup_dir.as_deref() {
        last_verify(&mut registry, dir);
        last_drill(&mut registry, &dir.join("logs"));
    }
    if let Some(server) = server
        && let Some(failed) = archiver_failed(server).await
    {
        let counter = Counter::<u64>::default();
        counter.inc_by(failed);
        registry.register(
            "lifeline_archiver_failed",
            "Archive attempts the server counts as failed (pg_stat_archiver)",
            counter,
        );
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|e| OpsError::Setting(format!("encoding the metrics: {e}")))?;
    Ok(text)
}

fn backups(registry: &mut Registry, all: &[catalog::BackupRecord]) {
    let at = family::<Backup>(
        registry,
        "lifeline_last_backup_timestamp_seconds",
        "When the newest backup of a service and kind finished",
    );
    let took = family::<Backup>(
        registry,
        "lifeline_last_backup_duration_seconds",
        "How long the newest backup took",
    );
    let size = family::<Backup>(
        registry,
        "lifeline_last_backup_size_bytes",
        "Size of the newest backup's data",
    );
    let kept = family::<Kept>(
        registry,
        "lifeline_backups",
        "Backups in the catalog, by retention class",
    );
    // Oldest first: the newest of each service and kind is set last.
    for b in all {
        let labels = Backup {
            service: b.service.to_string(),
            kind: b.kind.to_string(),
        };
        at.get_or_create(&labels).set(b.finished_at_us as f64 / 1e6);
        took.get_or_create(&labels)
            .set((b.finished_at_us - b.started_at_us) as f64 / 1e6);
        size.get_or_create(&labels).set(b.size_bytes as f64);
        let class = Kept {
            service: labels.service,
            kind: labels.kind,
            class: b.retention.to_string(),
        };
        kept.get_or_create(&class).inc();
    }
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&crate::status_file::read_regular(path).ok()?).ok()
}

/// `lifeline_last_<what>_timestamp_seconds` (from the RFC 3339 time `at`) and `_success`.
fn last_run(registry: &mut Registry, what: &str, at: Option<&str>, ok: bool) {
    if let Some(at) = at.and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        gauge(
            registry,
            &format!("lifeline_last_{what}_timestamp_seconds"),
            &format!("When the last {what} ran"),
            at.as_millisecond() as f64 / 1e3,
        );
    }
    gauge(
        registry,
        &format!("lifeline_last_{what}_success"),
        &format!("1 when the last {what} succeeded"),
        f64::from(u8::from(ok)),
    );
}

/// From `.backup_status`: when `verify` last ran and whether it found the repository clean.
fn last_verify(registry: &mut Registry, dir: &Path) {
    let Some(status) = read_json(&dir.join(".backup_status")) else {
        return;
    };
    let run = &status["last_runs"]["verify"];
    if !run.is_null() {
        let ok = run["outcome"] == "success";
        last_run(registry, "verify", run["finished_at"].as_str(), ok);
    }
}

/// From the newest `drill_*.json` report.
fn last_drill(registry: &mut Registry, logs: &Path) {
    let newest = std::fs::read_dir(logs)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("drill_") && n.ends_with(".json"))
        .max();
    let Some(report) = newest.and_then(|name| read_json(&logs.join(name))) else {
        return;
    };
    let ok = report["result"] == "VERIFIED";
    last_run(registry, "drill", report["started_at"].as_str(), ok);
    if let Some(rto) = report["rto_seconds"].as_f64() {
        gauge(
            registry,
            "lifeline_last_drill_rto_seconds",
            "The last drill's measured RTO",
            rto,
        );
    }
}

async fn archiver_failed(server: &crate::pg::Server) -> Option<u64> {
    let client = crate::pg::connect(server, &server.address(), std::time::Duration::from_secs(3))
        .await
        .ok()?;
    let row = client
        .query_one("SELECT failed_count FROM pg_stat_archiver", &[])
        .await
        .ok()?;
    u64::try_from(row.get::<_, i64>(0)).ok()
}

/// Rewrite `metrics-textfile` when one is configured; a failure is logged, never fatal.
pub async fn write_textfile(settings: &Settings, server: Option<&crate::pg::Server>) {
    let Some(path) = settings.metrics_textfile.as_deref() else {
        return;
    };
    let written = match render(settings, server).await {
        Ok(text) => {
            // node_exporter runs as another user: the file is created as the umask says.
            let options = storage::atomic::WriteOptions::umask();
            storage::atomic::write(path, text.as_bytes(), options).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = written {
        tracing::warn!("{} not written: {e}", path.display());
    }
}
