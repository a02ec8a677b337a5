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
    // Why --full has no row counts to compare with, when it has none.
    let (recorded, no_counts) = match depth {
        Depth::Quick => (None, None),
        _ => match latest_recorded_rows(settings).await {
            Ok(Some(rows)) => (Some(rows), None),
            Ok(None) => (
                None,
                Some("no base backup in the catalog recorded row counts: run `lifeline backup postgres` (or `lifeline catalog rebuild`)".to_string()),
            ),
            Err(e) => (None, Some(format!("the backup's row counts cannot be read: {e:#}"))),
        },
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
    if let Some(why) = no_counts {
        report.checks.push(Check::fail("tables", why));
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
/// after the newest backup; else by the newest complete base backup; None when there is none.
async fn latest_recorded_rows(settings: &Settings) -> anyhow::Result<Option<RecordedRows>> {
    let catalog = settings.open_catalog()?;
    let backups = catalog.backups(Some("postgresql"))?;
    let Some(newest) = backups
        .iter()
        .rfind(|b| b.kind == "base" && b.state == catalog::BackupState::Complete)
    else {
        return Ok(None);
    };
    let backup_id = match super::status_file::last_restore(settings) {
        Some((id, at))
            if at.as_microsecond() > newest.finished_at_us
                && backups.iter().any(|b| b.backup_id == id) =>
        {
            id
        }
        _ => newest.backup_id.clone(),
    };
    let storage = settings.repository().await?;
    let manifest = restore::read_manifest(storage.as_ref(), &backup_id)
        .await
        .map_err(|e| anyhow::anyhow!("{backup_id}: {e}"))?;
    Ok(Some(recorded_rows(&manifest)))
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
    let manifest = match load_stream_manifest(settings, &backup.backup_id).await {
        Ok(m) => m,
        Err(e) => {
            return Some(Check::fail(
                "Redis keys",
                format!(
                    "{node}: {total} keys; the counts of backup {} cannot be read: {e:#}",
                    backup.backup_id
                ),
            ));
        }
    };
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

async fn load_stream_manifest(
    settings: &Settings,
    backup_id: &str,
) -> anyhow::Result<storage::manifest::StreamManifest> {
    let storage = settings.repository().await?;
    Ok(storage::manifest::StreamManifest::load(storage.as_ref(), backup_id).await?)
}

fn counts(keys: &BTreeMap<u32, u64>) -> String {
    keys.iter()
        .map(|(db, n)| format!("db{db}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}
