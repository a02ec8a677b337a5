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

use crate::listing::mib;
use crate::{Catalog, CatalogError, RetentionPlan, RetentionPolicy, WalRange};

/// A prune that has not released its lock after this long is taken to have died.
pub const LOCK_STALE: Duration = Duration::from_secs(6 * 3600);

/// How often a running prune renews its lock: well within [`LOCK_STALE`], so that a prune
/// that runs for a day (a large repository repacked on S3) is never taken for a dead one.
pub const LOCK_RENEWAL: Duration = Duration::from_secs(3600);

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
    let lock = take_lock(storage, &options.host).await?;
    let pruned = {
        let work = plan_apply_and_clean(storage, catalog, options, show_plan);
        tokio::pin!(work);
        // A lost lock stops the deletions where they are: the order leaves every kept backup
        // whole at any point, and the new holder finishes the job.
        tokio::select! {
            pruned = &mut work => pruned,
            lost = keep_lock(storage, &lock, LOCK_RENEWAL) => Err(lost),
        }
    };
    release_lock(storage, &lock).await;
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
pub async fn take_lock(storage: &dyn Storage, host: &str) -> Result<PruneLock, CatalogError> {
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
        Ok(()) => return Ok(PruneLock::new(body)),
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
        .put_bytes(key, body.clone(), PutMode::Overwrite, Durability::Immediate)
        .await?;
    Ok(PruneLock::new(body))
}

/// A prune lock this process holds: what it wrote last, to recognise it at renewal and
/// release.
#[derive(Debug)]
pub struct PruneLock {
    body: std::sync::Mutex<Vec<u8>>,
}

impl PruneLock {
    fn new(body: Vec<u8>) -> Self {
        PruneLock {
            body: std::sync::Mutex::new(body),
        }
    }

    fn body(&self) -> Vec<u8> {
        self.body
            .lock()
            .map_or_else(|e| e.into_inner().clone(), |b| b.clone())
    }

    fn set_body(&self, body: Vec<u8>) {
        match self.body.lock() {
            Ok(mut held) => *held = body,
            Err(e) => *e.into_inner() = body,
        }
    }
}

/// Renew `lock` every `every` for as long as the prune runs; returns only when the lock was
/// taken over (this prune must stop). A renewal that fails is retried at the next one: the
/// lock stays ours until it is [`LOCK_STALE`].
async fn keep_lock(storage: &dyn Storage, lock: &PruneLock, every: Duration) -> CatalogError {
    loop {
        tokio::time::sleep(every).await;
        match renew_lock(storage, lock).await {
            Ok(()) => {}
            Err(lost @ CatalogError::PruneLockLost { .. }) => return lost,
            Err(e) => tracing::warn!("prune lock not renewed ({e}): retried in {every:?}"),
        }
    }
}

