//! Is the platform back? PostgreSQL and its tables against what the last backup recorded, Redis
//! and its keys, the configured HTTP checks and workers, and for smoke tests a login: the
//! orchestration of `lifeline verify-recovery` and of a data-center failover's last check.

use std::collections::BTreeMap;
use std::path::Path;

use crate::checks::{self, Check, RecordedRows, Report, VerifyConfig};
use crate::repository::read_catalog;
use crate::{OpsError, Redis, Repository, pg, status_file};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Depth {
    /// Reachability only: PostgreSQL, the database, Redis.
    Quick,
    /// Also tables and row counts against the last backup, Redis keys, HTTP and worker checks.
    Full,
    /// Everything in `Full` plus the configured login flow.
    Smoke,
}

impl Depth {
    pub fn name(self) -> &'static str {
        match self {
            Depth::Quick => "quick",
            Depth::Full => "full",
            Depth::Smoke => "smoke-test",
        }
    }
}

/// What `verify` checks, and where.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub depth: Depth,
    /// Staging: check the staging database (and staging URLs) instead of production.
    pub target: restore::Target,
    pub database: pg::Server,
    /// The database `staging` checks, on the same server.
    pub staging_database: String,
    pub checks: VerifyConfig,
    pub redis: Redis,
    /// Redis is part of the platform even when no backup of it is recorded.
    pub redis_configured: bool,
}

impl VerifyOptions {
    fn tolerance_percent(&self) -> f64 {
        self.checks.row_count_tolerance_percent.unwrap_or(10.0)
    }
}

