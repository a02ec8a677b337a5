//! `lifeline verify-recovery --quick|--full|--smoke-test [--target staging] [--json]`: is the
//! platform back? PostgreSQL and its tables against what the last backup recorded, Redis and
//! its keys, the configured HTTP checks and workers, and for smoke tests a login.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Result;
use ops::{Check, RecordedRows, Report};

use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct VerifyRecoveryArgs {
    /// Reachability only: PostgreSQL, the database, Redis.
    #[arg(long, conflicts_with_all = ["full", "smoke_test"])]
    quick: bool,
    /// Also tables and row counts against the last backup, Redis keys, HTTP and worker checks.
    #[arg(long, conflicts_with = "smoke_test")]
    full: bool,
    /// Everything in --full plus the configured login flow.
    #[arg(long)]
    smoke_test: bool,
    /// Check the staging database (and staging URLs) instead of production.
    #[arg(long, value_parser = ["production", "staging"], default_value = "production")]
    target: String,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Depth {
    Quick,
    Full,
    Smoke,
}

impl Depth {
    fn name(self) -> &'static str {
        match self {
            Depth::Quick => "quick",
            Depth::Full => "full",
            Depth::Smoke => "smoke-test",
        }
    }
}

pub async fn run(args: VerifyRecoveryArgs, settings: &Settings) -> Result<ExitCode> {
    let depth = if args.smoke_test {
        Depth::Smoke
    } else if args.full {
        Depth::Full
    } else {
        Depth::Quick
    };
    let staging = args.target == "staging";
    let report = verify(settings, depth, staging).await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.text());
    }
    tracing::info!(target: "lifeline::report", "\n{}", report.text());
    if report.passed() {
        return Ok(ExitCode::SUCCESS);
    }
    super::notify(
        settings,
        "verify-recovery",
        false,
        &format!(
            "{} of {} checks failed ({} {})",
            report.failures().len(),
            report.checks.len(),
            depth.name(),
            args.target
        ),
        &report.text(),
    )
    .await;
    Ok(ExitCode::FAILURE)
}

pub async fn verify(settings: &Settings, depth: Depth, staging: bool) -> Report {
    let mut report = Report::new(depth.name(), if staging { "staging" } else { "production" });
    let mut db = settings.db.clone();
    if staging {
        db.dbname = settings.staging_db.clone();
    }
    let recorded = if depth >= Depth::Full {
        latest_recorded_rows(settings).await
    } else {
        None
    };
    let node = format!("{}:{}", db.host, db.port);
    report.checks.extend(
        ops::checks::postgres(
            &db.pg_config(),
            &node,
            recorded.as_ref(),
            settings
                .ops
                .verify
                .row_count_tolerance_percent
                .unwrap_or(10.0),
        )
        .await,
    );
    if depth >= Depth::Full && recorded.is_none() {
        report.checks.push(Check::fail(
            "tables",
            "no base backup in the catalog recorded row counts: run `lifeline backup postgres` (or `lifeline catalog rebuild`)",
        ));
    }
    if let Some(check) = redis_check(settings, depth).await {
        report.checks.push(check);
    }
    if depth >= Depth::Full {
        for check in &settings.ops.verify.http {
            report.checks.push(ops::checks::http(check, staging).await);
        }
        for worker in &settings.ops.verify.worker {
            report.checks.push(ops::checks::worker(worker).await);
        }
    }
    if depth == Depth::Smoke {
        report.checks.push(match &settings.ops.verify.login {
            Some(flow) => ops::checks::login(flow).await,
            None => Check::fail(
                "login flow",
                "no [verify.login] in the configuration: a smoke test needs one",
            ),
        });
    }
    report
}

/// The row counts recorded by the backup the server was restored from, when a restore ran
/// after the newest backup; else by the newest complete base backup.
async fn latest_recorded_rows(settings: &Settings) -> Option<RecordedRows> {
    let catalog = settings.open_catalog().ok()?;
    let backups = catalog.backups(Some("postgresql")).ok()?;
    let newest = backups
        .iter()
        .rfind(|b| b.kind == "base" && b.state == catalog::BackupState::Complete)?;
    let backup_id = match super::status_file::last_restore(settings) {
        Some((id, at))
            if at.as_microsecond() > newest.finished_at_us
                && backups.iter().any(|b| b.backup_id == id) =>
        {
            id
        }
        _ => newest.backup_id.clone(),
    };
    let storage = settings.repository().await.ok()?;
    let manifest = restore::read_manifest(storage.as_ref(), &backup_id)
        .await
        .ok()?;
    Some(recorded_rows(&manifest))
}

pub fn recorded_rows(manifest: &storage::manifest::BackupManifest) -> RecordedRows {
    RecordedRows {
        backup_id: manifest.backup_id.clone(),
        exact: manifest.row_counts.clone(),
        estimated: manifest.row_estimates.clone(),
    }
}

/// Redis reachable (and with --full its keys against the last RDB backup), when Redis is part
/// of the platform: configured, or backed up before.
async fn redis_check(settings: &Settings, depth: Depth) -> Option<Check> {
    let recorded = settings.open_catalog().ok().and_then(|c| {
        c.backups(Some("redis"))
            .ok()?
            .into_iter()
            .rfind(|b| b.state == catalog::BackupState::Complete)
    });
    if !settings.ops.redis_configured && recorded.is_none() {
        return None;
    }
    let redis = settings.redis.clone();
    let node = format!("Redis {}:{}", redis.host, redis.port);
    let keys = tokio::task::spawn_blocking(move || archiver::keyspace(&redis)).await;
    let keys = match keys {
        Ok(Ok(keys)) => keys,
        Ok(Err(e)) => return Some(Check::fail("Redis reachable", format!("{node}: {e}"))),
        Err(e) => return Some(Check::fail("Redis reachable", e.to_string())),
    };
    let total: u64 = keys.values().sum();
    let Some(backup) = recorded.filter(|_| depth >= Depth::Full) else {
        return Some(Check::pass(
            "Redis reachable",
            format!("{node}, {total} keys"),
        ));
    };
    let storage = settings.repository().await.ok()?;
    let manifest = storage::manifest::StreamManifest::load(storage.as_ref(), &backup.backup_id)
        .await
        .ok()?;
    let want: u64 = manifest.counts.values().sum();
    let tolerance = settings
        .ops
        .verify
        .row_count_tolerance_percent
        .unwrap_or(10.0);
    // Keys written since the backup are normal; keys missing beyond the tolerance are a loss.
    let drift = if want == 0 {
        0.0
    } else {
        (want.saturating_sub(total) as f64) * 100.0 / want as f64
    };
    let detail = format!(
        "{node}: {total} keys ({}), backup {} recorded {want}",
        counts(&keys),
        backup.backup_id
    );
    Some(if drift <= tolerance {
        Check::pass("Redis keys", detail)
    } else {
        Check::fail("Redis keys", format!("{detail}: {drift:.1}% fewer"))
    })
}

fn counts(keys: &BTreeMap<u32, u64>) -> String {
    keys.iter()
        .map(|(db, n)| format!("db{db}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}
