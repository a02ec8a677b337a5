//! Prune: apply the retention policy to the repository. The plan is shown first (and is all
//! that a dry run does); then, in this order, so that a crash at any point leaves every kept
//! backup whole: the manifests of deleted backups (a backup ceases to exist with its manifest),
//! the WAL no kept backup and no point in the PITR window needs, and finally the packs no
//! remaining manifest references and that are older than the grace period (a backup running
//! now writes its packs before its manifest; young unreferenced packs are its, so they stay).
//!
//! Then local housekeeping: temporary files that killed runs left in the local repository
//! and the `wal fetch` spool, once older than the same grace period (a live writer's are
//! younger), and operation logs and drill reports older than the longest retention window.
//!
//! One prune at a time, whichever host it runs on: it holds [`layout::PRUNE_LOCK_KEY`] while it
//! deletes. Backups a restore holds a lease on ([`storage::lease`]) are kept.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use jiff::tz::TimeZone;
use storage::leftovers::Leftover;
use storage::manifest::ClusterIdentity;
use storage::wal::{DEFAULT_SEGMENT_SIZE, WalFileName};
use storage::{Durability, PutMode, Storage, StorageExt, layout, repack};

use crate::{Catalog, CatalogError, RetentionPlan, RetentionPolicy, WalRange};

/// A prune that has not released its lock after this long is taken to have died.
pub const LOCK_STALE: Duration = Duration::from_secs(6 * 3600);

/// What one prune does, as the operator configured it.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    pub policy: RetentionPolicy,
    /// Days, weeks and months of the policy are the operator's.
    pub time_zone: TimeZone,
    /// Show the plan (and the housekeeping it would do) and delete nothing.
    pub dry_run: bool,
    /// Unreferenced packs and temporary files younger than this may belong to a run in
    /// progress: they stay.
    pub grace: Duration,
    /// Packs at least this percent dead are repacked.
    pub repack_unused_percent: u64,
    /// This host's name, recorded in the lock for whoever finds it held.
    pub host: String,
    /// The repository's directory when it is local: killed runs leave temporary files there.
    pub local_repository: Option<PathBuf>,
    /// Where `wal fetch` spools, whether or not prefetch is on now.
    pub spool_dir: Option<PathBuf>,
    /// Where operation logs and drill reports are written.
    pub logs_dir: Option<PathBuf>,
}

/// The plan, as decided before anything is deleted. `Display` is the table `prune` prints;
/// [`PrunePlan::to_json`] is its `--json` form.
#[derive(Debug, Clone)]
pub struct PrunePlan {
    pub policy: RetentionPolicy,
    pub dry_run: bool,
    pub retention: RetentionPlan,
    /// When each backup finished, UTC, as shown.
    finished: BTreeMap<String, String>,
}

/// What the repository part of a prune deleted and moved. `Display` is its one line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneOutcome {
    pub backups: usize,
    pub wal_files: usize,
    pub packs_deleted: usize,
    pub packs_repacked: usize,
    pub copied_bytes: u64,
    pub packs_waiting: usize,
    pub grace: Duration,
}

/// Everything a prune did after showing its plan. `Display` is what `prune` prints after the
/// plan: the outcome line (none for a dry run), then the housekeeping lines.
#[derive(Debug)]
pub struct PruneReport {
    pub plan: PrunePlan,
    /// `None` for a dry run.
    pub outcome: Option<PruneOutcome>,
    /// The local housekeeping's lines, or why it failed: the repository was pruned either way.
    pub housekeeping: Result<Vec<String>, CatalogError>,
}

/// Prune `storage` by `options`: lock (unless a dry run), plan from the repository, hand the
/// plan to `show_plan` before anything is deleted (so that the operator sees it even when a
/// deletion then fails), delete in the safe order, do the local housekeeping, release the lock.
pub async fn prune(
    storage: &dyn Storage,
    catalog: &mut Catalog,
    options: &PruneOptions,
    show_plan: impl FnOnce(&PrunePlan),
) -> Result<PruneReport, CatalogError> {
    if options.dry_run {
        return plan_apply_and_clean(storage, catalog, options, show_plan).await;
    }
    take_lock(storage, &options.host).await?;
    let pruned = plan_apply_and_clean(storage, catalog, options, show_plan).await;
    release_lock(storage).await;
    pruned
}

async fn plan_apply_and_clean(
    storage: &dyn Storage,
    catalog: &mut Catalog,
    options: &PruneOptions,
    show_plan: impl FnOnce(&PrunePlan),
) -> Result<PruneReport, CatalogError> {
    let plan = plan(storage, catalog, options).await?;
    show_plan(&plan);
    let outcome = if options.dry_run {
        None
    } else {
        Some(apply(storage, catalog, options, &plan.retention).await?)
    };
    let housekeeping = housekeeping(options.clone()).await;
    Ok(PruneReport {
        plan,
        outcome,
        housekeeping,
    })
}

