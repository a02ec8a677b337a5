//! `lifeline prune`: apply the retention policy. The plan is printed first (and is all that
//! `--dry-run` does); then, in this order, so that a crash at any point leaves every kept
//! backup whole: the manifests of deleted backups (a backup ceases to exist with its manifest),
//! the WAL no kept backup and no point in the PITR window needs, and finally the packs no
//! remaining manifest references and that are older than the grace period (a backup running
//! now writes its packs before its manifest; young unreferenced packs are its, so they stay).
//!
//! Then local housekeeping: temporary files that killed runs left in the local repository
//! and the `wal fetch` spool, once older than the same grace period (a live writer's are
//! younger), and operation logs and drill reports older than the longest retention window.

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use catalog::{RetentionPlan, RetentionPolicy, WalRange};
use storage::manifest::ClusterIdentity;
use storage::wal::{DEFAULT_SEGMENT_SIZE, WalFileName};
use storage::{Durability, PutMode, Storage, StorageExt, layout, repack};

use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Print the plan and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The plan as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: PruneArgs, settings: &Settings) -> Result<ExitCode> {
    // A prune that deletes is a writer: only the repository's owner (or root on its behalf).
    let storage = if args.dry_run {
        settings.repository().await?
    } else {
        settings.repository_for_writing().await?
    };
    if args.dry_run {
        let code = plan_and_apply(&args, storage.as_ref(), settings).await?;
        housekeeping(&args, settings)?;
        return Ok(code);
    }
    take_lock(storage.as_ref()).await?;
    let pruned = match plan_and_apply(&args, storage.as_ref(), settings).await {
        Ok(code) => housekeeping(&args, settings).map(|()| code),
        Err(e) => Err(e),
    };
    if let Err(e) = storage.delete(layout::PRUNE_LOCK_KEY).await {
        tracing::warn!(
            "{} not released ({e}): delete it before the next prune",
            layout::PRUNE_LOCK_KEY
        );
    }
    pruned
}

async fn plan_and_apply(
    args: &PruneArgs,
    storage: &dyn Storage,
    settings: &Settings,
) -> Result<ExitCode> {
    let mut catalog = settings.open_catalog()?;
    // The repository is the truth: plan from what it holds, not from a stale catalog.
    catalog::rebuild(storage, &mut catalog)
        .await
        .context("read the repository before planning")?;
    let backups = catalog.backups(None)?;
    let policy = settings.retention;
    let in_use = leased_backups(storage).await?;
    let plan = catalog::plan_retention(
        &backups,
        &policy,
        jiff::Timestamp::now(),
        &jiff::tz::TimeZone::system(),
        &in_use,
    );
    print_plan(args, &backups, &plan, &policy)?;
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    apply(storage, &mut catalog, settings, &plan).await?;
    Ok(ExitCode::SUCCESS)
}

/// A prune that has not released its lock after this long is taken to have died.
const LOCK_STALE: std::time::Duration = std::time::Duration::from_secs(6 * 3600);

