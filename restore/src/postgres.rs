//! The PostgreSQL restore as the operator asks for it: which backup, up to where and on which
//! timeline ([`RestoreRequest`], [`plan_restore`]), then the restore itself under a lease,
//! with Ctrl-C cleaning up ([`restore_backup`]).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use catalog::BackupRecord;
use jiff::tz::TimeZone;
use storage::Storage;
use storage::manifest::BackupManifest;

use crate::block_lists::BlockLists;
use crate::{
    ArchiveMode, BackupSelector, RecoveryTarget, RestoreError, RestoreOptions, RestoreType, Spool,
    TablespaceMapping, TargetTimeline,
};

/// How a base backup is laid out and configured on restore, beyond where it goes.
#[derive(Debug, Clone, Default)]
pub struct RestoreChoices {
    pub tablespaces: TablespaceMapping,
    pub waldir: Option<PathBuf>,
    pub archive_mode: ArchiveMode,
    pub timeline: TargetTimeline,
    /// `--delta`: reuse a stopped data directory of the backup's cluster, rewriting only what
    /// differs.
    pub delta: bool,
    /// With `delta`: reuse a directory whose pg_wal may hold WAL never archived (a server that
    /// crashed, segments still marked ready), giving that WAL up.
    pub discard_unarchived_wal: bool,
}

/// What a PostgreSQL restore needs beyond the backup and the data directory.
#[derive(Debug, Clone)]
pub struct PostgresRestoreOptions {
    /// The command that fetches one WAL file, without `%f %p`: the lifeline binary, its
    /// repository flags and `wal fetch --cluster <sysid>`, shell-quoted.
    pub restore_program: String,
    /// The read-ahead spool, emptied first: recovery starts from the repository.
    pub spool: Option<Spool>,
    pub parallelism: usize,
    /// Chunk groups read from the repository at once.
    pub transfers: usize,
    /// See [`RestoreOptions::direct_io`].
    pub direct_io: bool,
    /// See [`RestoreOptions::plan_window`].
    pub plan_window: usize,
    /// Check that every chunk exists before writing anything.
    pub verify_first: bool,
    pub choices: RestoreChoices,
    /// Whom the restored files belong to (see [`RestoreOptions::owner`]).
    pub owner: storage::private::Owner,
    /// Bytes written of the backup's size (`storage::progress::none()` for none).
    pub progress: Arc<dyn storage::progress::Progress>,
}

/// A backup restored into a data directory; displays as the line the operator reads.
#[derive(Debug, Clone)]
pub struct RestoredBackup {
    pub backup_id: String,
    pub data_dir: PathBuf,
    /// The backup's manifest; past one plan window, without its files' block lists (the
    /// restore kept them on disk).
    pub manifest: BackupManifest,
    pub files: usize,
    pub bytes: u64,
    pub elapsed: Duration,
    /// What a delta restore kept and changed.
    pub delta: Option<crate::DeltaReport>,
}

impl std::fmt::Display for RestoredBackup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "restored backup {} into {}: {} files, {} MiB in {:.1} s",
            self.backup_id,
            self.data_dir.display(),
            self.files,
            self.bytes >> 20,
            self.elapsed.as_secs_f64()
        )?;
        if let Some(d) = &self.delta {
            write!(
                f,
                " (delta: {} MiB already in place, {} MiB written, {} files created, {} entries removed)",
                d.kept_bytes >> 20,
                d.written_bytes >> 20,
                d.created,
                d.removed
            )?;
        }
        Ok(())
    }
}

