//! `lifeline check`: whether archiving works end to end, now, rather than finding out from a
//! backup that waits for its WAL and fails. One `[PASS]`/`[FAIL]` line per check, with the fix.
//!
//! The checks: the configuration was read; the repository is reachable, writable and its
//! owner's; the server's system identifier is the repository's; `archive_mode` is on and
//! `archive_command` runs lifeline's `wal push` (into this repository when it names one); a
//! forced WAL switch whose segment reaches the repository within `check-timeout`; the
//! archiver's failures (`pg_stat_archiver`); the open-file limit.

use std::time::{Duration, Instant};

use storage::{Durability, PutMode, Storage, StorageExt, layout};

use crate::checks::{Check, Report};
use crate::{Settings, pg};

/// Below this many open files a backup of many small files, or a restore, may fail.
const MIN_OPEN_FILES: u64 = 1024;

/// Run every check; a check that cannot run (the server is down) fails with why.
pub async fn run(settings: &Settings, server: &pg::Server) -> Report {
    let mut report = Report::new("check", &server.address());
    report.checks.push(configuration(settings));
    let storage = repository(settings, &mut report).await;
    match pg::connect(server, &server.address(), Duration::from_secs(10)).await {
        Ok(client) => {
            postgres(settings, storage.as_deref(), &client, &mut report).await;
        }
        Err(e) => report.checks.push(Check::fail(
            "PostgreSQL reachable",
            format!(
                "{e}: set DB_HOST, DB_PORT, DB_USER, DB_PASSWORD (or db-* in the configuration)"
            ),
        )),
    }
    report.checks.push(open_files());
    crate::metrics::write_textfile(settings, Some(server)).await;
    report
}

fn configuration(settings: &Settings) -> Check {
    let from = settings.config_file.as_ref().map_or_else(
        || "the environment and flags".into(),
        |f| f.display().to_string(),
    );
    Check::pass("configuration", format!("read from {from}"))
}

/// The repository opened for writing, a probe object written, read back and removed, and
/// (local) its owner.
async fn repository(
    settings: &Settings,
    report: &mut Report,
) -> Option<std::sync::Arc<dyn Storage>> {
    let storage = match settings.repository_for_writing().await {
        Ok(storage) => storage,
        Err(e) => {
            report
                .checks
                .push(Check::fail("repository writable", crate::error::chain(&e)));
            return None;
        }
    };
    let key = format!(
        "{}{}.{}",
        layout::CHECK_PREFIX,
        storage::lease::host_name(),
        std::process::id()
    );
    let probe = b"lifeline check".to_vec();
    let written = async {
        storage
            .put_bytes(
                &key,
                probe.clone(),
                PutMode::Overwrite,
                Durability::Immediate,
            )
            .await?;
        let back = storage.get_bytes(&key).await?;
        storage.delete(&key).await?;
        Ok::<bool, storage::StorageError>(back == probe)
    }
    .await;
    report.checks.push(match written {
        Ok(true) => Check::pass(
            "repository writable",
            format!(
                "{}: a probe was written durably, read back and removed",
                storage.describe()
            ),
        ),
        Ok(false) => Check::fail(
            "repository writable",
            format!(
                "{}: a probe read back differs from what was written",
                storage.describe()
            ),
        ),
        Err(e) => Check::fail(
            "repository writable",
            format!(
                "{}: {}; check the permissions, the disk or the bucket policy",
                storage.describe(),
                storage::error_chain(&e)
            ),
        ),
    });
    if let Some(dir) = settings.local_repository() {
        report.checks.push(owner(&dir));
    }
    Some(storage)
}

fn owner(dir: &std::path::Path) -> Check {
    use std::os::unix::fs::MetadataExt;
    let me = rustix::process::geteuid().as_raw();
    match std::fs::metadata(dir) {
        Ok(meta) if meta.uid() == me => Check::pass(
            "repository owner",
            format!(
                "{} belongs to uid {me}, which lifeline runs as",
                dir.display()
            ),
        ),
        Ok(meta) => Check::fail(
            "repository owner",
            format!(
                "{} belongs to uid {}, lifeline runs as {me}: run lifeline as the owner (runuser -u postgres -- lifeline ...)",
                dir.display(),
                meta.uid()
            ),
        ),
        Err(e) => Check::fail("repository owner", format!("{}: {e}", dir.display())),
    }
}