/// Rewrite the lock with the time of now, if it is still this prune's.
pub async fn renew_lock(storage: &dyn Storage, lock: &PruneLock) -> Result<(), CatalogError> {
    let key = layout::PRUNE_LOCK_KEY;
    let held = match storage.get_bytes(key).await {
        Ok(held) => held,
        Err(storage::StorageError::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if held != lock.body() {
        return Err(CatalogError::PruneLockLost {
            key,
            holder: String::from_utf8_lossy(&held).into_owned(),
        });
    }
    let mut holder: serde_json::Value = serde_json::from_slice(&held).unwrap_or_default();
    holder["renewed_at"] = serde_json::json!(jiff::Timestamp::now());
    let body = serde_json::to_vec(&holder).unwrap_or(held);
    storage
        .put_bytes(key, body.clone(), PutMode::Overwrite, Durability::Immediate)
        .await?;
    lock.set_body(body);
    Ok(())
}

/// Release the prune lock; a lock that cannot be deleted only warns (the next prune takes it
/// over once stale, or the operator deletes it).
pub async fn release_lock(storage: &dyn Storage, lock: &PruneLock) {
    let key = layout::PRUNE_LOCK_KEY;
    // A prune that ran past LOCK_STALE may have been taken over: the lock is then another
    // prune's, and deleting it would let a third one run beside that one.
    match storage.get_bytes(key).await {
        Ok(held) if held == lock.body() => {}
        Ok(held) => {
            tracing::warn!(
                "{key} was taken over meanwhile by {}: left in place",
                String::from_utf8_lossy(&held)
            );
            return;
        }
        Err(storage::StorageError::NotFound { .. }) => return,
        Err(e) => {
            tracing::warn!("{key} not released ({e}): delete it before the next prune");
            return;
        }
    }
    if let Err(e) = storage.delete(key).await {
        tracing::warn!("{key} not released ({e}): delete it before the next prune");
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
    // Leases past their lifetime protect nothing: gone, so the listing stays small.
    storage
        .delete_many(&storage::lease::expired(storage).await?)
        .await?;
    // Probes of `check` runs killed between their write and their delete.
    storage
        .delete_many(&stale_check_probes(storage, options.grace).await?)
        .await?;
    // 2. WAL outside every kept range.
    let wal = wal_to_delete(storage, &plan.wal_keep).await?;
    storage.delete_many(&wal).await?;
    // 3. Sparse packs repacked, then the two-phase sweep of unreferenced packs.
    let packs = sweep_packs(storage, options).await?;
    // The retention class of what stays, in its .metadata, then the catalog from the result.
    for d in plan.decisions.iter().filter(|d| d.keep) {
        if let Some(class) = d.class() {
            set_retention_label(storage, &d.backup_id, &class.label(&options.policy)).await;
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

/// `check` probes older than the grace period: a live `check` deletes its own within seconds.
/// Only keys of a probe's own form (`check/HOST.PID`): whoever can write the repository could
/// make `check/` a link, and nothing else is ever deleted through it.
async fn stale_check_probes(
    storage: &dyn Storage,
    grace: Duration,
) -> Result<Vec<String>, CatalogError> {
    let settled = SystemTime::now()
        .checked_sub(grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(storage
        .list(layout::CHECK_PREFIX)
        .await?
        .into_iter()
        .filter(|m| m.last_modified <= settled && is_check_probe(&m.key))
        .map(|m| m.key)
        .collect())
}

fn is_check_probe(key: &str) -> bool {
    let Some(name) = key.strip_prefix(layout::CHECK_PREFIX) else {
        return false;
    };
    name.rsplit_once('.').is_some_and(|(host, pid)| {
        !host.is_empty()
            && !host.contains('/')
            && !pid.is_empty()
            && pid.len() <= 10
            && pid.bytes().all(|b| b.is_ascii_digit())
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
                "retention": d.class().map(|c| c.label(policy)),
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

#[cfg(test)]
mod tests {
    #[test]
    fn only_check_probes_are_taken_for_probes() {
        use super::is_check_probe;
        for probe in ["check/db1.4242", "check/host.example.com.1"] {
            assert!(is_check_probe(probe), "{probe}");
        }
        for other in [
            "check/PG_VERSION",
            "check/postgresql.auto.conf",
            "check/base/16384.1",
            "check/.1",
            "check/host.",
            "wal/db1.1",
        ] {
            assert!(!is_check_probe(other), "{other}");
        }
    }

    use std::cell::Cell;

    use storage::manifest::{BackupManifest, BackupMetadata, put_manifest};
    use storage::wal::{Lsn, TimelineId};
    use storage::{Compression, StorageError, object};
    use testing::{Fault, Faulty, MemoryStorage, Op};

    use super::*;
    use crate::Reason;

    const SEGMENT: u64 = 16 * 1024 * 1024;
    const HOUR: Duration = Duration::from_secs(3600);

    /// Three nightly-ish base backups of cluster 1, oldest first: (id, WAL segment it spans,
    /// hours since it finished). With the policy of [`options`] the oldest goes, the middle one
    /// anchors the one-day PITR window and the newest is the newest.
    const BACKUPS: [(&str, u32, u64); 3] =
        [("a-oldest", 1, 72), ("b-anchor", 3, 48), ("c-newest", 5, 1)];

    fn wal_key(seg: u32) -> String {
        layout::wal_key(
            1,
            &WalFileName::Segment {
                timeline: TimelineId(1),
                log: 0,
                seg,
            },
        )
    }

    fn history_key() -> String {
        layout::wal_key(
            1,
            &WalFileName::History {
                timeline: TimelineId(2),
            },
        )
    }

    async fn put_framed(storage: &dyn Storage, key: &str, data: &[u8]) {
        let (_, framed) = object::encode(data, Compression::default()).expect("encode");
        storage
            .put_bytes(key, framed, PutMode::Create, Durability::Immediate)
            .await
            .expect("put");
    }

    /// A complete base backup spanning WAL segment `seg`, finished `hours_ago`, with one chunk
    /// of its own in a pack of its own; returns that pack's key.
    async fn put_backup(storage: &dyn Storage, id: &str, seg: u32, hours_ago: u64) -> String {
        let chunks = testing::store_pack(storage, &[format!("the data of {id}")]).await;
        let finished = jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_hours(hours_ago as i64))
            .expect("time");
        let started = finished
            .checked_sub(jiff::SignedDuration::from_secs(60))
            .expect("time");
        let start = Lsn(u64::from(seg) * SEGMENT + 40);
        let stop = Lsn(u64::from(seg) * SEGMENT + 4000);
        let manifest: BackupManifest = serde_json::from_value(serde_json::json!({
            "format": 1, "backup_id": id, "service": "postgresql", "kind": "base",
            "system_identifier": 1, "server_version": "17", "database": "postgres",
            "timeline": 1, "start_lsn": start, "stop_lsn": stop, "start_wal": "",
            "stop_wal": "", "segment_size": SEGMENT, "started_at": started,
            "finished_at": finished, "block_size": 8192, "files": [], "bundle": chunks,
            "backup_label": "", "row_counts": {}, "size_bytes": 10, "new_bytes": 10
        }))
        .expect("manifest");
        put_manifest(
            storage,
            &layout::manifest_key(id),
            &manifest,
            PutMode::Create,
        )
        .await
        .expect("manifest stored");
        // A label that the policy does not give: prune must write the one it decides.
        let metadata: BackupMetadata = serde_json::from_value(serde_json::json!({
            "backup_id": id, "service": "postgresql", "kind": "base", "retention": "12_months"
        }))
        .expect("metadata");
        metadata.store(storage).await.expect("metadata stored");
        layout::pack_key(&chunks[0].pack)
    }

    /// The repository of [`BACKUPS`], with WAL segments 1 to 6 and a timeline history file;
    /// the pack of each backup, in the same order.
    async fn repository(storage: &dyn Storage) -> Vec<String> {
        let mut packs = Vec::new();
        for (id, seg, hours_ago) in BACKUPS {
            packs.push(put_backup(storage, id, seg, hours_ago).await);
        }
        for seg in 1..=6 {
            put_framed(storage, &wal_key(seg), b"wal").await;
        }
        put_framed(
            storage,
            &history_key(),
            b"1\t0/5000000\tno recovery target\n",
        )
        .await;
        packs
    }

    fn options(dir: &Path) -> PruneOptions {
        PruneOptions {
            policy: RetentionPolicy {
                daily: 1,
                weekly: 0,
                monthly: 0,
                wal_days: 1,
            },
            time_zone: TimeZone::UTC,
            dry_run: false,
            grace: HOUR,
            repack_unused_percent: 50,
            host: "here".into(),
            local_repository: None,
            spool_dir: None,
            logs_dir: Some(dir.join("logs")),
        }
    }

    fn open_catalog(dir: &Path) -> Catalog {
        Catalog::open(dir.join("catalog.db")).expect("catalog")
    }

    async fn run(
        storage: &dyn Storage,
        dir: &Path,
        options: &PruneOptions,
    ) -> Result<PruneReport, CatalogError> {
        let mut catalog = open_catalog(dir);
        prune(storage, &mut catalog, options, |_| {}).await
    }

    /// The backup's manifest reads back and every pack it names is there.
    async fn assert_whole(storage: &MemoryStorage, id: &str) {
        let manifest = BackupManifest::load(storage, id)
            .await
            .unwrap_or_else(|e| panic!("{id} lost its manifest: {e}"));
        for chunk in manifest.chunks() {
            let key = layout::pack_key(&chunk.pack);
            assert!(storage.object(&key).is_some(), "{id} lost its pack {key}");
        }
        assert!(
            storage.object(&layout::metadata_key(id)).is_some(),
            "{id} lost its .metadata"
        );
    }

    fn retention_label(storage: &MemoryStorage, id: &str) -> String {
        let key = layout::metadata_key(id);
        let bytes = storage.object(&key).expect("metadata");
        BackupMetadata::from_json(&key, &bytes)
            .expect("metadata parses")
            .retention
    }

    #[tokio::test]
    async fn prune_deletes_what_the_policy_drops_in_order_and_keeps_the_rest_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = MemoryStorage::new();
        let packs = repository(&storage).await;
        let shown = Cell::new(0);
        let mut catalog = open_catalog(dir.path());
        let report = prune(&storage, &mut catalog, &options(dir.path()), |plan| {
            shown.set(shown.get() + 1);
            let deleted: Vec<_> = plan
                .retention
                .decisions
                .iter()
                .filter(|d| !d.keep)
                .map(|d| d.backup_id.as_str())
                .collect();
            assert_eq!(deleted, ["a-oldest"]);
        })
        .await
        .expect("prune");
        assert_eq!(shown.get(), 1, "the plan is shown once, before deleting");

        let outcome = report.outcome.clone().expect("not a dry run");
        assert_eq!((outcome.backups, outcome.wal_files), (1, 2));
        assert!(storage.object(&layout::manifest_key("a-oldest")).is_none());
        assert!(storage.object(&layout::metadata_key("a-oldest")).is_none());
        for id in ["b-anchor", "c-newest"] {
            assert_whole(&storage, id).await;
            // The label follows the configured policy: one daily backup.
            assert_eq!(retention_label(&storage, id), "1_day", "{id}");
        }
        assert!(storage.object(&wal_key(1)).is_none());
        assert!(storage.object(&wal_key(2)).is_none());
        for seg in 3..=6 {
            assert!(storage.object(&wal_key(seg)).is_some(), "segment {seg}");
        }
        assert!(storage.object(&history_key()).is_some());
        // The deleted backup's pack is unreferenced but only now: it waits out the grace.
        assert!(storage.object(&packs[0]).is_some());
        assert_eq!((outcome.packs_deleted, outcome.packs_waiting), (0, 1));
        assert!(
            storage.object(layout::PRUNE_LOCK_KEY).is_none(),
            "lock kept"
        );
        // The catalog says what the repository holds after the prune.
        let left: Vec<_> = catalog
            .backups(None)
            .expect("backups")
            .into_iter()
            .map(|b| b.backup_id)
            .collect();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(!left.contains(&"a-oldest".to_string()));
        assert_eq!(
            report.to_string(),
            "pruned: 1 backups, 2 WAL files, 0 packs deleted; 0 sparse packs repacked (0 MiB of \
             live chunks copied); 1 unreferenced packs wait out the 1 h grace period\n"
        );
    }

    #[tokio::test]
    async fn the_pitr_window_keeps_the_wal_between_backups() {
        // One day of PITR: from the backup that finished before the window (b) onwards, the
        // segment between b and c included.
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = MemoryStorage::new();
        repository(&storage).await;
        run(&storage, dir.path(), &options(dir.path()))
            .await
            .expect("prune");
        assert!(
            storage.object(&wal_key(4)).is_some(),
            "the window's WAL went"
        );

        // No PITR window: only what the newest backup needs, from its start, stays.
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = MemoryStorage::new();
        repository(&storage).await;
        let mut options = options(dir.path());
        options.policy.wal_days = 0;
        let report = run(&storage, dir.path(), &options).await.expect("prune");
        let outcome = report.outcome.expect("not a dry run");
        assert_eq!((outcome.backups, outcome.wal_files), (2, 4));
        for seg in 1..=4 {
            assert!(storage.object(&wal_key(seg)).is_none(), "segment {seg}");
        }
        assert!(storage.object(&wal_key(5)).is_some());
        assert!(storage.object(&wal_key(6)).is_some());
        assert!(storage.object(&history_key()).is_some());
    }

    #[tokio::test]
    async fn wal_choice_keeps_each_range_of_its_cluster_and_every_history_file() {
        let storage = MemoryStorage::new();
        for seg in 1..=7 {
            put_framed(&storage, &wal_key(seg), b"wal").await;
        }
        let other = layout::wal_key(
            2,
            &WalFileName::Segment {
                timeline: TimelineId(1),
                log: 0,
                seg: 5,
            },
        );
        put_framed(&storage, &other, b"wal").await;
        put_framed(&storage, &history_key(), b"history").await;
        let keep = [
            // A kept backup: segment 3 only.
            WalRange {
                system_identifier: 1,
                start_lsn: 3 * SEGMENT + 40,
                end_lsn: Some(3 * SEGMENT + 4000),
            },
            // The PITR window: from segment 5 on.
            WalRange {
                system_identifier: 1,
                start_lsn: 5 * SEGMENT + 40,
                end_lsn: None,
            },
        ];
        let mut doomed = wal_to_delete(&storage, &keep).await.expect("choice");
        doomed.sort();
        let mut expected = vec![wal_key(1), wal_key(2), wal_key(4), other];
        expected.sort();
        assert_eq!(doomed, expected);
    }

    #[tokio::test]
    async fn a_fresh_lock_refuses_and_nothing_changes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = MemoryStorage::new();
        repository(&storage).await;
        let held = br#"{"host":"elsewhere","pid":1}"#.to_vec();
        storage.set_object(layout::PRUNE_LOCK_KEY, held.clone());
        let before: Vec<_> = storage
            .keys()
            .into_iter()
            .map(|k| (storage.object(&k), k))
            .collect();
        let mut catalog = open_catalog(dir.path());
        let shown = Cell::new(false);
        let refused = prune(&storage, &mut catalog, &options(dir.path()), |_| {
            shown.set(true)
        })
        .await;
        let Err(e @ CatalogError::PruneLocked { .. }) = refused else {
            panic!("a held lock did not refuse: {refused:?}");
        };
        let said = e.to_string();
        assert!(said.starts_with("another prune holds prune/lock"), "{said}");
        assert!(said.contains("elsewhere"), "{said}");
        assert!(!shown.get(), "a refused prune showed a plan");
        let after: Vec<_> = storage
            .keys()
            .into_iter()
            .map(|k| (storage.object(&k), k))
            .collect();
        assert_eq!(after, before, "a refused prune changed the repository");
    }

    #[tokio::test]
    async fn a_stale_lock_is_taken_over_and_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let memory = MemoryStorage::new();
        repository(&memory).await;
        memory.set_object(layout::PRUNE_LOCK_KEY, b"{\"host\":\"dead\"}".to_vec());
        // Five hours is not stale yet.
        memory.backdate(layout::PRUNE_LOCK_KEY, 5 * HOUR);
        let refused = run(&memory, dir.path(), &options(dir.path())).await;
        assert!(
            matches!(refused, Err(CatalogError::PruneLocked { minutes: 300, .. })),
            "{refused:?}"
        );
        memory.backdate(layout::PRUNE_LOCK_KEY, 2 * HOUR);
        let report = run(&memory, dir.path(), &options(dir.path()))
            .await
            .expect("a stale lock is taken over");
        assert_eq!(report.outcome.map(|o| o.backups), Some(1));
        assert!(memory.object(layout::PRUNE_LOCK_KEY).is_none(), "lock kept");
    }

    #[tokio::test]
    async fn a_lock_taken_over_meanwhile_is_left_to_its_new_holder() {
        let storage = MemoryStorage::new();
        let lock = take_lock(&storage, "here").await.expect("free lock");
        // Another prune took it over (this one ran past LOCK_STALE).
        let theirs = br#"{"host":"elsewhere","pid":2}"#.to_vec();
        storage.set_object(layout::PRUNE_LOCK_KEY, theirs.clone());
        release_lock(&storage, &lock).await;
        assert_eq!(storage.object(layout::PRUNE_LOCK_KEY), Some(theirs));
        let lock = take_lock(&MemoryStorage::new(), "here")
            .await
            .expect("free lock");
        let own = MemoryStorage::new();
        own.set_object(layout::PRUNE_LOCK_KEY, lock.body());
        release_lock(&own, &lock).await;
        assert!(
            own.object(layout::PRUNE_LOCK_KEY).is_none(),
            "own lock kept"
        );
    }

    #[tokio::test]
    async fn a_long_prune_keeps_its_lock_fresh_and_stops_when_it_is_taken_over() {
        let storage = MemoryStorage::new();
        let lock = take_lock(&storage, "here").await.expect("free lock");
        // Five hours into a long prune: renewed, the lock is young again.
        storage.backdate(layout::PRUNE_LOCK_KEY, 5 * HOUR);
        renew_lock(&storage, &lock).await.expect("still ours");
        let refused = take_lock(&storage, "elsewhere").await;
        assert!(
            matches!(refused, Err(CatalogError::PruneLocked { minutes: 0, .. })),
            "{refused:?}"
        );
        let renewed = storage.object(layout::PRUNE_LOCK_KEY).expect("held");
        assert!(String::from_utf8_lossy(&renewed).contains("renewed_at"));
        // Another prune took it over: the renewal says so and leaves theirs in place.
        let theirs = br#"{"host":"elsewhere","pid":2}"#.to_vec();
        storage.set_object(layout::PRUNE_LOCK_KEY, theirs.clone());
        let lost = keep_lock(&storage, &lock, Duration::from_millis(1)).await;
        assert!(
            matches!(&lost, CatalogError::PruneLockLost { holder, .. } if holder.contains("elsewhere")),
            "{lost:?}"
        );
        assert_eq!(storage.object(layout::PRUNE_LOCK_KEY), Some(theirs));
        // A renewed lock is still released as ours.
        let own = MemoryStorage::new();
        let lock = take_lock(&own, "here").await.expect("free lock");
        renew_lock(&own, &lock).await.expect("ours");
        release_lock(&own, &lock).await;
        assert!(
            own.object(layout::PRUNE_LOCK_KEY).is_none(),
            "renewed lock kept"
        );
    }

    #[tokio::test]
    async fn a_failure_deleting_wal_leaves_every_kept_backup_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let memory = MemoryStorage::new();
        let packs = repository(&memory).await;
        let faulty = Faulty::builder(memory.clone())
            .fail_under(Op::Delete, layout::WAL_PREFIX, Fault::Rejected)
            .build();
        let failed = run(&faulty, dir.path(), &options(dir.path())).await;
        assert!(
            matches!(
                failed,
                Err(CatalogError::Repository(StorageError::Rejected { .. }))
            ),
            "{failed:?}"
        );
        assert!(faulty.injected() > 0);
        // The dropped backup went first, as a whole: manifest and metadata.
        assert!(memory.object(&layout::manifest_key("a-oldest")).is_none());
        assert!(memory.object(&layout::metadata_key("a-oldest")).is_none());
        // Nothing after the WAL step ran: every segment and every pack is still there.
        for seg in 1..=6 {
            assert!(memory.object(&wal_key(seg)).is_some(), "segment {seg}");
        }
        for pack in &packs {
            assert!(memory.object(pack).is_some(), "{pack}");
        }
        assert!(memory.object(layout::PRUNE_PENDING_KEY).is_none());
        for id in ["b-anchor", "c-newest"] {
            assert_whole(&memory, id).await;
        }
        assert!(memory.object(layout::PRUNE_LOCK_KEY).is_none(), "lock kept");
    }

    #[tokio::test]
    async fn a_backup_a_restore_holds_is_kept_with_all_wal_after_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = MemoryStorage::new();
        repository(&storage).await;
        storage::lease::take(&storage, "a-oldest", "restorer-7").await;
        let mut catalog = open_catalog(dir.path());
        let report = prune(&storage, &mut catalog, &options(dir.path()), |_| {})
            .await
            .expect("prune");
        let a = &report.plan.retention.decisions[0];
        assert_eq!(a.backup_id, "a-oldest");
        assert!(a.keep && a.reasons.contains(&Reason::InUse), "{a:?}");
        assert_eq!(
            report.outcome.map(|o| (o.backups, o.wal_files)),
            Some((0, 0))
        );
        assert_whole(&storage, "a-oldest").await;
        for seg in 1..=6 {
            assert!(storage.object(&wal_key(seg)).is_some(), "segment {seg}");
        }

        // A lease past its lifetime protects nothing.
        let dir = tempfile::tempdir().expect("tempdir");
        let memory = MemoryStorage::new();
        repository(&memory).await;
        storage::lease::take(&memory, "a-oldest", "restorer-7").await;
        memory.backdate(layout::LEASES_PREFIX, 25 * HOUR);
        let report = run(&memory, dir.path(), &options(dir.path()))
            .await
            .expect("prune");
        assert_eq!(report.outcome.map(|o| o.backups), Some(1));
        assert!(memory.object(&layout::manifest_key("a-oldest")).is_none());
        // ... and is deleted with it.
        assert!(
            memory
                .keys()
                .iter()
                .all(|k| !k.starts_with(layout::LEASES_PREFIX))
        );
    }

    #[tokio::test]
    async fn young_unreferenced_packs_stay_until_the_grace_period_is_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = MemoryStorage::new();
        let packs = repository(&storage).await;
        let options = options(dir.path());
        // The first prune finds the pack unreferenced; the second, within the hour, keeps it.
        for round in 0..2 {
            let report = run(&storage, dir.path(), &options).await.expect("prune");
            let outcome = report.outcome.expect("not a dry run");
            assert_eq!(outcome.packs_deleted, 0, "round {round}");
            assert_eq!(outcome.packs_waiting, 1, "round {round}");
            assert!(storage.object(&packs[0]).is_some(), "round {round}");
        }
        // Past the grace period (here: none), it goes; the kept backups' packs stay.
        let done = PruneOptions {
            grace: Duration::ZERO,
            ..options
        };
        let report = run(&storage, dir.path(), &done).await.expect("prune");
        assert_eq!(report.outcome.map(|o| o.packs_deleted), Some(1));
        assert!(storage.object(&packs[0]).is_none());
        assert!(storage.object(&packs[1]).is_some());
        assert!(storage.object(&packs[2]).is_some());
    }

    #[tokio::test]
    async fn a_dry_run_shows_the_plan_and_changes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = MemoryStorage::new();
        repository(&storage).await;
        let spool = dir.path().join("spool");
        std::fs::create_dir_all(&spool).expect("spool");
        let leftover = spool.join("000000010000000000000007.partial.4242");
        std::fs::write(&leftover, b"half a segment").expect("leftover");
        std::fs::File::options()
            .write(true)
            .open(&leftover)
            .and_then(|f| f.set_modified(SystemTime::now() - 2 * HOUR))
            .expect("age the leftover");
        let before = storage.keys();
        let options = PruneOptions {
            dry_run: true,
            spool_dir: Some(spool),
            ..options(dir.path())
        };
        let mut catalog = open_catalog(dir.path());
        let text = std::cell::RefCell::new(String::new());
        let report = prune(&storage, &mut catalog, &options, |plan| {
            *text.borrow_mut() = plan.to_string();
        })
        .await
        .expect("dry run");
        assert_eq!(storage.keys(), before, "a dry run changed the repository");
        assert!(report.outcome.is_none());
        assert!(leftover.exists(), "a dry run removed a file");
        let text = text.into_inner();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some(
                "retention: 1 daily, 0 weekly, 0 monthly, WAL for 1 days (dry run: nothing is deleted)"
            )
        );
        assert_eq!(
            lines.next(),
            Some(
                "backup                       service    kind  finished (UTC)       action  reasons"
            )
        );
        let a = lines.next().expect("a row");
        assert!(
            a.starts_with("a-oldest ") && a.ends_with("  delete  outside the policy"),
            "{a}"
        );
        let json = report.plan.to_json();
        assert_eq!(json["dry_run"], true);
        assert_eq!(json["backups"][0]["keep"], false);
        assert_eq!(json["backups"][1]["reasons"][0], "start of the PITR window");
        assert_eq!(json["backups"][2]["retention"], "1_day");
        assert_eq!(
            json["wal_keep"][0]["from_lsn"],
            Lsn(3 * SEGMENT + 40).to_string()
        );
        let said = report.housekeeping.expect("housekeeping");
        assert!(
            said[0].starts_with("would remove 1 temporary files left by interrupted runs"),
            "{said:?}"
        );
    }

    #[test]
    fn expired_logs_are_old_operation_logs_and_drill_reports_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = dir.path();
        let long_ago = SystemTime::now() - 800 * 24 * HOUR;
        for name in ["backup_1.log", "drill_1.json", "notes.txt", "fresh.log"] {
            std::fs::write(logs.join(name), b"x").expect("write");
            if name != "fresh.log" {
                std::fs::File::options()
                    .write(true)
                    .open(logs.join(name))
                    .and_then(|f| f.set_modified(long_ago))
                    .expect("age");
            }
        }
        std::os::unix::fs::symlink(logs.join("backup_1.log"), logs.join("link.log")).expect("link");
        let cutoff = jiff::Timestamp::now()
            .checked_sub(jiff::SignedDuration::from_hours(24 * 365))
            .expect("cutoff");
        let expired = expired_logs(logs, cutoff).expect("logs");
        assert_eq!(
            expired,
            [logs.join("backup_1.log"), logs.join("drill_1.json")]
        );
        assert!(
            expired_logs(&logs.join("missing"), cutoff)
                .expect("no logs")
                .is_empty()
        );
    }
}