impl RestoredBackup {
    /// What the operator does next: start the server, and what it will archive.
    /// What to do next; `bin_dir` is where the backup's major's server is, when found.
    pub fn start_advice(
        &self,
        recovery: &RecoveryTarget,
        archive_mode: ArchiveMode,
        bin_dir: Option<&Path>,
    ) -> String {
        let target = match recovery {
            RecoveryTarget::Immediate => {
                format!("the backup's consistent end ({})", self.manifest.stop_lsn)
            }
            RecoveryTarget::Time(t) => t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
            RecoveryTarget::EndOfArchive => "the end of the archive".to_string(),
        };
        let archiving = match archive_mode {
            ArchiveMode::Off => {
                "the restored server will not archive WAL (archive_mode = 'off' at the end of its \
                 postgresql.auto.conf): when it becomes the primary, delete that line and restart it, \
                 or restore with --archive-mode preserve"
            }
            ArchiveMode::Preserve => {
                "the restored server keeps the backed-up server's archive settings: once promoted it \
                 archives into its archive_command's repository"
            }
        };
        let server = match self.manifest.major() {
            Some(major) => format!("PostgreSQL {major}"),
            None => "PostgreSQL".to_string(),
        };
        let pg_ctl = bin_dir.map_or_else(|| PathBuf::from("pg_ctl"), |dir| dir.join("pg_ctl"));
        format!(
            "next: start {server} on it ({} -D {} start); it replays WAL to {target} and promotes\n{archiving}",
            pg_ctl.display(),
            self.data_dir.display()
        )
    }
}

/// Parse the operator's target time: local time unless it carries an offset.
pub fn parse_until(text: &str, tz: &TimeZone) -> Result<jiff::Timestamp, RestoreError> {
    let text = text.trim();
    if let Ok(ts) = text.parse::<jiff::Timestamp>() {
        return Ok(ts);
    }
    let civil = jiff::civil::DateTime::strptime("%Y-%m-%d %H:%M:%S", text)
        .or_else(|_| jiff::civil::DateTime::strptime("%Y-%m-%dT%H:%M:%S", text))
        .map_err(|_| {
            RestoreError::Refused(format!(
                "--until {text:?} is not a time: use \"YYYY-MM-DD HH:MM:SS\" (local time) or add an offset, e.g. \"2025-12-27 14:30:00+01:00\""
            ))
        })?;
    let zoned = civil
        .to_zoned(tz.clone())
        .map_err(|source| RestoreError::NotLocalTime {
            text: text.to_string(),
            source,
        })?;
    Ok(zoned.timestamp())
}

/// A PostgreSQL restore as asked for, checked before the repository is opened.
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// `--until` as given, for the line that says how it was read.
    until: Option<String>,
    target: Option<jiff::Timestamp>,
    /// `--until latest`: replay everything archived.
    to_end: bool,
    selector: BackupSelector,
    timeline: Option<TargetTimeline>,
    tz: TimeZone,
}

impl RestoreRequest {
    /// `until` a time in `tz` (or `latest`), for a point-in-time restore only; `from` the
    /// backup (latest, daily, weekly, monthly, YYYYMMDD or an id).
    pub fn new(
        restore_type: RestoreType,
        until: Option<&str>,
        from: &str,
        timeline: Option<TargetTimeline>,
        tz: TimeZone,
    ) -> Result<RestoreRequest, RestoreError> {
        let refuse = |why: &str| Err(RestoreError::Refused(why.to_string()));
        let to_end = until.map(str::trim) == Some("latest");
        let target = match (restore_type, until) {
            (RestoreType::Pitr, Some(_)) if to_end => None,
            (RestoreType::Pitr, Some(until)) => Some(parse_until(until, &tz)?),
            (RestoreType::Pitr, None) => {
                return refuse("--type pitr needs --until \"YYYY-MM-DD HH:MM:SS\" (or latest)");
            }
            (_, Some(_)) => return refuse("--until applies to --type pitr only"),
            _ if timeline.is_some() => {
                return refuse(
                    "--target-timeline applies to --type pitr only: a full restore recovers on the backup's own timeline",
                );
            }
            _ => None,
        };
        let selector = from.parse().map_err(RestoreError::Refused)?;
        Ok(RestoreRequest {
            until: until.map(str::to_string),
            target,
            to_end,
            selector,
            timeline,
            tz,
        })
    }
}

/// The backup to restore, where recovery stops, and the timeline it follows.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub backup: BackupRecord,
    pub recovery: RecoveryTarget,
    /// Written as a number after a PITR or end-of-archive plan: PostgreSQL's own `latest` could
    /// pick a newer timeline that branched off before the backup and refuse to start.
    pub timeline: TargetTimeline,
}