pub async fn verify(opts: &VerifyOptions, repo: &impl Repository) -> Report {
    let depth = opts.depth;
    let mut report = Report::new(depth.name(), opts.target.as_str());
    let mut db = opts.database.clone();
    let staging = opts.target == restore::Target::Staging;
    if staging {
        db.config.dbname(&opts.staging_database);
    }
    // Why --full has no row counts to compare with, when it has none.
    let (recorded, no_counts) = match depth {
        Depth::Quick => (None, None),
        _ => match latest_recorded_rows(repo).await {
            Ok(Some(rows)) => (Some(rows), None),
            Ok(None) => (
                None,
                Some("no base backup in the catalog recorded row counts: run `lifeline backup postgres` (or `lifeline catalog rebuild`)".to_string()),
            ),
            Err(e) => (
                None,
                Some(format!("the backup's row counts cannot be read: {}", e.chain())),
            ),
        },
    };
    report.checks.extend(
        checks::postgres(
            &db,
            &db.address(),
            recorded.as_ref(),
            opts.tolerance_percent(),
        )
        .await,
    );
    if let Some(why) = no_counts {
        report.checks.push(Check::fail("tables", why));
    }
    if let Some(check) = redis_check(opts, repo).await {
        report.checks.push(check);
    }
    if depth >= Depth::Full {
        for check in &opts.checks.http {
            report.checks.push(checks::http(check, staging).await);
        }
        for worker in &opts.checks.worker {
            report.checks.push(checks::worker(worker).await);
        }
    }
    if depth == Depth::Smoke {
        report.checks.push(match &opts.checks.login {
            Some(flow) => checks::login(flow).await,
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
async fn latest_recorded_rows(repo: &impl Repository) -> Result<Option<RecordedRows>, OpsError> {
    let backup_dir = repo.backup_dir().map(Path::to_path_buf);
    let chosen = read_catalog(repo, move |c| -> Result<_, OpsError> {
        let backups = c?.backups(Some(storage::Service::Postgresql))?;
        let Some(newest) = backups
            .iter()
            .rfind(|b| b.kind == storage::BackupKind::Base)
        else {
            return Ok(None);
        };
        Ok(Some(
            match backup_dir.as_deref().and_then(status_file::last_restore) {
                Some((id, at))
                    if at.as_microsecond() > newest.finished_at_us
                        && backups.iter().any(|b| b.backup_id == id) =>
                {
                    id
                }
                _ => newest.backup_id.clone(),
            },
        ))
    });
    let Some(backup_id) = chosen.await?? else {
        return Ok(None);
    };
    let storage = repo.open().await?;
    // The outline: the row counts are all this needs, and no block list is held.
    let outline = restore::read_outline(storage.as_ref(), &backup_id, 0)
        .await
        .map_err(|e| OpsError::Manifest {
            message: format!("{backup_id}: {e}"),
        })?;
    Ok(Some(recorded_rows(&outline.manifest)))
}

/// What a base backup's manifest recorded about its tables.
pub fn recorded_rows(manifest: &storage::manifest::BackupManifest) -> RecordedRows {
    RecordedRows {
        backup_id: manifest.backup_id.clone(),
        exact: manifest.row_counts.clone(),
        estimated: manifest.row_estimates.clone(),
    }
}

/// Redis reachable (and from `Full` on its keys against the last backup), when Redis is part
/// of the platform: configured, or backed up before.
async fn redis_check(opts: &VerifyOptions, repo: &impl Repository) -> Option<Check> {
    let recorded = read_catalog(repo, |c| {
        c.ok()?
            .backups(Some(storage::Service::Redis))
            .ok()?
            .into_iter()
            .next_back()
    })
    .await
    .ok()
    .flatten();
    if !opts.redis_configured && recorded.is_none() {
        return None;
    }
    let node = opts.redis.node();
    let keys = match opts.redis.keys().await {
        Ok(keys) => keys,
        Err(e) => return Some(Check::fail("Redis reachable", format!("{node}: {e}"))),
    };
    let total: u64 = keys.values().sum();
    let Some(backup) = recorded.filter(|_| opts.depth >= Depth::Full) else {
        return Some(Check::pass(
            "Redis reachable",
            format!("{node}, {total} keys"),
        ));
    };
    let manifest = match load_stream_manifest(repo, &backup.backup_id).await {
        Ok(m) => m,
        Err(e) => {
            return Some(Check::fail(
                "Redis keys",
                format!(
                    "{node}: {total} keys; the counts of backup {} cannot be read: {}",
                    backup.backup_id,
                    e.chain()
                ),
            ));
        }
    };
    let want: u64 = manifest.counts.values().sum();
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
    Some(if drift <= opts.tolerance_percent() {
        Check::pass("Redis keys", detail)
    } else {
        Check::fail("Redis keys", format!("{detail}: {drift:.1}% fewer"))
    })
}

async fn load_stream_manifest(
    repo: &impl Repository,
    backup_id: &str,
) -> Result<storage::manifest::StreamManifest, OpsError> {
    let storage = repo.open().await?;
    Ok(storage::manifest::StreamManifest::load(storage.as_ref(), backup_id).await?)
}

fn counts(keys: &BTreeMap<u32, u64>) -> String {
    keys.iter()
        .map(|(db, n)| format!("db{db}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::Scratch;

    /// PostgreSQL and Redis where nothing answers (port 1 refuses at once).
    fn options(depth: Depth, redis_configured: bool) -> VerifyOptions {
        let mut config = pg::Config::new();
        config.host("127.0.0.1").port(1).user("app").dbname("shop");
        VerifyOptions {
            depth,
            target: restore::Target::Production,
            database: pg::Server {
                host: "127.0.0.1".into(),
                port: 1,
                config,
                tls: Default::default(),
            },
            staging_database: "shop_staging".into(),
            checks: VerifyConfig::default(),
            redis: Redis {
                host: "127.0.0.1".into(),
                port: 1,
                count_keys: std::sync::Arc::new(|| Err("connection refused".into())),
            },
            redis_configured,
        }
    }

    fn names(report: &Report) -> Vec<(&str, bool)> {
        report
            .checks
            .iter()
            .map(|c| (c.name.as_str(), c.passed))
            .collect()
    }

    #[tokio::test]
    async fn redis_is_checked_only_when_it_is_part_of_the_platform() {
        let scratch = Scratch::new();
        let without = verify(&options(Depth::Quick, false), &scratch).await;
        assert!(!without.passed());
        assert!(without.checks.iter().all(|c| !c.name.contains("Redis")));
        let with = verify(&options(Depth::Quick, true), &scratch).await;
        let redis = with
            .checks
            .iter()
            .find(|c| c.name == "Redis reachable")
            .expect("a Redis check");
        assert!(!redis.passed);
        assert_eq!(redis.detail, "Redis 127.0.0.1:1: connection refused");
    }

    #[tokio::test]
    async fn full_without_a_recorded_backup_says_how_to_record_row_counts() {
        let scratch = Scratch::new();
        let report = verify(&options(Depth::Full, false), &scratch).await;
        assert_eq!(report.mode, "full");
        assert_eq!(report.target, "production");
        let tables = report
            .checks
            .iter()
            .find(|c| c.name == "tables")
            .expect("a tables check");
        assert!(!tables.passed);
        assert_eq!(
            tables.detail,
            "no base backup in the catalog recorded row counts: run `lifeline backup postgres` (or `lifeline catalog rebuild`)"
        );
        assert!(!names(&report).contains(&("login flow", false)));
    }

    #[tokio::test]
    async fn a_smoke_test_needs_a_login_flow() {
        let scratch = Scratch::new();
        let mut opts = options(Depth::Smoke, false);
        opts.target = restore::Target::Staging;
        let report = verify(&opts, &scratch).await;
        assert_eq!(
            (report.mode.as_str(), report.target.as_str()),
            ("smoke-test", "staging")
        );
        let login = report.checks.last().expect("checks");
        assert_eq!(
            (login.name.as_str(), login.passed, login.detail.as_str()),
            (
                "login flow",
                false,
                "no [verify.login] in the configuration: a smoke test needs one"
            )
        );
    }
}