async fn postgres(
    settings: &Settings,
    storage: Option<&dyn Storage>,
    client: &pg::Client,
    report: &mut Report,
) {
    let sysid = match query_text(
        client,
        "SELECT system_identifier::text FROM pg_control_system()",
    )
    .await
    {
        Ok(text) => text.parse::<u64>().ok(),
        Err(e) => {
            report.checks.push(Check::fail("PostgreSQL reachable", e));
            return;
        }
    };
    // Whether the connection is encrypted is worth seeing: prefer falls back to plain text.
    let tls = query_text(
        client,
        "SELECT coalesce((SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl), \
         'no TLS')",
    )
    .await
    .unwrap_or_else(|_| "TLS unknown".into());
    report.checks.push(Check::pass(
        "PostgreSQL reachable",
        format!(
            "system identifier {}, {tls} (db-sslmode {})",
            sysid.unwrap_or_default(),
            settings.db.tls.mode
        ),
    ));
    if let (Some(storage), Some(sysid)) = (storage, sysid) {
        report.checks.push(same_cluster(storage, sysid).await);
    }
    let archiving = archive_settings(settings, client).await;
    let archiving_on = archiving.iter().all(|c| c.passed);
    report.checks.extend(archiving);
    if let (Some(storage), Some(sysid), true) = (storage, sysid, archiving_on) {
        report
            .checks
            .push(switch_reaches_repository(client, storage, sysid, settings.check_timeout).await);
    }
    report.checks.push(archiver_failures(client).await);
}

async fn query_text(client: &pg::Client, sql: &str) -> Result<String, String> {
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    row.try_get::<_, Option<String>>(0)
        .map(Option::unwrap_or_default)
        .map_err(|e| format!("{sql}: {e}"))
}

async fn same_cluster(storage: &dyn Storage, sysid: u64) -> Check {
    let name = "same cluster";
    match storage::manifest::ClusterIdentity::load(storage).await {
        Ok(Some(cluster)) if cluster.system_identifier() == Some(sysid) => Check::pass(
            name,
            format!("the repository archives this cluster ({sysid})"),
        ),
        Ok(Some(cluster)) => Check::fail(
            name,
            format!(
                "the repository archives cluster {}, this server is {sysid}: point BACKUP_DIR (or S3_BACKUP_BUCKET) at this cluster's repository",
                cluster.system_identifier
            ),
        ),
        Ok(None) => Check::pass(
            name,
            "nothing archived yet: the first segment claims the repository for this cluster",
        ),
        Err(e) => Check::fail(name, format!("cluster.json: {}", storage::error_chain(&e))),
    }
}

/// `archive_mode` on, `archive_command` running lifeline's `wal push`, and naming this
/// repository when it names one (otherwise the server's environment decides).
async fn archive_settings(settings: &Settings, client: &pg::Client) -> Vec<Check> {
    let fix = "archive_command = '/usr/local/bin/lifeline --config FILE wal push %p' (or --backup-dir DIR) in postgresql.conf, then SELECT pg_reload_conf()";
    let mode = query_text(client, "SELECT current_setting('archive_mode')").await;
    let command = query_text(client, "SELECT current_setting('archive_command')").await;
    let mut checks = vec![match mode.as_deref() {
        Ok("on" | "always") => Check::pass("archive_mode", "on"),
        Ok(other) => Check::fail(
            "archive_mode",
            format!("{other:?}: set archive_mode = on in postgresql.conf and restart the server"),
        ),
        Err(e) => Check::fail("archive_mode", e.clone()),
    }];
    checks.push(match command {
        Ok(command) if !(command.contains("lifeline") && command.contains("wal push")) => {
            Check::fail("archive_command", format!("{command:?} does not run lifeline's wal push: {fix}"))
        }
        Ok(command) => match other_repository(settings, &command) {
            Some(named) => Check::fail(
                "archive_command",
                format!("{command:?} archives into {named}, not this repository: name the same --config, --backup-dir or --s3-bucket"),
            ),
            None => Check::pass("archive_command", command),
        },
        Err(e) => Check::fail("archive_command", e),
    });
    checks
}