/// The repository's cluster (system identifier, segment size) and its PostgreSQL backups.
///
/// The catalog is read at the call, so the future holds no reference to it (a catalog is not
/// shared between threads); its error is reported where the original order puts it.
pub fn cluster_backups<'a>(
    storage: &'a dyn Storage,
    catalog: &catalog::Catalog,
) -> impl Future<Output = Result<(u64, u64, Vec<BackupRecord>), RestoreError>> + Send + 'a {
    let listed = catalog.backups(Some(storage::Service::Postgresql));
    async move {
        let identity = storage::manifest::ClusterIdentity::load(storage)
            .await?
            .ok_or_else(|| {
                RestoreError::Refused(
                    "the repository holds no cluster yet: nothing was ever archived or backed up there"
                        .into(),
                )
            })?;
        let sysid = identity
            .system_identifier()
            .ok_or_else(|| RestoreError::Refused("cluster.json is corrupt".into()))?;
        let backups: Vec<_> = listed?
            .into_iter()
            .filter(|b| b.system_identifier == sysid)
            .collect();
        if backups.is_empty() {
            return Err(RestoreError::Refused(
                "the catalog lists no PostgreSQL backups: run `lifeline backup postgres`, or `lifeline catalog rebuild` if the catalog was lost"
                    .into(),
            ));
        }
        Ok((sysid, identity.segment_size, backups))
    }
}

/// Choose the backup for `request` and prove the archive carries it to the target; nothing
/// is written. `said` receives the lines the operator reads as the plan takes shape (how the
/// target was read, the timelines passed over, the backup chosen), also when it is refused.
pub fn plan_restore<'a>(
    storage: &'a dyn Storage,
    catalog: &catalog::Catalog,
    request: &'a RestoreRequest,
    said: &'a mut Vec<String>,
) -> impl Future<Output = Result<RestorePlan, RestoreError>> + Send + 'a {
    let cluster = cluster_backups(storage, catalog);
    async move {
        let (sysid, segment_size, backups) = cluster.await?;
        let asked_timeline = request.timeline.unwrap_or_default();
        if let Some(target) = request.target {
            said.push(format!(
                "recovery target: {} (resolved from {:?} in time zone {})",
                target.strftime("%Y-%m-%d %H:%M:%S UTC"),
                request.until.as_deref().unwrap_or_default(),
                request.tz.iana_name().unwrap_or("local")
            ));
            let wal = crate::archived_wal(storage, sysid, segment_size).await?;
            let histories = crate::timeline_histories(storage, sysid, &wal).await?;
            let plan = crate::plan_pitr(
                &backups,
                &wal,
                &histories,
                target,
                segment_size,
                asked_timeline,
            )?;
            said.extend(plan.notes.iter().cloned());
            let last_segment =
                crate::confirm_target_reachable(storage, sysid, &plan, target).await?;
            said.push(format!(
                "using backup {} (timeline {}); recovery replays WAL through {} on timeline {}",
                plan.backup.backup_id, plan.backup.timeline, last_segment, plan.timeline.0
            ));
            return Ok(RestorePlan {
                backup: plan.backup,
                recovery: RecoveryTarget::Time(target),
                timeline: TargetTimeline::Exact(plan.timeline),
            });
        }
        let backup = crate::select_backup(
            &backups,
            storage::BackupKind::Base,
            &request.selector,
            jiff::Timestamp::now(),
            &request.tz,
        )?;
        if !request.to_end {
            return Ok(RestorePlan {
                backup,
                recovery: RecoveryTarget::Immediate,
                timeline: TargetTimeline::Current,
            });
        }
        // Refused before anything is written when the chain from the backup breaks.
        let wal = crate::archived_wal(storage, sysid, segment_size).await?;
        let histories = crate::timeline_histories(storage, sysid, &wal).await?;
        let plan =
            crate::plan_end_of_archive(&backup, &wal, &histories, segment_size, asked_timeline)?;
        said.extend(plan.notes.iter().cloned());
        said.push(format!(
            "using backup {} (timeline {}); recovery replays all archived WAL on timeline {}",
            backup.backup_id, backup.timeline, plan.timeline.0
        ));
        Ok(RestorePlan {
            backup,
            recovery: RecoveryTarget::EndOfArchive,
            timeline: TargetTimeline::Exact(plan.timeline),
        })
    }
}

