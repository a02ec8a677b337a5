//! A restore rehearsal that proves the newest backup restorable. The newest base backup is
//! restored into a scratch directory and a server is started there that only its own OS user
//! can reach, over a Unix socket in a private directory (no TCP, no trust; archiving off: a
//! drill never writes to the repository but for its verdict). Recovery first pauses at the
//! backup's consistent point, where the row counts are compared with the backup's record; then
//! it replays the whole archive, promotes and takes a write. The backup is marked VERIFIED or
//! FAILED in its `.metadata` and the catalog. RTO is the wall time from the start to the
//! verified, promoted server; RPO the age of the newest archived WAL.
//!
//! - `access`: the socket directory and the server's own authentication files;
//! - `settings`: the restored data directory made into a scratch server's, phase by phase;
//! - `server`: pg_ctl, polling recovery, the write probe;
//! - `verdict`: the verdict recorded and the report.

mod access;
mod server;
mod settings;
mod verdict;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use catalog::BackupRecord;
use storage::Storage;

use crate::{Check, DrillError, Report};
use access::{ScratchAccess, SocketDir, make_private_dir};
use server::{ScratchServer, Target};
use settings::Phase;
pub use verdict::{DrillReport, NewestWal, Verdict};

/// What the drill needs, resolved by the caller from its configuration.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// Where the scratch directory is made (drill-dir, else the system's temporary directory).
    pub drill_dir: PathBuf,
    pub catalog_path: PathBuf,
    /// Where pg_ctl and pg_controldata are ("" for PATH): the default, replaced by the
    /// directory of the backup's major found in `binaries`.
    pub pg_bin: PathBuf,
    /// The server binaries of each major.
    pub binaries: crate::binaries::ServerBinaries,
    /// The role to log in as when the OS user has no role of its own name (DB_USER).
    pub db_user: String,
    pub row_count_tolerance_percent: f64,
    /// Keep the scratch directory (its server stopped) for inspection.
    pub keep: bool,
    /// Only say what would be done.
    pub simulate: bool,
    /// Where the report is stored as JSON (BACKUP_DIR/logs); none: not stored.
    pub reports_dir: Option<PathBuf>,
}

/// How a drill ended, when it could run at all.
#[derive(Debug, Clone)]
pub enum DrillOutcome {
    /// A simulation: what would be rehearsed.
    Simulated {
        backup_id: String,
    },
    Done(Box<DrillReport>),
}