/// One prune at a time: two would repack the same packs and overwrite each other's marks.
async fn take_lock(storage: &dyn Storage) -> Result<()> {
    let holder = serde_json::json!({
        "host": super::host_name(),
        "pid": std::process::id(),
        "taken_at": jiff::Timestamp::now(),
    });
    let body = serde_json::to_vec(&holder)?;
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
    let age = std::time::SystemTime::now()
        .duration_since(held.last_modified)
        .unwrap_or_default();
    let by = storage
        .get_bytes(key)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    if age < LOCK_STALE {
        bail!(
            "another prune holds {key} ({by}, {} min ago): wait for it to finish; if it died, delete that object from the repository (it is taken over after 6 h)",
            age.as_secs() / 60
        );
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

/// Delete what the plan does not keep, in the order that leaves every kept backup whole.
async fn apply(
    storage: &dyn Storage,
    catalog: &mut catalog::Catalog,
    settings: &Settings,
    plan: &RetentionPlan,
) -> Result<()> {
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
    let packs = sweep_packs(storage, settings).await?;
    // The retention class of what stays, in its .metadata, then the catalog from the result.
    for d in plan.decisions.iter().filter(|d| d.keep) {
        if let Some(class) = d.class() {
            set_retention_label(storage, &d.backup_id, class).await;
        }
    }
    catalog::rebuild(storage, catalog).await?;
    println!(
        "pruned: {} backups, {} WAL files, {} packs deleted; {} sparse packs repacked ({} MiB of live chunks copied); {} unreferenced packs wait out the {} h grace period",
        doomed.len(),
        wal.len(),
        packs.deleted,
        packs.repacked,
        packs.copied_bytes >> 20,
        packs.waiting,
        settings.prune_grace.as_secs() / 3600
    );
    Ok(())
}

fn print_plan(
    args: &PruneArgs,
    backups: &[catalog::BackupRecord],
    plan: &RetentionPlan,
    policy: &RetentionPolicy,
) -> Result<()> {
    let finished: BTreeMap<&str, String> = backups
        .iter()
        .map(|b| {
            let at = jiff::Timestamp::from_microsecond(b.finished_at_us)
                .map(|t| t.strftime("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default();
            (b.backup_id.as_str(), at)
        })
        .collect();
    if args.json {
        let value = serde_json::json!({
            "policy": {
                "daily": policy.daily, "weekly": policy.weekly,
                "monthly": policy.monthly, "wal_days": policy.wal_days,
            },
            "backups": plan.decisions.iter().map(|d| serde_json::json!({
                "backup_id": d.backup_id,
                "service": d.service,
                "kind": d.kind,
                "finished_at": finished.get(d.backup_id.as_str()),
                "keep": d.keep,
                "retention": d.class(),
                "reasons": d.reasons.iter().map(ToString::to_string).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "wal_keep": plan.wal_keep.iter().map(|r| serde_json::json!({
                "system_identifier": r.system_identifier.to_string(),
                "from_lsn": storage::wal::Lsn(r.start_lsn).to_string(),
                "to_lsn": r.end_lsn.map(|l| storage::wal::Lsn(l).to_string()),
            })).collect::<Vec<_>>(),
            "dry_run": args.dry_run,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "retention: {} daily, {} weekly, {} monthly, WAL for {} days{}",
        policy.daily,
        policy.weekly,
        policy.monthly,
        policy.wal_days,
        if args.dry_run {
            " (dry run: nothing is deleted)"
        } else {
            ""
        }
    );
    println!(
        "{:<28} {:<10} {:<5} {:<19}  {:<6}  reasons",
        "backup", "service", "kind", "finished (UTC)", "action"
    );
    for d in &plan.decisions {
        let reasons: Vec<String> = d.reasons.iter().map(ToString::to_string).collect();
        println!(
            "{:<28} {:<10} {:<5} {:<19}  {:<6}  {}",
            d.backup_id,
            d.service,
            d.kind,
            finished
                .get(d.backup_id.as_str())
                .map_or("", String::as_str),
            if d.keep { "keep" } else { "delete" },
            if reasons.is_empty() {
                "outside the policy".to_string()
            } else {
                reasons.join(", ")
            }
        );
    }
    Ok(())
}

/// How long a restore's lease protects its backup: the restore itself, then PostgreSQL's
/// recovery fetching WAL after lifeline has exited.
const LEASE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Backups a restore took a lease on within the lease lifetime.
async fn leased_backups(storage: &dyn Storage) -> Result<HashSet<String>> {
    let cutoff = std::time::SystemTime::now()
        .checked_sub(LEASE_LIFETIME)
        .unwrap_or(std::time::UNIX_EPOCH);
    Ok(storage
        .list(layout::LEASES_PREFIX)
        .await?
        .into_iter()
        .filter(|m| m.last_modified >= cutoff)
        .filter_map(|m| layout::parse_lease_key(&m.key).map(str::to_string))
        .collect())
}

/// WAL segments (and backup-history files) wholly outside every range to keep. History files
/// are tiny and recovery needs them to follow timelines: they always stay.
async fn wal_to_delete(storage: &dyn Storage, keep: &[WalRange]) -> Result<Vec<String>> {
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
async fn sweep_packs(storage: &dyn Storage, settings: &Settings) -> Result<repack::PackSweep> {
    let sweep = repack::sweep_packs(
        storage,
        settings.prune_grace,
        settings.repack_unused_percent,
    )
    .await
    .context("repack and sweep the packs")?;
    for (backup_id, checksum) in &sweep.rewritten {
        let checksum = format!("blake3:{}", checksum.to_hex());
        catalog::label_backup(storage, backup_id, &[("checksum", checksum.as_str())]).await?;
    }
    Ok(sweep)
}

/// Record the retention class in the backup's `.metadata` (the catalog reads it back).
async fn set_retention_label(storage: &dyn Storage, backup_id: &str, class: &str) {
    if let Err(e) = catalog::label_backup(storage, backup_id, &[("retention", class)]).await {
        tracing::warn!("retention class of {backup_id} not recorded: {e}");
    }
}

/// Remove (or with `--dry-run` list) the temporary files of killed runs older than the grace
/// period and the logs older than the longest retention window. With `--json` the plan stays
/// the only thing on standard output and these lines go to the log.
fn housekeeping(args: &PruneArgs, settings: &Settings) -> Result<()> {
    let mut lines = Vec::new();
    let grace = settings.prune_grace;
    let grace_h = grace.as_secs() / 3600;
    let leftovers = super::verify::leftovers(settings)?;
    let (due, young): (Vec<_>, Vec<_>) = leftovers.into_iter().partition(|l| l.age >= grace);
    let size =
        |l: &[storage::leftovers::Leftover]| super::verify::mib(storage::leftovers::total_size(l));
    if args.dry_run {
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
        let removal = storage::leftovers::remove_older_than(&due, grace)
            .context("remove temporary files left by interrupted runs")?;
        if removal.removed > 0 {
            lines.push(format!(
                "removed {} temporary files left by interrupted runs ({} MiB)",
                removal.removed,
                super::verify::mib(removal.removed_bytes)
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

    let cutoff = settings
        .retention
        .log_cutoff(jiff::Timestamp::now(), &jiff::tz::TimeZone::system());
    let logs = match settings.backup_dir() {
        Ok(dir) => expired_logs(&dir.join("logs"), cutoff)?,
        Err(_) => Vec::new(),
    };
    if !logs.is_empty() {
        let since = cutoff.strftime("%Y-%m-%d");
        if args.dry_run {
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
                    Err(e) => {
                        return Err(e)
                            .with_context(|| format!("remove the old log {}", path.display()));
                    }
                }
            }
            lines.push(format!(
                "removed {removed} operation logs and drill reports older than {since} (the \
                 longest retention window)"
            ));
        }
    }
    for line in lines {
        if args.json {
            tracing::info!("{line}");
        } else {
            println!("{line}");
        }
    }
    Ok(())
}

/// Operation logs (`*.log`) and drill reports (`drill_*.json`) in `dir` last modified before
/// `cutoff`. Only regular files directly in `dir`; links are left alone.
fn expired_logs(dir: &std::path::Path, cutoff: jiff::Timestamp) -> Result<Vec<std::path::PathBuf>> {
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
        Err(e) => return Err(e).with_context(|| format!("list the logs in {}", dir.display())),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let is_log = std::path::Path::new(name)
            .extension()
            .is_some_and(|e| e == "log")
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