/// The outline of `backup`'s manifest (its first read), and its block lists: kept if at most
/// `keep_up_to`, else to read again.
async fn read_backup_outline(
    storage: &dyn Storage,
    backup: &BackupRecord,
    keep_up_to: usize,
) -> Result<(BackupManifest, BlockLists), RestoreError> {
    let outline = crate::block_lists::read_outline(storage, &backup.backup_id, keep_up_to)
        .await
        .map_err(|source| RestoreError::ReadManifest {
            backup_id: backup.backup_id.clone(),
            source: Box::new(source),
        })?;
    Ok(BlockLists::of(outline))
}

fn restore_options(
    options: &PostgresRestoreOptions,
    recovery: &RecoveryTarget,
    data_dir: &Path,
    interrupted: Arc<AtomicBool>,
) -> RestoreOptions {
    let choices = &options.choices;
    RestoreOptions {
        data_dir: data_dir.to_path_buf(),
        parallelism: options.parallelism,
        transfers: options.transfers,
        direct_io: options.direct_io,
        verify_first: options.verify_first,
        target: recovery.clone(),
        // PostgreSQL expands `%` in restore_command: a `%` of a path is written `%%`.
        restore_command: format!("{} %f %p", options.restore_program.replace('%', "%%")),
        tablespaces: choices.tablespaces.clone(),
        waldir: choices.waldir.clone(),
        archive_mode: choices.archive_mode,
        timeline: choices.timeline,
        interrupted,
        owner: options.owner,
        progress: options.progress.clone(),
        delta: choices.delta,
        discard_unarchived_wal: choices.discard_unarchived_wal,
        plan_window: options.plan_window,
    }
}

/// What `restore_backup` would do, for `SIMULATE_MODE`.
#[derive(Debug)]
pub struct RestorePreview {
    pub backup_id: String,
    pub data_dir: PathBuf,
    pub files: usize,
    pub bytes: u64,
    /// A delta restore, and how many entries it would remove.
    pub delta: Option<usize>,
    pub tablespaces: Vec<(u32, PathBuf)>,
    pub waldir: Option<PathBuf>,
    /// Whether every pack the backup needs was found (false: the check was skipped).
    pub packs_checked: bool,
}

/// Every check `restore_backup` runs before its first write (the manifest, the places, the
/// packs), and what it would write; nothing is written, nor any lease taken.
pub async fn preview_restore(
    storage: &dyn Storage,
    backup: &BackupRecord,
    recovery: &RecoveryTarget,
    data_dir: &Path,
    options: &PostgresRestoreOptions,
) -> Result<RestorePreview, RestoreError> {
    // The preview needs the counts only.
    let (manifest, lists) = read_backup_outline(storage, backup, 0).await?;
    let opts = restore_options(options, recovery, data_dir, Arc::default());
    let destinations = crate::restore_base::preview_base(storage, &manifest, &lists, &opts).await?;
    let restored: Vec<_> = crate::restore_base::restored_entries(&manifest)
        .filter(|e| e.kind == storage::manifest::EntryKind::File)
        .collect();
    Ok(RestorePreview {
        backup_id: backup.backup_id.clone(),
        data_dir: data_dir.to_path_buf(),
        files: restored.len(),
        bytes: restored.iter().map(|e| e.size).sum(),
        delta: destinations.delta,
        tablespaces: destinations.tablespaces,
        waldir: destinations.waldir,
        packs_checked: options.verify_first,
    })
}

