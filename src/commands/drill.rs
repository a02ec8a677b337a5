//! `lifeline drill`: a restore rehearsal that proves the newest backup restorable. The newest
//! base backup and all archived WAL are restored into a scratch directory, a server is started
//! there on a free loopback port (archiving off: a drill never writes to the repository but for
//! its verdict), the full checks run against it, and the backup is marked VERIFIED or FAILED
//! in its `.metadata` and the catalog. RTO is the wall time from the start to a verified server;
//! RPO the age of the newest archived WAL.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use ops::Report;

use crate::config::Settings;

/// How long recovery may take before the drill gives up.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// Keep the scratch directory (and stop the server) for inspection.
    #[arg(long)]
    keep: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: DrillArgs, settings: &Settings) -> Result<ExitCode> {
    if rustix::process::geteuid().is_root() {
        bail!(
            "PostgreSQL will not run as root: run the drill as the database's owner (runuser -u postgres -- lifeline drill ...)"
        );
    }
    let storage = settings.repository().await?;
    let (_, _, backups) = super::restore::cluster_backups(settings, storage.as_ref()).await?;
    let Some(backup) = backups
        .iter()
        .rfind(|b| b.kind == "base" && b.state == catalog::BackupState::Complete)
        .cloned()
    else {
        bail!(
            "the catalog lists no complete base backup to rehearse: run `lifeline backup postgres`"
        );
    };
    if settings.ops.simulate {
        println!(
            "SIMULATION: would restore {} and all archived WAL into a scratch directory, start it on a free port, verify it, and mark the backup VERIFIED or FAILED",
            backup.backup_id
        );
        return Ok(ExitCode::SUCCESS);
    }
    let parent = settings
        .ops
        .drill_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("create the drill directory {}", parent.display()))?;
    let scratch = tempfile::Builder::new()
        .prefix("lifeline-drill-")
        .tempdir_in(&parent)
        .with_context(|| format!("create a scratch directory in {}", parent.display()))?;
    let progress = super::spinner("drill");
    let started_at = jiff::Timestamp::now();
    let started = Instant::now();
    let mut server = None;
    let outcome = rehearse(
        settings,
        storage.clone(),
        &backup,
        scratch.path(),
        &progress,
        &mut server,
    )
    .await;
    let rto = started.elapsed();
    progress.set_message("stopping the scratch server");
    if let Some(server) = &server {
        server.stop();
    }
    progress.finish_and_clear();
    let rpo = settings.open_catalog()?.last_wal()?.map(|w| {
        let age = jiff::Timestamp::now().as_microsecond() - w.archived_at_us;
        (
            w.name,
            Duration::from_micros(u64::try_from(age).unwrap_or(0)),
        )
    });
    let (verdict, why, checks) = match &outcome {
        Ok(report) if report.passed() => ("VERIFIED", String::new(), Some(report)),
        Ok(report) => (
            "FAILED",
            report
                .failures()
                .iter()
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect::<Vec<_>>()
                .join("; "),
            Some(report),
        ),
        Err(e) => ("FAILED", format!("{e:#}"), None),
    };
    record_verdict(
        settings,
        storage.as_ref(),
        &backup.backup_id,
        verdict,
        &why,
        started_at,
        rto,
    )
    .await?;

    let report = serde_json::json!({
        "backup_id": backup.backup_id,
        "started_at": started_at,
        "result": verdict,
        "reason": if why.is_empty() { None } else { Some(&why) },
        "rto_seconds": rto.as_secs_f64(),
        "rpo_seconds": rpo.as_ref().map(|(_, age)| age.as_secs_f64()),
        "newest_archived_wal": rpo.as_ref().map(|(name, _)| name),
        "checks": checks.map(Report::json),
        "scratch_dir": args.keep.then(|| scratch.path().display().to_string()),
    });
    let text = render(&backup.backup_id, verdict, &why, rto, rpo.as_ref(), checks);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{text}");
    }
    tracing::info!(target: "lifeline::report", "\n{text}");
    store_report(settings, &report);
    if args.keep {
        let kept = scratch.keep();
        println!("scratch directory kept: {}", kept.display());
    }
    if verdict == "VERIFIED" {
        return Ok(ExitCode::SUCCESS);
    }
    super::notify(
        settings,
        "drill",
        false,
        &format!("backup {} is not restorable: {why}", backup.backup_id),
        &text,
    )
    .await;
    Ok(ExitCode::FAILURE)
}