impl std::fmt::Display for DrillOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrillOutcome::Simulated { backup_id } => writeln!(
                f,
                "SIMULATION: would restore {backup_id} into a scratch directory, start a server there reachable only over its own socket, check the row counts at the backup's consistent point, recover through the archive, promote and write, and mark the backup VERIFIED or FAILED"
            ),
            DrillOutcome::Done(report) => report.fmt(f),
        }
    }
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How the chosen backup is restored: how recovery fetches WAL (the lifeline binary's own
/// `wal fetch`, which only the caller can name), the spool, parallelism. The drill sets the
/// layout (tablespaces inside the scratch directory) and always verifies first.
pub type RestoreSettings<'a> =
    &'a dyn Fn(&BackupRecord) -> Result<restore::PostgresRestoreOptions, BoxError>;

/// PostgreSQL will not run as root; checked before anything else.
pub fn refuse_root() -> Result<(), DrillError> {
    if rustix::process::geteuid().is_root() {
        return Err(DrillError::AsRoot);
    }
    Ok(())
}

/// Rehearse a restore of the newest complete base backup, record the verdict and store the
/// report. `progress` is told each step. An error is returned only when the drill could not
/// rehearse or could not record its verdict; a failed rehearsal is a FAILED report.
pub async fn drill(
    options: &DrillOptions,
    storage: Arc<dyn Storage>,
    restore_settings: RestoreSettings<'_>,
    progress: &dyn Fn(&str),
) -> Result<DrillOutcome, DrillError> {
    refuse_root()?;
    let (catalog_path, simulate) = (options.catalog_path.clone(), options.simulate);
    let catalog = blocking("catalog read", move || match simulate {
        // A simulation creates nothing, not even an empty catalog.
        true => opened(
            &catalog_path,
            catalog::Catalog::open_existing_or_empty(&catalog_path),
        ),
        false => open_catalog(&catalog_path),
    })
    .await?;
    let listing = restore::cluster_backups(storage.as_ref(), &catalog);
    drop(catalog);
    let (sysid, segment_size, backups) = listing.await?;
    let Some(backup) = backups
        .iter()
        .rfind(|b| b.kind == storage::BackupKind::Base)
        .cloned()
    else {
        return Err(DrillError::NoBaseBackup);
    };
    let options = &DrillOptions {
        pg_bin: server_binaries(options, storage.as_ref(), &backup).await?,
        ..options.clone()
    };
    if options.simulate {
        return Ok(DrillOutcome::Simulated {
            backup_id: backup.backup_id,
        });
    }
    let pg_ctl = options.pg_bin.join("pg_ctl");
    for line in clear_interrupted(&options.drill_dir, &pg_ctl).await {
        progress(&line);
        tracing::warn!("drill: {line}");
    }
    let parent = options.drill_dir.clone();
    let (scratch, socket_dir, lock) = blocking("scratch directory", move || {
        std::fs::create_dir_all(&parent).map_err(|source| DrillError::Io {
            doing: format!("create the drill directory {}", parent.display()),
            source,
        })?;
        let scratch = tempfile::Builder::new()
            .prefix(SCRATCH_PREFIX)
            .tempdir_in(&parent)
            .map_err(|source| DrillError::Io {
                doing: format!("create a scratch directory in {}", parent.display()),
                source,
            })?;
        make_private_dir(scratch.path())?;
        let lock = lock_scratch(scratch.path())?;
        let socket_dir = SocketDir::for_scratch(scratch.path())?;
        Ok((scratch, socket_dir, lock))
    })
    .await?;
    let started_at = jiff::Timestamp::now();
    let started = Instant::now();
    let mut server = None;
    let mut restored = None;
    let outcome = rehearse(
        options,
        storage.clone(),
        restore_settings,
        (sysid, segment_size),
        &backup,
        (scratch.path(), &socket_dir.path),
        progress,
        (&mut restored, &mut server),
    )
    .await;
    let rto = started.elapsed();
    progress("stopping the scratch server");
    if let Some(server) = &server {
        server.stop().await;
    }
    let catalog_path = options.catalog_path.clone();
    let rpo = blocking("catalog read", move || {
        Ok(open_catalog(&catalog_path)?.last_wal()?.map(|w| {
            let age = jiff::Timestamp::now().as_microsecond() - w.archived_at_us;
            NewestWal {
                name: w.name,
                age: Duration::from_micros(u64::try_from(age).unwrap_or(0)),
            }
        }))
    })
    .await?;
    let (verdict, reason, checks) = match outcome {
        Ok(report) if report.passed() => (Verdict::Verified, String::new(), Some(report)),
        Ok(report) => (
            Verdict::Failed,
            report
                .failures()
                .iter()
                .map(|c| format!("{}: {}", c.name, c.detail))
                .collect::<Vec<_>>()
                .join("; "),
            Some(report),
        ),
        Err(e) => (Verdict::Failed, crate::error::chain(&e), None),
    };
    let mut report = DrillReport {
        backup_id: backup.backup_id.clone(),
        started_at,
        verdict,
        reason,
        rto,
        rpo,
        checks,
        restored,
        kept: None,
    };
    verdict::record_verdict(storage.as_ref(), &options.catalog_path, &report).await?;
    if options.keep {
        report.kept = Some(scratch.keep());
    }
    drop(lock);
    if let Some(dir) = options.reports_dir.clone() {
        let json = report.json();
        blocking("drill report", move || {
            verdict::store_report(&dir, &json);
            Ok(())
        })
        .await?;
    }
    Ok(DrillOutcome::Done(Box::new(report)))
}

/// The scratch directories' names: `<drill_dir>/lifeline-drill-XXXXXX`, the restore in `data`.
const SCRATCH_PREFIX: &str = "lifeline-drill-";

/// Locked for as long as its drill runs: a scratch directory whose lock is free belongs to a
/// drill that was interrupted.
const SCRATCH_LOCK: &str = "drill.lock";

/// Lock the new scratch directory for this drill's life (the lock goes with the process).
fn lock_scratch(scratch: &Path) -> Result<std::fs::File, DrillError> {
    let path = scratch.join(SCRATCH_LOCK);
    let io = |source| DrillError::Io {
        doing: format!("lock {}", path.display()),
        source,
    };
    let file = std::fs::File::create(&path).map_err(io)?;
    file.lock().map_err(io)?;
    Ok(file)
}

/// An interrupted drill (Ctrl-C, kill) leaves its scratch server running on a copy of
/// production: each such server is stopped (immediate: the copy is thrown away) and its scratch
/// directory removed. Left alone: a directory whose drill still runs (its lock is held), and
/// one without a running server (kept with --keep, or interrupted before it started one).
/// Returns what was done, for the operator.
/// The binaries of the backup's major; refused, with the fix, before anything is restored.
async fn server_binaries(
    options: &DrillOptions,
    storage: &dyn Storage,
    backup: &BackupRecord,
) -> Result<PathBuf, DrillError> {
    let Some(major) = crate::binaries::major_of_backup(storage, backup).await? else {
        tracing::warn!(
            "drill: {} does not record its PostgreSQL major: using {}",
            backup.backup_id,
            options.pg_bin.display()
        );
        return Ok(options.pg_bin.clone());
    };
    let dir = options
        .binaries
        .for_major(major)
        .await
        .map_err(DrillError::NoServerBinaries)?;
    tracing::info!(
        "drill: {} is PostgreSQL {major}: using {}",
        backup.backup_id,
        dir.display()
    );
    Ok(dir)
}

async fn clear_interrupted(drill_dir: &Path, pg_ctl: &Path) -> Vec<String> {
    let dir = drill_dir.to_path_buf();
    // The locks are held until the servers are stopped and their directories removed.
    let found = blocking("scratch directory listing", move || {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let ours = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(SCRATCH_PREFIX));
            // Not a link: the removal below must stay inside the drill directory.
            if !ours
                || !entry.file_type().is_ok_and(|t| t.is_dir())
                || !path.join("data/postmaster.pid").exists()
            {
                continue;
            }
            let lock = match std::fs::File::open(path.join(SCRATCH_LOCK)) {
                Ok(file) => match file.try_lock() {
                    Ok(()) => Some(file),
                    // Its drill still runs.
                    Err(_) => continue,
                },
                // Made before drills locked their directories.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(_) => continue,
            };
            found.push((path, lock));
        }
        Ok(found)
    })
    .await
    .unwrap_or_default();
    let mut said = Vec::new();
    for (scratch, lock) in found {
        let data = scratch.join("data");
        let pg_ctl_on = |args: &'static [&'static str]| {
            tokio::process::Command::new(pg_ctl)
                .arg("-D")
                .arg(&data)
                .args(args)
                .output()
        };
        let _ = pg_ctl_on(&["-m", "immediate", "-w", "stop"]).await;
        // pg_ctl status: 3 when no server runs there.
        let stopped = pg_ctl_on(&["status"])
            .await
            .is_ok_and(|o| o.status.code() == Some(3));
        if !stopped {
            said.push(format!(
                "the scratch server of an interrupted drill in {} did not stop: stop it with `pg_ctl -D {} stop -m immediate` and remove the directory",
                scratch.display(),
                data.display()
            ));
            continue;
        }
        let removing = scratch.clone();
        let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&removing))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r);
        drop(lock);
        said.push(match removed {
            Ok(()) => format!(
                "stopped the scratch server of an interrupted drill and removed {}",
                scratch.display()
            ),
            Err(e) => format!(
                "stopped the scratch server of an interrupted drill; {} could not be removed ({e}): remove it by hand",
                scratch.display()
            ),
        });
    }
    said
}