impl std::fmt::Display for RestorePreview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.delta {
            Some(removed) => format!(
                "onto the stopped data directory of its cluster, keeping what matches, rewriting \
                 what differs and removing {removed} entries it does not hold, in"
            ),
            None => "into the empty or new directory".to_string(),
        };
        writeln!(
            f,
            "SIMULATE_MODE: would restore backup {} {how} {}: {} files, {:.1} MiB",
            self.backup_id,
            self.data_dir.display(),
            self.files,
            self.bytes as f64 / 1048576.0
        )?;
        for (oid, dir) in &self.tablespaces {
            writeln!(f, "  tablespace {oid} into {}", dir.display())?;
        }
        if let Some(dir) = &self.waldir {
            writeln!(f, "  pg_wal into {}", dir.display())?;
        }
        let packs = match self.packs_checked {
            true => "every pack it needs is in the repository",
            false => "the packs were not looked for (--skip-verify)",
        };
        write!(
            f,
            "{packs}; nothing was changed: unset SIMULATE_MODE to restore"
        )
    }
}

/// Restore `backup` into `data_dir` with `recovery` written for the server's start, under a
/// lease that keeps `prune` off the backup; SIGINT, SIGTERM or SIGHUP stop it and remove what
/// it wrote.
pub async fn restore_backup(
    storage: Arc<dyn Storage>,
    backup: &BackupRecord,
    recovery: &RecoveryTarget,
    data_dir: &Path,
    options: &PostgresRestoreOptions,
) -> Result<RestoredBackup, RestoreError> {
    // Recovery starts from the repository: nothing a past recovery read ahead.
    if let Some(spool) = &options.spool {
        spool.clear(backup.system_identifier)?;
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    tracing::debug!(backup = %backup.backup_id, "reading the manifest's outline");
    let keep_up_to = options.plan_window;
    let (manifest, lists) = read_backup_outline(storage.as_ref(), backup, keep_up_to).await?;
    tracing::debug!(files = manifest.files.len(), "manifest read");
    let choices = &options.choices;
    let opts = restore_options(options, recovery, data_dir, interrupted.clone());
    let started = Instant::now();
    storage::lease::take_here(storage.as_ref(), &backup.backup_id).await;
    let running = Arc::new(AtomicBool::new(true));
    tokio::spawn(watch_signals(interrupted, running.clone(), choices.delta));
    let restored = crate::restore_base::restore_with(storage, &manifest, lists, &opts).await;
    running.store(false, Ordering::SeqCst);
    let report = restored.map_err(|source| RestoreError::RestoreInto {
        what: backup.backup_id.clone(),
        into: data_dir.to_path_buf(),
        source: Box::new(source),
    })?;
    options.progress.finish();
    Ok(RestoredBackup {
        backup_id: backup.backup_id.clone(),
        data_dir: data_dir.to_path_buf(),
        manifest,
        files: report.files,
        bytes: report.bytes,
        elapsed: started.elapsed(),
        delta: report.delta,
    })
}

/// While a restore runs, the first SIGINT, SIGTERM or SIGHUP (Ctrl-C, `systemctl stop`, a lost
/// SSH session) asks it to stop and clean up; another, or one after the restore, ends the
/// process at once as the signal would have.
async fn watch_signals(interrupted: Arc<AtomicBool>, running: Arc<AtomicBool>, delta: bool) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    loop {
        let signal = tokio::select! {
            _ = int.recv() => Signal::Int,
            _ = term.recv() => Signal::Term,
            _ = hup.recv() => Signal::Hup,
        };
        if running.load(Ordering::SeqCst) && !interrupted.swap(true, Ordering::SeqCst) {
            let and_then = if delta {
                "saying what it leaves (a --delta restore run again finishes what it began)"
            } else {
                "removing what it wrote"
            };
            eprintln!(
                "lifeline: {}: stopping the restore and {and_then} (send it again to stop at once)",
                signal.name()
            );
            continue;
        }
        std::process::exit(signal.exit_code());
    }
}

/// A signal that stops a restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    Int,
    Term,
    Hup,
}