/// The retention plan for what the repository holds now, leases included.
pub async fn plan(
    storage: &dyn Storage,
    catalog: &mut Catalog,
    options: &PruneOptions,
) -> Result<PrunePlan, CatalogError> {
    // The repository is the truth: plan from what it holds, not from a stale catalog.
    crate::rebuild(storage, catalog)
        .await
        .map_err(|e| CatalogError::during("read the repository before planning", e))?;
    let backups = catalog.backups(None)?;
    let in_use = storage::lease::held(storage).await?;
    let retention = crate::plan_retention(
        &backups,
        &options.policy,
        jiff::Timestamp::now(),
        &options.time_zone,
        &in_use,
    );
    let finished = backups
        .iter()
        .map(|b| {
            let at = jiff::Timestamp::from_microsecond(b.finished_at_us)
                .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default();
            (b.backup_id.clone(), at)
        })
        .collect();
    Ok(PrunePlan {
        policy: options.policy,
        dry_run: options.dry_run,
        retention,
        finished,
    })
}

/// Take the prune lock for `host` (and this process). One prune at a time: two would repack
/// the same packs and overwrite each other's marks. A lock older than [`LOCK_STALE`] is taken
/// over.
pub async fn take_lock(storage: &dyn Storage, host: &str) -> Result<(), CatalogError> {
    let holder = serde_json::json!({
        "host": host,
        "pid": std::process::id(),
        "taken_at": jiff::Timestamp::now(),
    });
    // A JSON value of strings and numbers always serializes.
    let body = serde_json::to_vec(&holder).unwrap_or_default();
    let key = layout::PRUNE_LOCK_KEY;
    match storage
        .put_bytes(key, body.clone(), PutMode::Create, Durability::Immediate)
        .await
    {
        Ok(()) => return Ok(()),
        Err(storage::StorageError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let held = storage.head(key).await?;
    let age = SystemTime::now()
        .duration_since(held.last_modified)
        .unwrap_or_default();
    let by = storage
        .get_bytes(key)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    if age < LOCK_STALE {
        return Err(CatalogError::PruneLocked {
            key,
            holder: by,
            minutes: age.as_secs() / 60,
        });
    }
    tracing::warn!(
        "taking over {key}, left {} h ago by {by}",
        age.as_secs() / 3600
    );
    storage
        .put_bytes(key, body, PutMode::Overwrite, Durability::Immediate)
        .await?;
    Ok(())
}

/// Release the prune lock; a lock that cannot be deleted only warns (the next prune takes it
/// over once stale, or the operator deletes it).
pub async fn release_lock(storage: &dyn Storage) {
    if let Err(e) = storage.delete(layout::PRUNE_LOCK_KEY).await {
        tracing::warn!(
            "{} not released ({e}): delete it before the next prune",
            layout::PRUNE_LOCK_KEY
        );
    }
}

/// Delete what the plan does not keep, in the order that leaves every kept backup whole.
async fn apply(
    storage: &dyn Storage,
    catalog: &mut Catalog,
    options: &PruneOptions,
    plan: &RetentionPlan,
) -> Result<PruneOutcome, CatalogError> {
    let doomed: Vec<&str> = plan
        .decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.backup_id.as_str())
        .collect();

    // 1. Manifests (the backups stop existing), then their metadata.
    for id in &doomed {
        storage
            .delete_many(&[layout::manifest_key(id), layout::stream_manifest_key(id)])
            .await?;
        storage.delete(&layout::metadata_key(id)).await?;
    }
    // 2. WAL outside every kept range.
    let wal = wal_to_delete(storage, &plan.wal_keep).await?;
    storage.delete_many(&wal).await?;
    // 3. Sparse packs repacked, then the two-phase sweep of unreferenced packs.
    let packs = sweep_packs(storage, options).await?;
    // The retention class of what stays, in its .metadata, then the catalog from the result.
    for d in plan.decisions.iter().filter(|d| d.keep) {
        if let Some(class) = d.class() {
            set_retention_label(storage, &d.backup_id, class).await;
        }
    }
    crate::rebuild(storage, catalog).await?;
    Ok(PruneOutcome {
        backups: doomed.len(),
        wal_files: wal.len(),
        packs_deleted: packs.deleted,
        packs_repacked: packs.repacked,
        copied_bytes: packs.copied_bytes,
        packs_waiting: packs.waiting,
        grace: options.grace,
    })
}

/// WAL segments (and backup-history files) wholly outside every range to keep. History files
/// are tiny and recovery needs them to follow timelines: they always stay.
pub async fn wal_to_delete(
    storage: &dyn Storage,
    keep: &[WalRange],
) -> Result<Vec<String>, CatalogError> {
    let segment_size = ClusterIdentity::load(storage)
        .await?
        .map_or(DEFAULT_SEGMENT_SIZE, |c| c.segment_size);
    let mut doomed = Vec::new();
    for meta in storage.list(layout::WAL_PREFIX).await? {
        let Some((sysid, name)) = layout::parse_wal_key(&meta.key) else {
            continue;
        };
        if matches!(name, WalFileName::History { .. }) {
            continue;
        }
        let Some(segment) = name.segment(segment_size) else {
            continue;
        };
        let start = segment.start_lsn(segment_size).0;
        let end = start + segment_size;
        let needed = keep.iter().any(|r| {
            r.system_identifier == sysid
                && r.start_lsn < end
                && r.end_lsn.is_none_or(|stop| start <= stop)
        });
        if !needed {
            doomed.push(meta.key);
        }
    }
    Ok(doomed)
}

/// The pack phase of prune (repack, then the two-phase sweep), then the checksums of the
/// manifests it rewrote into their `.metadata`.
async fn sweep_packs(
    storage: &dyn Storage,
    options: &PruneOptions,
) -> Result<repack::PackSweep, CatalogError> {
    let sweep = repack::sweep_packs(storage, options.grace, options.repack_unused_percent)
        .await
        .map_err(|e| CatalogError::during("repack and sweep the packs", e.into()))?;
    for (backup_id, checksum) in &sweep.rewritten {
        let checksum = format!("blake3:{}", checksum.to_hex());
        crate::label_backup(storage, backup_id, &[("checksum", checksum.as_str())]).await?;
    }
    Ok(sweep)
}

/// Record the retention class in the backup's `.metadata` (the catalog reads it back). Only
/// warns: the class is a label, the backup is whole without it.
async fn set_retention_label(storage: &dyn Storage, backup_id: &str, class: &str) {
    if let Err(e) = crate::label_backup(storage, backup_id, &[("retention", class)]).await {
        tracing::warn!("retention class of {backup_id} not recorded: {e}");
    }
}

/// Remove (on a dry run, list) the temporary files of killed runs older than the grace period
/// and the logs older than the longest retention window; the lines that say so. File work,
/// so off the async threads.
async fn housekeeping(options: PruneOptions) -> Result<Vec<String>, CatalogError> {
    tokio::task::spawn_blocking(move || housekeeping_blocking(&options, SystemTime::now()))
        .await
        .map_err(|e| CatalogError::TaskFailed {
            task: "the local housekeeping of prune",
            reason: e.to_string(),
        })?
}

fn housekeeping_blocking(
    options: &PruneOptions,
    now: SystemTime,
) -> Result<Vec<String>, CatalogError> {
    let mut lines = Vec::new();
    let grace = options.grace;
    let grace_h = grace.as_secs() / 3600;
    let leftovers = storage::leftovers::find_all(
        options.local_repository.as_deref(),
        options.spool_dir.as_deref(),
        now,
    )
    .map_err(|e| {
        CatalogError::during(
            "look for temporary files left by interrupted runs",
            e.into(),
        )
    })?;
    let (due, young): (Vec<_>, Vec<_>) = leftovers.into_iter().partition(|l| l.age >= grace);
    let size = |l: &[Leftover]| mib(storage::leftovers::total_size(l));
    if options.dry_run {
        if !due.is_empty() {
            lines.push(format!(
                "would remove {} temporary files left by interrupted runs ({} MiB), older than \
                 the {grace_h} h grace period:",
                due.len(),
                size(&due)
            ));
            for l in &due {
                lines.push(format!(
                    "  {} ({} bytes, {} h old)",
                    l.path.display(),
                    l.size,
                    l.age.as_secs() / 3600
                ));
            }
        }
    } else {
        let removal = storage::leftovers::remove_older_than(&due, grace).map_err(|e| {
            CatalogError::during("remove temporary files left by interrupted runs", e.into())
        })?;
        if removal.removed > 0 {
            lines.push(format!(
                "removed {} temporary files left by interrupted runs ({} MiB)",
                removal.removed,
                mib(removal.removed_bytes)
            ));
        }
    }
    if !young.is_empty() {
        lines.push(format!(
            "{} temporary files ({} MiB) are younger than the {grace_h} h grace period and stay \
             (a running backup or wal push may be writing them)",
            young.len(),
            size(&young)
        ));
    }

    let cutoff = options
        .policy
        .log_cutoff(jiff::Timestamp::now(), &options.time_zone);
    let logs = match &options.logs_dir {
        Some(dir) => expired_logs(dir, cutoff)?,
        None => Vec::new(),
    };
    if !logs.is_empty() {
        let since = cutoff.strftime("%Y-%m-%d");
        if options.dry_run {
            lines.push(format!(
                "would remove {} operation logs and drill reports older than {since} (the \
                 longest retention window):",
                logs.len()
            ));
            lines.extend(logs.iter().map(|p| format!("  {}", p.display())));
        } else {
            let mut removed = 0;
            for path in &logs {
                match std::fs::remove_file(path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(CatalogError::LocalFile {
                            action: "remove the old log",
                            path: path.clone(),
                            source,
                        });
                    }
                }
            }
            lines.push(format!(
                "removed {removed} operation logs and drill reports older than {since} (the \
                 longest retention window)"
            ));
        }
    }
    Ok(lines)
}

