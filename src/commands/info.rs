use std::process::ExitCode;

use anyhow::Result;
use catalog::BackupRecord;
use storage::wal::Lsn;

use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[arg(long, value_parser = ["postgresql", "redis"])]
    service: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long)]
    json: bool,
}

fn time(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us).map_or_else(
        |_| "?".into(),
        |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string(),
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1 << 20))
}

fn backup_json(b: &BackupRecord) -> serde_json::Value {
    serde_json::json!({
        "backup_id": b.backup_id,
        "service": b.service,
        "kind": b.kind,
        "state": format!("{:?}", b.state).to_lowercase(),
        "system_identifier": b.system_identifier.to_string(),
        "timeline": b.timeline,
        "start_lsn": Lsn(b.start_lsn).to_string(),
        "stop_lsn": Lsn(b.stop_lsn).to_string(),
        "start_wal": b.start_wal,
        "stop_wal": b.stop_wal,
        "started_at": jiff::Timestamp::from_microsecond(b.started_at_us).ok(),
        "finished_at": jiff::Timestamp::from_microsecond(b.finished_at_us).ok(),
        "duration_seconds": (b.finished_at_us - b.started_at_us) as f64 / 1e6,
        "size_bytes": b.size_bytes,
        "new_bytes": b.new_bytes,
        "files": b.file_count,
        "retention": b.retention,
        "restorability": b.restorability,
    })
}

pub fn list(args: ListArgs, settings: &Settings) -> Result<ExitCode> {
    let backups = settings.open_catalog()?.backups(args.service.as_deref())?;
    if args.json {
        let all: Vec<_> = backups.iter().map(backup_json).collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(ExitCode::SUCCESS);
    }
    if backups.is_empty() {
        println!("no backups yet: run `lifeline backup postgres`");
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<26} {:<10} {:<5} {:<20} {:>8} {:>10} {:>9} {:>3} {:<12} {:<9} RESTORABILITY",
        "BACKUP",
        "SERVICE",
        "KIND",
        "STARTED (UTC)",
        "SECONDS",
        "SIZE MiB",
        "NEW MiB",
        "TL",
        "STOP LSN",
        "RETENTION",
    );
    for b in &backups {
        println!(
            "{:<26} {:<10} {:<5} {:<20} {:>8.1} {:>10} {:>9} {:>3} {:<12} {:<9} {}",
            b.backup_id,
            b.service,
            b.kind,
            time(b.started_at_us),
            (b.finished_at_us - b.started_at_us) as f64 / 1e6,
            mib(b.size_bytes),
            mib(b.new_bytes),
            b.timeline,
            Lsn(b.stop_lsn).to_string(),
            b.retention,
            b.restorability
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(args: StatusArgs, settings: &Settings) -> Result<ExitCode> {
    let storage = settings.repository().await?;
    let catalog = settings.open_catalog()?;
    let backups = catalog.backups(None)?;
    let last_wal = catalog.last_wal()?;
    let (wal_count, wal_bytes) = catalog.wal_totals()?;
    let listing = storage.list("").await?;
    let repository_bytes: u64 = listing.iter().map(|m| m.size).sum();
    let chains = wal_chains(storage.as_ref(), &listing, &backups).await;
    let now = jiff::Timestamp::now().as_microsecond();
    let mut last_by_kind: Vec<&BackupRecord> = Vec::new();
    for b in backups.iter().rev() {
        if !last_by_kind
            .iter()
            .any(|l| l.service == b.service && l.kind == b.kind)
        {
            last_by_kind.push(b);
        }
    }
    let wal_age = last_wal
        .as_ref()
        .map(|w| (now - w.archived_at_us) as f64 / 1e6);
    if args.json {
        let value = serde_json::json!({
            "repository": storage.describe(),
            "repository_bytes": repository_bytes,
            "backups": backups.len(),
            "last_backups": last_by_kind.iter().map(|b| backup_json(b)).collect::<Vec<_>>(),
            "last_wal": last_wal.as_ref().map(|w| serde_json::json!({
                "name": w.name,
                "archived_at": jiff::Timestamp::from_microsecond(w.archived_at_us).ok(),
                "age_seconds": wal_age,
            })),
            "wal_files": wal_count,
            "wal_bytes": wal_bytes,
            "wal_chain": chain_json(&chains),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "repository: {} ({} MiB)",
        storage.describe(),
        mib(repository_bytes)
    );
    if last_by_kind.is_empty() {
        println!("backups: none yet; run `lifeline backup postgres`");
    }
    for b in &last_by_kind {
        println!(
            "last {} {} backup: {} finished {} UTC ({} MiB, {})",
            b.service,
            b.kind,
            b.backup_id,
            time(b.finished_at_us),
            mib(b.size_bytes),
            b.restorability
        );
    }
    match (&last_wal, wal_age) {
        (Some(w), Some(age)) => println!(
            "last archived WAL: {} at {} UTC, {:.0} s ago (the RPO now); {} WAL files, {} MiB",
            w.name,
            time(w.archived_at_us),
            age,
            wal_count,
            mib(wal_bytes)
        ),
        _ => println!("last archived WAL: none; set archive_command = 'lifeline wal push %p'"),
    }
    println!("{}", chain_line(&chains));
    println!("backups in the catalog: {}", backups.len());
    Ok(ExitCode::SUCCESS)
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

/// Walk the WAL chains of the repository's cluster. The WAL comes from the repository listing
/// status already makes (not the catalog, which still lists a segment lost from the repository);
/// where they start comes from the catalog's oldest complete base backup.
async fn wal_chains(
    storage: &dyn storage::Storage,
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
        .filter(|b| {
            b.system_identifier == sysid
                && b.kind == "base"
                && b.service == "postgresql"
                && b.state == catalog::BackupState::Complete
        })
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

fn chain_json(chains: &Chains) -> serde_json::Value {
    match chains {
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

fn chain_line(chains: &Chains) -> String {
    match chains {
        Chains::NotApplicable => "WAL chain: not checked (no base backup yet)".into(),
        Chains::Checked { from, chains } if chains.is_clean() => {
            format!("WAL chain: whole from the oldest base backup ({from}) to the newest segment")
        }
        Chains::Checked { chains, .. } => {
            let first = chains.gaps.first().map_or_else(
                || "no segment, but a history file".to_string(),
                |g| format!("{} on timeline {}", g.first_missing, g.timeline),
            );
            let histories = match chains.missing_histories.len() {
                0 => String::new(),
                n => format!(" and {n} history file(s)"),
            };
            format!(
                "WAL gap: first missing {first}; {} segment(s){histories} missing in all. \
                 Recovery across the gap stops there: `lifeline verify` names each one",
                chains.missing_segments(),
            )
        }
        Chains::Unreadable(e) => format!("WAL chain: not checked: {e}"),
    }
}