impl Signal {
    fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
            Signal::Hup => "SIGHUP",
        }
    }

    /// The status a shell reports for a process the signal ended: 128 + its number.
    fn exit_code(self) -> i32 {
        let number = match self {
            Signal::Int => rustix::process::Signal::INT,
            Signal::Term => rustix::process::Signal::TERM,
            Signal::Hup => rustix::process::Signal::HUP,
        };
        128 + number.as_raw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_is_local_unless_it_has_an_offset() {
        let tz = TimeZone::get("Europe/Berlin").unwrap_or(TimeZone::fixed(jiff::tz::offset(1)));
        let local = parse_until("2025-12-27 14:30:00", &tz).expect("local");
        assert_eq!(local.to_string(), "2025-12-27T13:30:00Z");
        let offset = parse_until("2025-12-27 14:30:00+00:00", &tz).expect("offset");
        assert_eq!(offset.to_string(), "2025-12-27T14:30:00Z");
        for bad in ["yesterday", "2025-13-01 00:00:00", "2025-12-27", ""] {
            assert!(parse_until(bad, &tz).is_err(), "{bad:?} accepted");
        }
    }

    fn refusal(
        restore_type: RestoreType,
        until: Option<&str>,
        timeline: Option<TargetTimeline>,
    ) -> String {
        RestoreRequest::new(restore_type, until, "latest", timeline, TimeZone::UTC)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn a_request_that_mixes_full_and_pitr_is_refused_before_the_repository_is_opened() {
        assert!(refusal(RestoreType::Pitr, None, None).contains("--type pitr needs --until"));
        assert!(
            refusal(RestoreType::Full, Some("latest"), None)
                .contains("--until applies to --type pitr")
        );
        assert!(
            refusal(RestoreType::Full, None, Some(TargetTimeline::Current))
                .contains("--target-timeline applies to --type pitr only")
        );
        let to_end = RestoreRequest::new(
            RestoreType::Pitr,
            Some(" latest "),
            "latest",
            None,
            TimeZone::UTC,
        )
        .expect("--until latest");
        assert!(to_end.to_end && to_end.target.is_none());
    }

    #[test]
    fn the_report_says_what_was_restored_and_how_to_start_it() {
        let mut manifest = testing::fixtures::base_manifest();
        manifest.stop_lsn = "0/3000100".parse().expect("an LSN");
        let restored = RestoredBackup {
            delta: None,
            backup_id: "20251227T010000Z-base".into(),
            data_dir: "/srv/pg".into(),
            manifest,
            files: 1200,
            bytes: 5 << 20,
            elapsed: Duration::from_millis(1250),
        };
        assert_eq!(
            restored.to_string(),
            "restored backup 20251227T010000Z-base into /srv/pg: 1200 files, 5 MiB in 1.2 s"
        );
        let advice = restored.start_advice(&RecoveryTarget::Immediate, ArchiveMode::Off, None);
        let (start, archiving) = advice.split_once('\n').expect("two lines");
        assert_eq!(
            start,
            "next: start PostgreSQL 15 on it (pg_ctl -D /srv/pg start); it replays WAL to the backup's consistent end (0/3000100) and promotes"
        );
        let bin = Path::new("/usr/lib/postgresql/15/bin");
        let advice = restored.start_advice(&RecoveryTarget::Immediate, ArchiveMode::Off, Some(bin));
        assert!(
            advice.starts_with("next: start PostgreSQL 15 on it (/usr/lib/postgresql/15/bin/pg_ctl -D /srv/pg start)"),
            "{advice}"
        );
        assert!(archiving.contains("archive_mode = 'off'"), "{archiving}");
        let advice =
            restored.start_advice(&RecoveryTarget::EndOfArchive, ArchiveMode::Preserve, None);
        assert!(
            advice.contains("replays WAL to the end of the archive"),
            "{advice}"
        );
        assert!(
            advice.contains("keeps the backed-up server's archive settings"),
            "{advice}"
        );
    }

    #[test]
    fn a_signal_after_the_restore_exits_with_the_shells_status_for_it() {
        assert_eq!(Signal::Int.exit_code(), 130);
        assert_eq!(Signal::Term.exit_code(), 143);
        assert_eq!(Signal::Hup.exit_code(), 129);
    }

    #[tokio::test]
    async fn a_repository_without_a_cluster_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let catalog = catalog::Catalog::open(dir.path().join("catalog.db")).expect("catalog");
        let storage = testing::MemoryStorage::new();
        let refused = cluster_backups(&storage, &catalog)
            .await
            .expect_err("no cluster");
        assert!(
            refused
                .to_string()
                .contains("the repository holds no cluster yet"),
            "{refused}"
        );
    }
}