/// Operation logs (`*.log`) and drill reports (`drill_*.json`) in `dir` last modified before
/// `cutoff`. Only regular files directly in `dir`; links are left alone.
pub fn expired_logs(dir: &Path, cutoff: jiff::Timestamp) -> Result<Vec<PathBuf>, CatalogError> {
    // A `logs` that is a link points outside the repository: not ours to clean.
    if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) {
        tracing::warn!(
            "{} is a link: old logs there are left alone; make it a directory",
            dir.display()
        );
        return Ok(Vec::new());
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(CatalogError::LocalFile {
                action: "list the logs in",
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_log = Path::new(name).extension().is_some_and(|e| e == "log")
            || (name.starts_with("drill_") && name.ends_with(".json"));
        if !is_log {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        let modified = meta
            .modified()
            .ok()
            .and_then(|m| jiff::Timestamp::try_from(m).ok());
        if meta.is_file() && modified.is_some_and(|m| m < cutoff) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Bytes as MiB with one decimal, so that a few KiB of leftovers do not read as 0.
fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1u32 << 20))
}

impl PrunePlan {
    /// The plan as `prune --json` prints it.
    pub fn to_json(&self) -> serde_json::Value {
        let policy = &self.policy;
        serde_json::json!({
            "policy": {
                "daily": policy.daily, "weekly": policy.weekly,
                "monthly": policy.monthly, "wal_days": policy.wal_days,
            },
            "backups": self.retention.decisions.iter().map(|d| serde_json::json!({
                "backup_id": d.backup_id,
                "service": d.service,
                "kind": d.kind,
                "finished_at": self.finished.get(&d.backup_id),
                "keep": d.keep,
                "retention": d.class(),
                "reasons": d.reasons.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "wal_keep": self.retention.wal_keep.iter().map(|r| serde_json::json!({
                "system_identifier": r.system_identifier.to_string(),
                "from_lsn": storage::wal::Lsn(r.start_lsn).to_string(),
                "to_lsn": r.end_lsn.map(|l| storage::wal::Lsn(l).to_string()),
            })).collect::<Vec<_>>(),
            "dry_run": self.dry_run,
        })
    }
}

impl fmt::Display for PrunePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = &self.policy;
        writeln!(
            f,
            "retention: {} daily, {} weekly, {} monthly, WAL for {} days{}",
            policy.daily,
            policy.weekly,
            policy.monthly,
            policy.wal_days,
            if self.dry_run {
                " (dry run: nothing is deleted)"
            } else {
                ""
            }
        )?;
        writeln!(
            f,
            "{:<28} {:<10} {:<5} {:<19}  {:<6}  reasons",
            "backup", "service", "kind", "finished (UTC)", "action"
        )?;
        for d in &self.retention.decisions {
            let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
            writeln!(
                f,
                "{:<28} {:<10} {:<5} {:<19}  {:<6}  {}",
                d.backup_id,
                d.service,
                d.kind,
                self.finished.get(&d.backup_id).map_or("", String::as_str),
                if d.keep { "keep" } else { "delete" },
                if reasons.is_empty() {
                    "outside the policy".to_string()
                } else {
                    reasons.join(", ")
                }
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for PruneOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pruned: {} backups, {} WAL files, {} packs deleted; {} sparse packs repacked ({} MiB of live chunks copied); {} unreferenced packs wait out the {} h grace period",
            self.backups,
            self.wal_files,
            self.packs_deleted,
            self.packs_repacked,
            self.copied_bytes >> 20,
            self.packs_waiting,
            self.grace.as_secs() / 3600
        )
    }
}

impl fmt::Display for PruneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(outcome) = &self.outcome {
            writeln!(f, "{outcome}")?;
        }
        for line in self.housekeeping.iter().flatten() {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}
