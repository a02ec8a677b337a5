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
    let repository_bytes: u64 = storage.list("").await?.iter().map(|m| m.size).sum();
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
    println!("backups in the catalog: {}", backups.len());
    Ok(ExitCode::SUCCESS)
}