/// The repository `command` names, when it names one other than these settings'.
fn other_repository(settings: &Settings, command: &str) -> Option<String> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let unquote = |w: &str| w.trim_matches(|c| c == '\'' || c == '"').to_string();
    let ours = |flag: &str| -> Option<String> {
        match flag {
            "--config" => settings
                .config_file
                .as_ref()
                .map(|p| p.display().to_string()),
            "--backup-dir" => settings
                .backup_dir
                .as_ref()
                .map(|p| p.display().to_string()),
            "--s3-bucket" => settings.s3.as_ref().map(|s3| match s3.prefix.as_str() {
                "" => s3.bucket.clone(),
                prefix => format!("{}/{prefix}", s3.bucket),
            }),
            _ => None,
        }
    };
    words.windows(2).find_map(|pair| {
        let named = unquote(pair[1]);
        let ours = ours(pair[0])?;
        let same = named == ours || named.trim_start_matches("s3://").trim_end_matches('/') == ours;
        (!same).then_some(named)
    })
}

/// A forced WAL switch, and the segment it completes found in the repository in time.
async fn switch_reaches_repository(
    client: &pg::Client,
    storage: &dyn Storage,
    sysid: u64,
    timeout: Duration,
) -> Check {
    let name = "WAL reaches the repository";
    // A record first, so that the switch always completes a segment (pg_walfile_name of the
    // boundary the switch returns names that segment).
    let switched = async {
        client
            .execute(
                "SELECT pg_logical_emit_message(false, 'lifeline', 'check')",
                &[],
            )
            .await?;
        let row = client
            .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
            .await?;
        Ok::<String, tokio_postgres::Error>(row.get(0))
    }
    .await;
    let segment = match switched {
        Ok(segment) => segment,
        Err(e) => {
            return Check::fail(
                name,
                format!(
                    "pg_switch_wal(): {e} (a standby cannot switch WAL; run check against the primary)"
                ),
            );
        }
    };
    let Ok(file) = segment.parse::<storage::wal::WalFileName>() else {
        return Check::fail(name, format!("the server named segment {segment:?}"));
    };
    let key = layout::wal_key(sysid, &file);
    let started = Instant::now();
    loop {
        match storage.exists(&key).await {
            Ok(true) => {
                return Check::pass(
                    name,
                    format!(
                        "{segment} archived {:.1} s after a forced switch",
                        started.elapsed().as_secs_f64()
                    ),
                );
            }
            Ok(false) if started.elapsed() < timeout => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(false) => {
                return Check::fail(
                    name,
                    format!(
                        "{segment} did not reach the repository within {} s of a forced switch: archive_command fails or is too slow; see the server log and pg_stat_archiver (check-timeout sets the wait)",
                        timeout.as_secs()
                    ),
                );
            }
            Err(e) => return Check::fail(name, storage::error_chain(&e)),
        }
    }
}

/// Failing now: the last failure is later than the last success.
pub(crate) async fn archiver_failures(client: &pg::Client) -> Check {
    let name = "archiver";
    let sql = "SELECT archived_count, failed_count, coalesce(last_failed_wal, ''), \
               coalesce(last_failed_time::text, ''), \
               coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) \
               FROM pg_stat_archiver";
    let row = match client.query_one(sql, &[]).await {
        Ok(row) => row,
        Err(e) => return Check::fail(name, format!("pg_stat_archiver: {e}")),
    };
    let (archived, failed): (i64, i64) = (row.get(0), row.get(1));
    let (last_failed, when, failing): (String, String, bool) = (row.get(2), row.get(3), row.get(4));
    if failing {
        return Check::fail(
            name,
            format!(
                "archiving is failing: {failed} failures, the last on {last_failed} at {when}, after the last success; see the server log for archive_command's error"
            ),
        );
    }
    Check::pass(
        name,
        format!("{archived} archived, {failed} failed (none since the last success)"),
    )
}

fn open_files() -> Check {
    use rustix::process::{Resource, getrlimit};
    let limit = getrlimit(Resource::Nofile);
    match limit.current {
        Some(n) if n < MIN_OPEN_FILES => Check::fail(
            "open-file limit",
            format!(
                "{n}: raise it to at least {MIN_OPEN_FILES} (ulimit -n, or LimitNOFILE= in the systemd unit)"
            ),
        ),
        Some(n) => Check::pass("open-file limit", n.to_string()),
        None => Check::pass("open-file limit", "unlimited"),
    }
}