/// Restore, then recover in two phases, each checked. The restore's line is left in
/// `restored`, and the server, once started, in `server`, so that the caller reports the one
/// and stops the other whatever happened.
///
/// 1. Recovery stops at the backup's consistent point and pauses there in hot standby: the
///    row counts are read where the backup's record was taken, so changes made since the backup
///    (an ordinary DELETE) cannot fail a good backup.
/// 2. Recovery then goes on to the end of the archive and promotes; a write proves the server
///    usable. PostgreSQL ends recovery when a paused target is resumed, so resuming means a
///    restart with the target removed.
#[allow(clippy::too_many_arguments)]
async fn rehearse(
    options: &DrillOptions,
    storage: Arc<dyn Storage>,
    restore_settings: RestoreSettings<'_>,
    cluster: (u64, u64),
    backup: &BackupRecord,
    (scratch, socket_dir): (&Path, &Path),
    progress: &dyn Fn(&str),
    (restored, server): (&mut Option<String>, &mut Option<ScratchServer>),
) -> Result<Report, DrillError> {
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
    .map_err(DrillError::ArchiveShort)?;
    for note in &plan.notes {
        tracing::info!("drill: {note}");
    }
    let newest_segment = wal
        .iter()
        .filter(|w| w.kind == "segment" && w.timeline == plan.timeline.0)
        .filter_map(|w| Some((w.segment_number?, w.name.clone())))
        .max();

    let data_dir = scratch.join("data");
    progress(&format!("restoring {}", backup.backup_id));
    tracing::info!(backup = %backup.backup_id, scratch = %scratch.display(), "drill: restoring the backup");
    let mut restore_options = restore_settings(backup).map_err(DrillError::RestoreSettings)?;
    restore_options.verify_first = true;
    restore_options.choices = restore::RestoreChoices {
        tablespaces: restore::TablespaceMapping {
            each: Vec::new(),
            all: Some(scratch.join("tablespaces")),
        },
        ..Default::default()
    };
    let done = restore::restore_backup(
        storage,
        backup,
        &restore::RecoveryTarget::Immediate,
        &data_dir,
        &restore_options,
    )
    .await
    .map_err(DrillError::RestoreFailed)?;
    *restored = Some(done.to_string());
    let manifest = done.manifest;

    let port = server::free_port()?;
    let os_user = access::os_user().await?;
    let pg_bin = &options.pg_bin;
    let access = {
        let (scratch, socket_dir, db_user) = (
            scratch.to_path_buf(),
            socket_dir.to_path_buf(),
            options.db_user.clone(),
        );
        let data_dir = data_dir.clone();
        blocking("scratch configuration", move || {
            let access = ScratchAccess::write(&scratch, &socket_dir, &os_user, &db_user)?;
            settings::prepare_data_dir(&data_dir)?;
            Ok(access)
        })
        .await?
    };
    let limits = settings::control_limits(pg_bin, &data_dir).await;
    let write_settings = |phase: Phase| {
        let (data_dir, access, limits) = (data_dir.clone(), access.clone(), limits.clone());
        blocking("scratch configuration", move || {
            settings::write_drill_settings(&data_dir, &access, port, &limits, phase)
        })
    };
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
    write_settings(Phase::ConsistentPoint).await?;
    progress("recovering to the backup's consistent point");
    tracing::info!(
        "drill: starting the scratch server; it recovers to the backup's consistent point and pauses"
    );
    let pg_ctl = pg_bin.join("pg_ctl");
    let running = server.insert(ScratchServer::start(&pg_ctl, &data_dir, &log).await?);
    let paused_at = server::wait_paused(running, &mut target, &log).await?;
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
    progress("counting rows at the consistent point");
    let recorded = crate::recorded_rows(&manifest);
    let counted = crate::checks::postgres(
        &target.server(),
        &target.node,
        Some(&recorded),
        options.row_count_tolerance_percent,
    )
    .await;
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
    progress("recovering through the archive");
    tracing::info!(
        "drill: restarting the scratch server without a target; it replays the archive and promotes"
    );
    if let Some(paused) = server.take() {
        paused.stop_fast().await?;
    }
    write_settings(Phase::EndOfArchive(plan.timeline.0)).await?;
    let running = server.insert(ScratchServer::start(&pg_ctl, &data_dir, &log).await?);
    server::wait_promoted(running, &mut target, &log).await?;
    progress("writing to the promoted server");
    let written = server::probe_write(&target).await?;
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

fn open_catalog(path: &Path) -> Result<catalog::Catalog, DrillError> {
    opened(path, catalog::Catalog::open(path))
}

fn opened(
    path: &Path,
    catalog: Result<catalog::Catalog, catalog::CatalogError>,
) -> Result<catalog::Catalog, DrillError> {
    catalog.map_err(|source| DrillError::OpenCatalog {
        path: path.to_path_buf(),
        source,
    })
}

/// Blocking file and catalog work, off the async threads.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, DrillError> + Send + 'static,
) -> Result<T, DrillError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|source| DrillError::TaskFailed { what, source })?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pg_ctl that records its arguments; `status` says no server runs.
    fn fake_pg_ctl(dir: &Path) -> (PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let calls = dir.join("calls");
        let pg_ctl = dir.join("pg_ctl");
        std::fs::write(
            &pg_ctl,
            format!(
                "#!/bin/sh\necho \"$*\" >> {}\ncase \"$*\" in *status) exit 3;; esac\n",
                calls.display()
            ),
        )
        .expect("write pg_ctl");
        std::fs::set_permissions(&pg_ctl, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        (pg_ctl, calls)
    }

    #[tokio::test]
    async fn an_interrupted_drills_server_is_stopped_and_its_directory_removed() {
        let bin = tempfile::tempdir().expect("tempdir");
        let (pg_ctl, calls) = fake_pg_ctl(bin.path());
        let drill_dir = tempfile::tempdir().expect("tempdir");
        let scratch = |name: &str, running: bool| {
            let data = drill_dir.path().join(name).join("data");
            std::fs::create_dir_all(&data).expect("mkdir");
            if running {
                std::fs::write(data.join("postmaster.pid"), "4242\n").expect("pid");
            }
            drill_dir.path().join(name)
        };
        let interrupted = scratch("lifeline-drill-aaaaaa", true);
        lock_scratch(&interrupted)
            .expect("lock")
            .unlock()
            .expect("unlock");
        let unlocked_old = scratch("lifeline-drill-bbbbbb", true);
        let running = scratch("lifeline-drill-cccccc", true);
        let held = lock_scratch(&running).expect("lock");
        let kept = scratch("lifeline-drill-dddddd", false);
        let other = scratch("someone-elses", true);

        let said = clear_interrupted(drill_dir.path(), &pg_ctl).await;
        assert_eq!(said.len(), 2, "{said:?}");
        for gone in [&interrupted, &unlocked_old] {
            assert!(!gone.exists(), "{} was left", gone.display());
            assert!(
                said.contains(&format!(
                    "stopped the scratch server of an interrupted drill and removed {}",
                    gone.display()
                )),
                "{said:?}"
            );
        }
        for left in [&running, &kept, &other] {
            assert!(left.exists(), "{} was removed", left.display());
        }
        let calls = std::fs::read_to_string(&calls).expect("calls");
        assert!(
            calls.contains(&format!(
                "-D {} -m immediate -w stop\n",
                interrupted.join("data").display()
            )),
            "{calls}"
        );
        assert!(
            !calls.contains("cccccc") && !calls.contains("dddddd"),
            "{calls}"
        );
        drop(held);
        assert!(
            clear_interrupted(&drill_dir.path().join("missing"), &pg_ctl)
                .await
                .is_empty()
        );
    }

    #[test]
    fn a_reason_carries_every_cause() {
        let io = std::io::Error::other("disk full");
        let e = DrillError::Io {
            doing: "write /x".into(),
            source: io,
        };
        assert_eq!(crate::error::chain(&e), "write /x: disk full");
    }
}
