//! `lifeline drill`: a restore rehearsal that proves the newest backup restorable. The newest
//! base backup is restored into a scratch directory and a server is started there that only its
//! own OS user can reach, over a Unix socket in a private directory (no TCP, no trust; archiving
//! off: a drill never writes to the repository but for its verdict). Recovery first pauses at
//! the backup's consistent point, where the row counts are compared with the backup's record;
//! then it replays the whole archive, promotes and takes a write. The backup is marked VERIFIED
//! or FAILED in its `.metadata` and the catalog. RTO is the wall time from the start to the
//! verified, promoted server; RPO the age of the newest archived WAL.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use ops::{Check, Report};

use crate::config::Settings;

/// How long recovery may take before the drill gives up.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a started server may take to show up in `pg_ctl status`.
const START_GRACE: Duration = Duration::from_secs(30);

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
    let (sysid, segment_size, backups) =
        restore::cluster_backups(storage.as_ref(), &settings.open_catalog()?).await?;
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
            "SIMULATION: would restore {} into a scratch directory, start a server there reachable only over its own socket, check the row counts at the backup's consistent point, recover through the archive, promote and write, and mark the backup VERIFIED or FAILED",
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
    make_private_dir(scratch.path())?;
    let socket_dir = SocketDir::for_scratch(scratch.path())?;
    let progress = super::spinner("drill");
    let started_at = jiff::Timestamp::now();
    let started = Instant::now();
    let mut server = None;
    let outcome = rehearse(
        settings,
        storage.clone(),
        (sysid, segment_size),
        &backup,
        scratch.path(),
        &socket_dir.path,
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

/// Restore, then recover in two phases, each checked. The server, once started, is left in
/// `server` so that the caller stops it whatever happened.
///
/// 1. Recovery stops at the backup's consistent point and pauses there in hot standby: the
///    row counts are read where the backup's record was taken, so changes made since the backup
///    (an ordinary DELETE) cannot fail a good backup.
/// 2. Recovery then goes on to the end of the archive and promotes; a write proves the server
///    usable. PostgreSQL ends recovery when a paused target is resumed, so resuming means a
///    restart with the target removed.
#[allow(clippy::too_many_arguments)]
async fn rehearse(
    settings: &Settings,
    storage: std::sync::Arc<dyn storage::Storage>,
    cluster: (u64, u64),
    backup: &catalog::BackupRecord,
    scratch: &Path,
    socket_dir: &Path,
    progress: &ProgressBar,
    server: &mut Option<ScratchServer>,
) -> Result<Report> {
    let (sysid, segment_size) = cluster;
    // The archive must carry the backup to its end, or phase 2 would stop early in silence.
    let wal = restore::archived_wal(storage.as_ref(), sysid, segment_size).await?;
    let histories = restore::timeline_histories(storage.as_ref(), sysid, &wal).await?;
    let plan = restore::plan_end_of_archive(
        backup,
        &wal,
        &histories,
        segment_size,
        restore::TargetTimeline::Latest,
    )
    .context("the archive cannot carry the backup to its end")?;
    for note in &plan.notes {
        tracing::info!("drill: {note}");
    }
    let newest_segment = wal
        .iter()
        .filter(|w| w.kind == "segment" && w.timeline == plan.timeline.0)
        .filter_map(|w| Some((w.segment_number?, w.name.clone())))
        .max();

    let data_dir = scratch.join("data");
    progress.set_message(format!("restoring {}", backup.backup_id));
    tracing::info!(backup = %backup.backup_id, scratch = %scratch.display(), "drill: restoring the backup");
    let options = super::restore::postgres_options(
        settings,
        backup,
        true,
        restore::RestoreChoices {
            tablespaces: restore::TablespaceMapping {
                each: Vec::new(),
                all: Some(scratch.join("tablespaces")),
            },
            ..Default::default()
        },
    )
    .context("the restore failed")?;
    let restored = restore::restore_backup(
        storage,
        backup,
        &restore::RecoveryTarget::Immediate,
        &data_dir,
        &options,
    )
    .await
    .context("the restore failed")?;
    println!("{restored}");
    let manifest = restored.manifest;

    let port = free_port()?;
    let os_user = os_user()?;
    let pg_bin = settings.pg_bin();
    let access = ScratchAccess::write(scratch, socket_dir, &os_user, &settings.db.user)?;
    prepare_data_dir(&data_dir)?;
    let limits = control_limits(&pg_bin, &data_dir);
    let log = scratch.join("server.log");
    let dbname = if manifest.database.is_empty() {
        "postgres".to_string()
    } else {
        manifest.database.clone()
    };
    let node = format!(
        "scratch server (socket in {}, port {port})",
        socket_dir.display()
    );
    let mut target = Target {
        socket_dir: socket_dir.to_path_buf(),
        port,
        dbname,
        roles: access.roles.clone(),
        role: 0,
        node,
    };
    let mut report = Report::new("drill", &target.node);

    // Phase 1: paused at the consistent point, read-only.
    write_drill_settings(&data_dir, &access, port, &limits, Phase::ConsistentPoint)?;
    progress.set_message("recovering to the backup's consistent point");
    tracing::info!(
        "drill: starting the scratch server; it recovers to the backup's consistent point and pauses"
    );
    let pg_ctl = pg_bin.join("pg_ctl");
    *server = Some(ScratchServer::start(&pg_ctl, &data_dir, &log)?);
    let running = server
        .as_ref()
        .context("the scratch server was just started")?;
    let paused_at = wait_paused(running, &mut target, &log).await?;
    let stop_lsn = manifest.stop_lsn;
    report.checks.push(if paused_at.0 >= stop_lsn.0 {
        Check::pass(
            "consistent point",
            format!(
                "recovery paused at {paused_at} in hot standby, read-only (the backup ended at {stop_lsn})"
            ),
        )
    } else {
        Check::fail(
            "consistent point",
            format!("recovery paused at {paused_at}, before the backup's end {stop_lsn}"),
        )
    });
    progress.set_message("counting rows at the consistent point");
    let recorded = ops::recorded_rows(&manifest);
    let tolerance = settings
        .ops
        .verify
        .row_count_tolerance_percent
        .unwrap_or(10.0);
    let counted =
        ops::checks::postgres(&target.config(), &target.node, Some(&recorded), tolerance).await;
    let tables: Vec<&Check> = counted
        .iter()
        .filter(|c| c.name.starts_with("table "))
        .collect();
    let differ = tables.iter().filter(|c| !c.passed).count();
    let summary = if differ == 0 {
        Check::pass(
            "row counts",
            format!(
                "at the backup's consistent point {paused_at}: {} tables match the backup's record",
                tables.len()
            ),
        )
    } else {
        Check::fail(
            "row counts",
            format!(
                "at the backup's consistent point {paused_at}: {differ} of {} tables differ from the backup's record",
                tables.len()
            ),
        )
    };
    report.checks.extend(counted);
    report.checks.push(summary);

    // Phase 2: through the archive, promoted, written to.
    progress.set_message("recovering through the archive");
    tracing::info!(
        "drill: restarting the scratch server without a target; it replays the archive and promotes"
    );
    if let Some(paused) = server.take() {
        paused.stop_fast()?;
    }
    write_drill_settings(
        &data_dir,
        &access,
        port,
        &limits,
        Phase::EndOfArchive(plan.timeline.0),
    )?;
    *server = Some(ScratchServer::start(&pg_ctl, &data_dir, &log)?);
    let running = server
        .as_ref()
        .context("the scratch server was just started")?;
    wait_promoted(running, &mut target, &log).await?;
    progress.set_message("writing to the promoted server");
    let written = probe_write(&target).await?;
    let segment_start = |n: u64| n.saturating_mul(segment_size);
    report.checks.push(match &newest_segment {
        Some((number, name)) if written.replay_end.0 < segment_start(*number) => Check::fail(
            "end of archive",
            format!(
                "recovery stopped at {}, before the newest archived segment {name}: a segment is missing or damaged (run lifeline verify)",
                written.replay_end
            ),
        ),
        newest => Check::pass(
            "end of archive",
            format!(
                "recovered through the archive to {} on timeline {}{}, promoted to timeline {}",
                written.replay_end,
                plan.timeline.0,
                newest
                    .as_ref()
                    .map(|(_, name)| format!(" (newest archived segment {name})"))
                    .unwrap_or_default(),
                written.timeline
            ),
        ),
    });
    report.checks.push(Check::pass(
        "write",
        format!(
            "CREATE TABLE, INSERT, DROP on the promoted server: write OK at {}",
            written.current
        ),
    ));
    Ok(report)
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The name of the OS user the drill runs as: the only one its server lets in.
fn os_user() -> Result<String> {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .context("run `id -un` to learn the OS user's name")?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || name.is_empty() {
        bail!(
            "`id -un` did not name the OS user the drill runs as ({}): run the drill as a user with a name (e.g. postgres)",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(name)
}

/// Where the scratch server's Unix socket lives: the scratch directory when its path fits a
/// socket address and PostgreSQL's list syntax, else a private directory under /tmp.
pub struct SocketDir {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// `sun_path` holds 108 bytes with the closing NUL.
const SOCKET_PATH_MAX: usize = 107;

impl SocketDir {
    fn for_scratch(scratch: &Path) -> Result<Self> {
        if socket_dir_fits(scratch) {
            return Ok(Self {
                path: scratch.to_path_buf(),
                _temp: None,
            });
        }
        let temp = tempfile::Builder::new()
            .prefix("lifeline-drill-")
            .tempdir_in("/tmp")
            .context("create a socket directory in /tmp for the scratch server (the drill directory's path is too long or odd for a socket)")?;
        make_private_dir(temp.path())?;
        if !socket_dir_fits(temp.path()) {
            bail!(
                "no socket directory short enough for the scratch server: set drill-dir to a short path (at most {} bytes)",
                SOCKET_PATH_MAX - SOCKET_NAME_MAX
            );
        }
        Ok(Self {
            path: temp.path().to_path_buf(),
            _temp: Some(temp),
        })
    }
}

/// `/.s.PGSQL.65535`
const SOCKET_NAME_MAX: usize = 15;

fn socket_dir_fits(dir: &Path) -> bool {
    let Some(text) = dir.to_str() else {
        return false;
    };
    // unix_socket_directories is a comma-separated list with optional double quotes and
    // trimmed blanks: a path that needs any of that goes elsewhere.
    text.len() + SOCKET_NAME_MAX <= SOCKET_PATH_MAX
        && !text.contains([',', '"'])
        && text.trim() == text
        && !text.chars().any(char::is_control)
}

/// A value in PostgreSQL's configuration syntax: quoted, `'` doubled, `\` doubled.
fn conf_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str().with_context(|| {
        format!(
            "{} is not valid UTF-8, which PostgreSQL's configuration cannot name: set drill-dir to a plain path",
            path.display()
        )
    })
}

/// The scratch server's own authentication: peer over the Unix socket for this OS user only,
/// as its own name or (when that role does not exist) as the configured DB_USER. No TCP, no
/// trust; the restored pg_hba.conf and pg_ident.conf are never read.
struct ScratchAccess {
    hba_file: PathBuf,
    ident_file: PathBuf,
    socket_dir: PathBuf,
    roles: Vec<String>,
}

const IDENT_MAP: &str = "lifeline_drill";

impl ScratchAccess {
    fn write(scratch: &Path, socket_dir: &Path, os_user: &str, db_user: &str) -> Result<Self> {
        let mut roles = vec![os_user.to_string()];
        if !db_user.is_empty() && db_user != os_user {
            roles.push(db_user.to_string());
        }
        let hba_file = scratch.join("pg_hba.drill.conf");
        let ident_file = scratch.join("pg_ident.drill.conf");
        let hba = format!(
            "# lifeline drill: the scratch server accepts only its own OS user, over its socket\nlocal all all peer map={IDENT_MAP}\n"
        );
        let mut ident = String::from("# lifeline drill: the OS user may log in as these roles\n");
        for role in &roles {
            ident.push_str(&format!(
                "{IDENT_MAP} {} {}\n",
                hba_token(os_user)?,
                hba_token(role)?
            ));
        }
        write_private(&hba_file, &hba)?;
        write_private(&ident_file, &ident)?;
        Ok(Self {
            hba_file,
            ident_file,
            socket_dir: socket_dir.to_path_buf(),
            roles,
        })
    }
}

/// A user name as one token of pg_hba.conf / pg_ident.conf.
fn hba_token(name: &str) -> Result<String> {
    if name.contains('"') || name.chars().any(|c| c.is_control()) {
        bail!(
            "the user name {name:?} cannot be written in pg_hba.conf: run the drill as a plainly named user (e.g. postgres)"
        );
    }
    if name.starts_with('/') || name.contains([' ', '\t', ',', '#']) {
        Ok(format!("\"{name}\""))
    } else {
        Ok(name.to_string())
    }
}

/// 0700 whatever the umask: the server's socket and its authentication files live there.
fn make_private_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("make {} private (0700)", path.display()))
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("make {} private", path.display()))
}

/// A data directory whose configuration lives elsewhere (Debian's /etc/postgresql) gets an
/// empty postgresql.conf; one that names another data directory would start on it (the
/// production one), so that setting is commented out; a standby.signal would keep the server
/// from ever promoting.
fn prepare_data_dir(data_dir: &Path) -> Result<()> {
    let conf = data_dir.join("postgresql.conf");
    match std::fs::read_to_string(&conf) {
        Ok(text) => {
            let mut changed = false;
            let lines: Vec<String> = text
                .lines()
                .map(|line| {
                    if setting_name(line).is_some_and(|n| n.eq_ignore_ascii_case("data_directory"))
                    {
                        changed = true;
                        format!("#(lifeline drill) {line}")
                    } else {
                        line.to_string()
                    }
                })
                .collect();
            if changed {
                write_private(&conf, &(lines.join("\n") + "\n"))?;
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_private(&conf, "")?,
        Err(e) => return Err(e).with_context(|| format!("read {}", conf.display())),
    }
    let standby = data_dir.join("standby.signal");
    if standby.exists() {
        std::fs::remove_file(&standby).with_context(|| format!("remove {}", standby.display()))?;
    }
    Ok(())
}

/// The parameter a configuration line sets, if it sets one.
fn setting_name(line: &str) -> Option<&str> {
    let line = line.trim_start();
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(line.len());
    let name = &line[..end];
    let rest = line[end..].trim_start();
    (!name.is_empty() && (rest.starts_with('=') || (!rest.is_empty() && !rest.starts_with('#'))))
        .then_some(name)
}

/// The primary's limits recorded in pg_control: a hot standby refuses to run with less. They
/// matter when the configuration was not in the data directory and defaults apply.
fn control_limits(pg_bin: &Path, data_dir: &Path) -> Vec<(&'static str, u64)> {
    const LIMITS: [(&str, &str); 5] = [
        ("max_connections", "max_connections setting:"),
        ("max_worker_processes", "max_worker_processes setting:"),
        ("max_wal_senders", "max_wal_senders setting:"),
        ("max_prepared_transactions", "max_prepared_xacts setting:"),
        ("max_locks_per_transaction", "max_locks_per_xact setting:"),
    ];
    let Ok(out) = std::process::Command::new(pg_bin.join("pg_controldata"))
        .arg("-D")
        .arg(data_dir)
        .env("LC_ALL", "C")
        .output()
    else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    LIMITS
        .iter()
        .filter_map(|(name, label)| {
            let line = text.lines().find(|l| l.starts_with(label))?;
            let value = line[label.len()..].trim().parse().ok()?;
            Some((*name, value))
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Stop at the backup's consistent point and pause there, readable.
    ConsistentPoint,
    /// Replay all of the archive on the planned timeline, then promote.
    EndOfArchive(u32),
}

/// Marks the settings the drill owns in postgresql.auto.conf: everything from it to the end
/// of the file (after the restore's own block). Later lines win in PostgreSQL's configuration.
const DRILL_MARK: &str = "# Added by lifeline drill";

/// Settings that keep the scratch server to itself: no TCP, its own socket and
/// authentication, no archiving into the production repository, no replication towards or from
/// production, nothing written to production's paths, modest memory.
fn write_drill_settings(
    data_dir: &Path,
    access: &ScratchAccess,
    port: u16,
    limits: &[(&str, u64)],
    phase: Phase,
) -> Result<()> {
    let mut settings: Vec<(&str, String)> = vec![
        ("port", port.to_string()),
        ("listen_addresses", conf_quote("")),
        (
            "unix_socket_directories",
            conf_quote(utf8(&access.socket_dir)?),
        ),
        ("unix_socket_permissions", "0700".into()),
        ("unix_socket_group", conf_quote("")),
        ("hba_file", conf_quote(utf8(&access.hba_file)?)),
        ("ident_file", conf_quote(utf8(&access.ident_file)?)),
        ("ssl", "off".into()),
        ("external_pid_file", conf_quote("")),
        ("archive_mode", conf_quote("off")),
        ("primary_conninfo", conf_quote("")),
        ("primary_slot_name", conf_quote("")),
        ("synchronous_standby_names", conf_quote("")),
        ("shared_buffers", conf_quote("128MB")),
        ("logging_collector", "off".into()),
        ("log_destination", conf_quote("stderr")),
        ("hot_standby", "on".into()),
    ];
    settings.extend(
        limits
            .iter()
            .map(|(name, value)| (*name, value.to_string())),
    );
    match phase {
        Phase::ConsistentPoint => {
            // The restore wrote recovery_target = 'immediate' for RecoveryTarget::Immediate.
            settings.push(("recovery_target_action", conf_quote("pause")));
        }
        Phase::EndOfArchive(timeline) => {
            settings.push(("recovery_target", conf_quote("")));
            settings.push(("recovery_target_action", conf_quote("promote")));
            // The timeline the plan checked, not PostgreSQL's 'latest', which could take one
            // that branched off before the backup.
            settings.push((
                "recovery_target_timeline",
                conf_quote(&timeline.to_string()),
            ));
        }
    }
    let auto = data_dir.join("postgresql.auto.conf");
    let text = match std::fs::read_to_string(&auto) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("read {}", auto.display())),
    };
    let mut out = match text.find(&format!("\n{DRILL_MARK}")) {
        Some(at) => text[..at].to_string(),
        None => text.trim_end_matches('\n').to_string(),
    };
    out.push_str(&format!(
        "\n{DRILL_MARK} ({})\n",
        match phase {
            Phase::ConsistentPoint => "phase 1: pause at the backup's consistent point",
            Phase::EndOfArchive(_) => "phase 2: replay the archive and promote",
        }
    ));
    for (name, value) in settings {
        out.push_str(&format!("{name} = {value}\n"));
    }
    write_private(&auto, &out)
}

/// How to reach the scratch server, and which of the allowed roles exists there.
struct Target {
    socket_dir: PathBuf,
    port: u16,
    dbname: String,
    roles: Vec<String>,
    role: usize,
    node: String,
}

impl Target {
    fn role(&self) -> &str {
        self.roles.get(self.role).map_or("postgres", String::as_str)
    }

    fn config(&self) -> ops::pg::Config {
        ops::pg::unix_socket_config(&self.socket_dir, self.port, self.role(), &self.dbname)
    }

    /// A connection; a role that does not exist there moves on to the next allowed one.
    async fn connect(&mut self) -> Result<ops::pg::Client, String> {
        loop {
            match ops::pg::connect(&self.config(), &self.node, Duration::from_secs(5)).await {
                Ok(client) => return Ok(client),
                Err(e) => {
                    let text = e.to_string();
                    if text.contains("(SQLSTATE 28000)") && self.role + 1 < self.roles.len() {
                        self.role += 1;
                        continue;
                    }
                    return Err(text);
                }
            }
        }
    }
}

/// Poll `attempt` until it answers, the server stops (its log's last lines say why) or
/// recovery takes longer than RECOVERY_TIMEOUT.
async fn poll<T>(
    server: &ScratchServer,
    log: &Path,
    what: &str,
    mut attempt: impl AsyncFnMut() -> Result<Option<T>, String>,
) -> Result<T> {
    let started = Instant::now();
    let deadline = started + RECOVERY_TIMEOUT;
    let mut last = String::new();
    let mut seen_running = false;
    loop {
        match attempt().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last = e,
        }
        // pg_ctl -W returns before the postmaster has written its pid file: not running yet
        // is only a stop once it ran, or after a while.
        let running = server.running().await;
        seen_running |= running;
        if !running && (seen_running || started.elapsed() > START_GRACE) {
            bail!(
                "the scratch server stopped before {what}: {}",
                last_lines(log, 3)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the scratch server did not reach {what} within {} s ({last}): {}",
                RECOVERY_TIMEOUT.as_secs(),
                last_lines(log, 3)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Wait until recovery has paused at the consistent point; returns where it paused.
async fn wait_paused(
    server: &ScratchServer,
    target: &mut Target,
    log: &Path,
) -> Result<storage::wal::Lsn> {
    let lsn = poll(server, log, "the backup's consistent point", async || {
        let client = target.connect().await?;
        match ops::pg::recovery_state(&client, &target.node).await {
            Ok(ops::pg::RecoveryState::Paused(lsn)) => Ok(Some(lsn)),
            Ok(ops::pg::RecoveryState::Replaying) => Ok(None),
            Ok(ops::pg::RecoveryState::Promoted) => {
                Err("it left recovery instead of pausing at the consistent point".into())
            }
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    lsn.parse()
        .map_err(|e| anyhow::anyhow!("the paused server reported the position {lsn:?}: {e}"))
}

/// Wait until recovery has ended and the server is out of recovery.
async fn wait_promoted(server: &ScratchServer, target: &mut Target, log: &Path) -> Result<()> {
    poll(
        server,
        log,
        "the end of the archive and promotion",
        async || {
            let client = target.connect().await?;
            match ops::pg::recovery_state(&client, &target.node).await {
                Ok(ops::pg::RecoveryState::Promoted) => Ok(Some(())),
                Ok(_) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
}

struct Written {
    replay_end: storage::wal::Lsn,
    current: String,
    timeline: u32,
}

/// A committed write on the promoted server, and where its WAL stands.
async fn probe_write(target: &Target) -> Result<Written> {
    let client = ops::pg::connect(&target.config(), &target.node, Duration::from_secs(10))
        .await
        .context("connect to the promoted scratch server")?;
    let schema = format!("lifeline_drill_{}", std::process::id());
    let probe = ops::pg::probe_write(&client, &target.node, &schema)
        .await
        .context("the promoted server did not take a write")?;
    let replay_end = probe.replay_end.as_deref().unwrap_or("0/0");
    Ok(Written {
        replay_end: replay_end.parse().map_err(|e| {
            anyhow::anyhow!("the promoted server reported the replay end {replay_end:?}: {e}")
        })?,
        current: probe.current,
        timeline: probe.timeline,
    })
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

    async fn running(&self) -> bool {
        // pg_ctl status: 0 running, 3 not running, 4 no data directory.
        tokio::process::Command::new(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data_dir)
            .arg("status")
            .output()
            .await
            .is_ok_and(|o| o.status.success())
    }

    /// A clean stop (a restartpoint is written), to start again from where it paused.
    fn stop_fast(self) -> Result<()> {
        let out = std::process::Command::new(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "-t", "600", "stop"])
            .output()
            .with_context(|| format!("run {}", self.pg_ctl.display()))?;
        if !out.status.success() {
            self.stop();
            bail!(
                "the paused scratch server did not stop: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
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
        "RTO measured: {:.1} s from the start to a verified, promoted server\n",
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
    // Private like the logs beside it; never creates BACKUP_DIR itself.
    let owner = storage::private::Owner::of(dir.parent().unwrap_or(&dir));
    let written = storage::private::create_dir(&dir, owner)
        .and_then(|_| storage::private::create_file(&path, owner))
        .and_then(|mut file| {
            use std::io::Write;
            file.write_all(&serde_json::to_vec_pretty(report).unwrap_or_default())
        });
    if let Err(e) = written {
        tracing::warn!("drill report not stored in {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_for_postgresql() {
        assert_eq!(conf_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(conf_quote("it's"), "'it''s'");
        assert_eq!(conf_quote(r"C:\x"), r"'C:\\x'");
        assert_eq!(conf_quote(""), "''");
    }

    #[test]
    fn a_socket_directory_must_fit_a_socket_address_and_the_list_syntax() {
        assert!(socket_dir_fits(Path::new("/tmp/lifeline-drill-abc")));
        assert!(socket_dir_fits(Path::new("/tmp/with space/x")));
        let long = format!("/tmp/{}", "d".repeat(SOCKET_PATH_MAX - SOCKET_NAME_MAX - 4));
        assert!(!socket_dir_fits(Path::new(&long)), "{}", long.len());
        assert!(socket_dir_fits(Path::new(&long[..long.len() - 1])));
        for odd in ["/tmp/a,b", "/tmp/a\"b", "/tmp/a ", "/tmp/a\nb"] {
            assert!(!socket_dir_fits(Path::new(odd)), "{odd:?}");
        }
        let fallback = SocketDir::for_scratch(Path::new(&long)).expect("a short directory");
        assert!(fallback.path.starts_with("/tmp"));
        assert!(socket_dir_fits(&fallback.path));
        let mode = std::fs::metadata(&fallback.path)
            .expect("stat")
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
    }

    #[test]
    fn only_settings_are_recognised() {
        assert_eq!(
            setting_name("data_directory = '/x'"),
            Some("data_directory")
        );
        assert_eq!(
            setting_name("  data_directory '/x'"),
            Some("data_directory")
        );
        assert_eq!(setting_name("#data_directory = '/x'"), None);
        assert_eq!(setting_name(""), None);
        assert_eq!(setting_name("port=5432"), Some("port"));
    }

    #[test]
    fn the_drill_rewrites_only_its_own_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        let auto = data.join("postgresql.auto.conf");
        let restored = "work_mem = '8MB'\n\n# Added by lifeline restore of b\nrecovery_target = 'immediate'\nrecovery_target_action = 'promote'\n";
        std::fs::write(&auto, restored).expect("write");
        let access =
            ScratchAccess::write(dir.path(), dir.path(), "postgres", "app").expect("access");
        assert_eq!(access.roles, ["postgres", "app"]);
        let limits = [("max_connections", 200)];
        write_drill_settings(&data, &access, 5555, &limits, Phase::ConsistentPoint)
            .expect("phase 1");
        let phase1 = std::fs::read_to_string(&auto).expect("read");
        assert!(phase1.starts_with(restored), "{phase1}");
        assert!(
            phase1.contains("recovery_target_action = 'pause'\n"),
            "{phase1}"
        );
        assert!(phase1.contains("listen_addresses = ''\n"), "{phase1}");
        assert!(phase1.contains("max_connections = 200\n"), "{phase1}");
        write_drill_settings(&data, &access, 5555, &limits, Phase::EndOfArchive(1))
            .expect("phase 2");
        let phase2 = std::fs::read_to_string(&auto).expect("read");
        assert!(phase2.starts_with(restored), "{phase2}");
        assert_eq!(phase2.matches(DRILL_MARK).count(), 1, "{phase2}");
        assert!(!phase2.contains("'pause'"), "{phase2}");
        assert!(phase2.ends_with("recovery_target = ''\nrecovery_target_action = 'promote'\nrecovery_target_timeline = '1'\n"), "{phase2}");
        let hba = std::fs::read_to_string(&access.hba_file).expect("hba");
        assert!(
            hba.contains("\nlocal all all peer map=lifeline_drill\n"),
            "{hba}"
        );
        let ident = std::fs::read_to_string(&access.ident_file).expect("ident");
        assert!(
            ident.contains("lifeline_drill postgres postgres\nlifeline_drill postgres app\n"),
            "{ident}"
        );
    }

    #[test]
    fn odd_user_names_are_quoted_or_refused() {
        assert_eq!(hba_token("postgres").expect("plain"), "postgres");
        assert_eq!(hba_token("a b").expect("quoted"), "\"a b\"");
        assert!(hba_token("a\"b").is_err());
    }
}