/// The verdict into the backup's `.metadata` (where a catalog rebuild finds it) and the
/// catalog. A reason left by an earlier failed drill is cleared by a passing one.
async fn record_verdict(
    settings: &Settings,
    storage: &dyn storage::Storage,
    backup_id: &str,
    verdict: &str,
    why: &str,
    started_at: jiff::Timestamp,
    rto: Duration,
) -> Result<()> {
    let checked_at = started_at.to_string();
    let rto = format!("{:.1}", rto.as_secs_f64());
    let labels = [
        ("restorability", verdict),
        ("restorability_checked_at", checked_at.as_str()),
        ("restorability_rto_seconds", rto.as_str()),
        ("restorability_reason", why),
    ];
    catalog::label_backup(storage, backup_id, &labels)
        .await
        .with_context(|| format!("record the verdict in {backup_id}'s .metadata"))?;
    let mut catalog = settings.open_catalog()?;
    if let Some(mut record) = catalog.backup(backup_id)? {
        record.restorability = verdict.to_string();
        catalog.upsert_backup(&record)?;
    }
    Ok(())
}

/// Restore, start, recover, verify. The server, once started, is left in `server` so that the
/// caller stops it whatever happened.
async fn rehearse(
    settings: &Settings,
    storage: std::sync::Arc<dyn storage::Storage>,
    backup: &catalog::BackupRecord,
    scratch: &Path,
    progress: &ProgressBar,
    server: &mut Option<ScratchServer>,
) -> Result<Report> {
    let data_dir = scratch.join("data");
    progress.set_message(format!("restoring {}", backup.backup_id));
    tracing::info!(backup = %backup.backup_id, scratch = %scratch.display(), "drill: restoring the backup and all archived WAL");
    let manifest = super::restore::restore_backup(
        settings,
        storage,
        backup,
        &restore::RecoveryTarget::EndOfArchive,
        &data_dir,
        true,
        &super::restore::RestoreChoices {
            tablespaces: restore::TablespaceMapping {
                each: Vec::new(),
                all: Some(scratch.join("tablespaces")),
            },
            ..Default::default()
        },
    )
    .await
    .context("the restore failed")?;
    let port = free_port()?;
    configure(&data_dir, scratch, port)?;
    progress.set_message(format!("recovering through the archive on port {port}"));
    tracing::info!(
        port,
        "drill: starting the scratch server; recovery replays the archive"
    );
    let pg_ctl = settings.pg_bin().join("pg_ctl");
    let started = ScratchServer::start(&pg_ctl, &data_dir, &scratch.join("server.log"))?;
    *server = Some(started);
    let mut config = settings.db.pg_config();
    config.host_path(scratch).port(port);
    let node = format!("scratch server on port {port}");
    ops::pg::wait_writable(&config, &node, Instant::now() + RECOVERY_TIMEOUT)
        .await
        .with_context(|| {
            format!(
                "recovery did not finish: {}",
                last_lines(&scratch.join("server.log"), 3)
            )
        })?;
    progress.set_message("verifying");
    tracing::info!("drill: recovery finished, the server accepts writes; verifying");
    let recorded = super::verify_recovery::recorded_rows(&manifest);
    let tolerance = settings
        .ops
        .verify
        .row_count_tolerance_percent
        .unwrap_or(10.0);
    let mut report = Report::new("drill", &node);
    report
        .checks
        .extend(ops::checks::postgres(&config, &node, Some(&recorded), tolerance).await);
    Ok(report)
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Settings that keep the scratch server to itself: loopback, its own socket directory, no
/// archiving into the production repository, modest memory. A data directory whose
/// configuration lives elsewhere (Debian's /etc/postgresql) gets minimal files.
fn configure(data_dir: &Path, scratch: &Path, port: u16) -> Result<()> {
    let conf = data_dir.join("postgresql.conf");
    if !conf.exists() {
        std::fs::write(&conf, "").with_context(|| format!("write {}", conf.display()))?;
    }
    let hba = data_dir.join("pg_hba.conf");
    if !hba.exists() {
        std::fs::write(
            &hba,
            "local all all trust\nhost all all 127.0.0.1/32 trust\n",
        )
        .with_context(|| format!("write {}", hba.display()))?;
    }
    let auto = data_dir.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(&format!(
        "\n# lifeline drill\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\narchive_mode = 'off'\nprimary_conninfo = ''\nshared_buffers = '128MB'\nhba_file = '{}'\nident_file = ''\nlogging_collector = off\n",
        scratch.display().to_string().replace('\'', "''"),
        hba.display().to_string().replace('\'', "''"),
    ));
    std::fs::write(&auto, text).with_context(|| format!("write {}", auto.display()))?;
    Ok(())
}

struct ScratchServer {
    pg_ctl: PathBuf,
    data_dir: PathBuf,
}

impl ScratchServer {
    fn start(pg_ctl: &Path, data_dir: &Path, log: &Path) -> Result<Self> {
        // -W: recovery may take long; readiness is polled by the caller.
        let output = std::process::Command::new(pg_ctl)
            .arg("-D")
            .arg(data_dir)
            .arg("-l")
            .arg(log)
            .args(["-W", "start"])
            .output()
            .with_context(|| format!("run {}", pg_ctl.display()))?;
        if !output.status.success() {
            bail!(
                "the scratch server did not start: {} {}",
                String::from_utf8_lossy(&output.stderr).trim(),
                last_lines(log, 3)
            );
        }
        Ok(Self {
            pg_ctl: pg_ctl.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
        })
    }

    fn stop(&self) {
        let stopped = std::process::Command::new(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        if !stopped.is_ok_and(|o| o.status.success()) {
            tracing::warn!(
                "the scratch server in {} may still run: stop it with pg_ctl -D {} stop",
                self.data_dir.display(),
                self.data_dir.display()
            );
        }
    }
}

fn last_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

fn render(
    backup_id: &str,
    verdict: &str,
    why: &str,
    rto: Duration,
    rpo: Option<&(String, Duration)>,
    checks: Option<&Report>,
) -> String {
    let mut out = String::new();
    if let Some(report) = checks {
        out.push_str(&report.text());
    }
    out.push_str(&format!(
        "drill of {backup_id}: {verdict}{}\n",
        if why.is_empty() {
            String::new()
        } else {
            format!(" ({why})")
        }
    ));
    out.push_str(&format!(
        "RTO measured: {:.1} s from the start to a verified server\n",
        rto.as_secs_f64()
    ));
    match rpo {
        Some((name, age)) => out.push_str(&format!(
            "RPO now: {:.0} s (newest archived WAL {name})\n",
            age.as_secs_f64()
        )),
        None => out.push_str("RPO now: unknown (no archived WAL in the catalog)\n"),
    }
    out
}

/// The report as JSON beside the operation logs; losing it only warns.
fn store_report(settings: &Settings, report: &serde_json::Value) {
    let Ok(dir) = settings.backup_dir().map(|d| d.join("logs")) else {
        return;
    };
    let path = dir.join(format!(
        "drill_{}.json",
        jiff::Zoned::now().strftime("%Y%m%d_%H%M%S")
    ));
    let written = std::fs::create_dir_all(&dir).and_then(|()| {
        std::fs::write(&path, serde_json::to_vec_pretty(report).unwrap_or_default())
    });
    if let Err(e) = written {
        tracing::warn!("drill report not stored in {}: {e}", path.display());
    }
}
