//! Base backups read from a streaming standby, so that the nightly backup does not load the
//! primary's disks. The backup starts and stops on the primary (its checkpoint, its
//! `backup_label`, its backup-end record in the WAL it archives); once the standby has
//! replayed past the start, the data files are read from the standby's data directory. What a
//! standby does not replicate comes from the primary over the connection: the files at the top
//! of PGDATA (`postgresql.conf`, `postgresql.auto.conf`, `pg_hba.conf`, ...), so a restore
//! becomes the primary, never a standby.
//!
//! Why this restores: recovery starts at the primary's checkpoint (from `backup_label`), the
//! standby's files are at least as new as that checkpoint (replay has passed it) and no newer
//! than the backup's stop (the standby replays only what the primary wrote before it), and
//! while the backup runs the primary writes full pages, so replay repairs any page the copy
//! caught half-written, exactly as for a copy of the primary itself.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use storage::manifest::EntryKind;
use storage::wal::Lsn;
use tracing::{info, warn};

use crate::error::PgContext;
use crate::walk::{FILES_OMITTED, Walk, WalkEntry};
use crate::{ArchiveError, ConnectionOptions};

/// Whether a base backup reads a standby (`backup-standby`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyMode {
    /// The standby when it is up and close behind; else the primary, with a warning.
    Prefer,
    /// The standby, or no backup.
    Require,
}

/// The standby a base backup may read (`[standby]`).
#[derive(Debug, Clone)]
pub struct StandbyOptions {
    pub mode: StandbyMode,
    /// The standby's server (the primary's user, password and database).
    pub connection: ConnectionOptions,
    /// The standby's data directory, readable where lifeline runs.
    pub data_dir: PathBuf,
    /// A standby further behind than this is not used (`standby-max-lag`).
    pub max_lag: Duration,
}

/// A standby found fit to read, connected.
pub(crate) struct Standby {
    client: tokio_postgres::Client,
    pub(crate) data_dir: PathBuf,
    pub(crate) name: String,
    max_lag: Duration,
}

/// The standby to read, when one is configured and fit; `Ok(None)` when the primary is read
/// (no standby configured, or `prefer` and the standby is not fit, with a warning).
pub(crate) async fn choose(
    primary: &tokio_postgres::Client,
    system_identifier: u64,
    options: Option<&StandbyOptions>,
) -> Result<Option<Standby>, ArchiveError> {
    let Some(options) = options else {
        return Ok(None);
    };
    match check(primary, system_identifier, options).await {
        Ok(standby) => Ok(Some(standby)),
        Err(why) => unfit(options, why).map(|()| None),
    }
}

/// A standby that cannot be read: `require` stops the backup, `prefer` reads the primary.
pub(crate) fn unfit(options: &StandbyOptions, why: String) -> Result<(), ArchiveError> {
    let name = address(&options.connection);
    match options.mode {
        StandbyMode::Require => Err(ArchiveError::Precondition(format!(
            "backup-standby = \"require\", but the standby {name} cannot be read: {why}"
        ))),
        StandbyMode::Prefer => {
            warn!("the standby {name} is not used ({why}): backing up from the primary");
            Ok(())
        }
    }
}

fn address(connection: &ConnectionOptions) -> String {
    format!("{}:{}", connection.host, connection.port)
}

async fn check(
    primary: &tokio_postgres::Client,
    system_identifier: u64,
    options: &StandbyOptions,
) -> Result<Standby, String> {
    let name = address(&options.connection);
    let client = options
        .connection
        .connect()
        .await
        .map_err(|e| format!("it does not answer ({})", storage::error_chain(&e)))?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(),
                    (SELECT system_identifier::text FROM pg_control_system()),
                    coalesce(pg_last_wal_replay_lsn()::text, '0/0')",
            &[],
        )
        .await
        .map_err(|e| format!("it does not say where it is ({e})"))?;
    if !row.get::<_, bool>(0) {
        return Err("it is not in recovery: it is a primary, not a standby".into());
    }
    let sysid: String = row.get(1);
    if sysid != system_identifier.to_string() {
        return Err(format!(
            "it is cluster {sysid}, not the primary's {system_identifier}: [standby] names another cluster's server"
        ));
    }
    let replayed: Lsn = row.get::<_, String>(2).parse()?;
    let primary_at: Lsn = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(|e| format!("the primary does not say where it is ({e})"))?
        .get::<_, String>(0)
        .parse()?;
    // How far behind it is shows once the backup has started: it must replay past the
    // backup's checkpoint within standby-max-lag (`reach_checkpoint`).
    let control = options.data_dir.join("global/pg_control");
    let bytes = tokio::fs::read(&control)
        .await
        .map_err(|e| format!("its data directory cannot be read here ({}: {e}): set [standby] data-dir to it, on the host lifeline runs on", control.display()))?;
    let found = storage::pg_version::parse_control_file(&bytes)?.system_identifier;
    if found != system_identifier {
        return Err(format!(
            "[standby] data-dir {} is cluster {found}, not {system_identifier}",
            options.data_dir.display()
        ));
    }
    info!(standby = %name, %replayed, primary = %primary_at, "reading the data files from the standby");
    Ok(Standby {
        client,
        data_dir: options.data_dir.clone(),
        name,
        max_lag: options.max_lag,
    })
}

impl Standby {
    /// Make the standby's data files at least as new as the primary's backup checkpoint
    /// (redo at `start`, record at `checkpoint`): replay past the checkpoint record, then a
    /// restartpoint (`CHECKPOINT` on the standby) so that what replay changed before it is on
    /// disk, not only in the standby's buffers. Recovery of the backup starts at that redo
    /// point and never replays what came before it. At most the standby's lag.
    pub(crate) async fn reach_checkpoint(&self, start: Lsn, checkpoint: Lsn) -> Result<(), String> {
        let deadline = Instant::now() + self.max_lag;
        loop {
            let row = self
                .client
                .query_one(
                    "SELECT coalesce(pg_last_wal_replay_lsn()::text, '0/0'),
                            (SELECT redo_lsn::text FROM pg_control_checkpoint())",
                    &[],
                )
                .await
                .map_err(|e| format!("it stopped answering ({e})"))?;
            let replayed: Lsn = row.get::<_, String>(0).parse()?;
            let redo: Lsn = row.get::<_, String>(1).parse()?;
            if redo >= start {
                return Ok(());
            }
            if replayed > checkpoint {
                self.client.batch_execute("CHECKPOINT").await.map_err(|e| {
                    format!("its restartpoint failed ({e}): the backup user needs superuser (or, from 15, pg_checkpoint)")
                })?;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "it did not replay to the backup's checkpoint {checkpoint} and make a restartpoint there within standby-max-lag ({} s; it has replayed to {replayed}, its last restartpoint is at {redo})",
                    self.max_lag.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Standby {
    /// Still a standby after the copy: had it been promoted meanwhile (its session would have
    /// survived), its files could hold writes the primary never made.
    pub(crate) async fn still_in_recovery(&self) -> Result<(), ArchiveError> {
        let in_recovery: bool = self
            .client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .doing("asking the standby whether it is still one after the copy")?
            .get(0);
        if !in_recovery {
            return Err(ArchiveError::Precondition(format!(
                "the standby {} was promoted while its files were copied: the copy may hold writes the old primary never made; no backup was recorded: back up the new primary",
                self.name
            )));
        }
        Ok(())
    }
}

/// Where the primary's newest checkpoint record is (the backup's, just made), and its
/// timeline.
pub(crate) async fn primary_checkpoint(
    primary: &tokio_postgres::Client,
) -> Result<(Lsn, u32), ArchiveError> {
    let row = primary
        .query_one(
            "SELECT checkpoint_lsn::text, timeline_id::bigint FROM pg_control_checkpoint()",
            &[],
        )
        .await
        .doing("reading the backup's checkpoint (pg_control_checkpoint)")?;
    let checkpoint: Lsn = row
        .get::<_, String>(0)
        .parse()
        .map_err(ArchiveError::Precondition)?;
    let timeline = u32::try_from(row.get::<_, i64>(1)).unwrap_or(0);
    Ok((checkpoint, timeline))
}

/// The data directory about to be read must hold everything before the backup's start: its
/// `pg_control` names a checkpoint (or a standby's restartpoint) whose redo is at or after the
/// start, on the primary's timeline. A stale copy, another standby's directory or a
/// directory of the same cluster on another timeline is refused here, before it is read; and
/// a directory read as the primary's must not be a standby's.
pub(crate) async fn check_fresh(
    data_dir: &Path,
    start: Lsn,
    timeline: u32,
    from_standby: bool,
) -> Result<(), ArchiveError> {
    let control = data_dir.join("global/pg_control");
    let bytes = tokio::fs::read(&control)
        .await
        .map_err(|source| ArchiveError::Io {
            path: control.clone(),
            source,
        })?;
    let facts =
        storage::pg_version::parse_control_file(&bytes).map_err(ArchiveError::Precondition)?;
    let setting = if from_standby {
        "[standby] data-dir"
    } else {
        "PGDATA"
    };
    if !from_standby {
        for signal in ["standby.signal", "recovery.signal"] {
            let path = data_dir.join(signal);
            let present = tokio::fs::try_exists(&path)
                .await
                .map_err(|source| ArchiveError::Io { path, source })?;
            if present {
                return Err(ArchiveError::Precondition(format!(
                    "PGDATA {} holds {signal}: it is a standby's or a recovering server's data directory, not the primary's; set PGDATA to the primary's (or back up from the standby with [standby])",
                    data_dir.display()
                )));
            }
        }
    }
    if facts.redo < start || facts.timeline != timeline {
        return Err(ArchiveError::Precondition(format!(
            "{setting} {} is not the data directory of the server being backed up: its last checkpoint (redo {} on timeline {}) is not the backup's (redo {start} on timeline {timeline}); set {setting} to that server's data directory",
            data_dir.display(),
            facts.redo,
            facts.timeline
        )));
    }
    Ok(())
}

/// Files at the top of PGDATA larger than this are not configuration: refused rather than
/// held in memory.
const TOP_FILE_MAX: i64 = 64 << 20;

/// A name the primary listed must be one plain file name (it is joined to the staging
/// directory and recorded in the manifest), and the file small.
fn check_top_file(name: &str, size: i64) -> Result<(), ArchiveError> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if !plain {
        return Err(ArchiveError::Precondition(format!(
            "the primary listed {name:?} at the top of its data directory: not a plain file name; refusing to copy it"
        )));
    }
    if size > TOP_FILE_MAX {
        return Err(ArchiveError::Precondition(format!(
            "{name} at the top of the primary's data directory is {} MiB: move it out of PGDATA (a configuration file is small)",
            size >> 20
        )));
    }
    Ok(())
}

/// A file at the top of the primary's PGDATA, copied over the connection.
struct PrimaryFile {
    name: String,
    bytes: Vec<u8>,
    mtime: i64,
}

/// Replace the files at the top of the standby's walk (its configuration, `standby.signal`)
/// by the primary's, read over `primary` and staged in `staging` (a private directory that
/// must live until the files are copied). Returns the bytes read from the primary.
pub(crate) async fn take_top_files_from_primary(
    primary: &tokio_postgres::Client,
    walk: &mut Walk,
    staging: &Path,
) -> Result<u64, ArchiveError> {
    let files = primary_top_files(primary).await?;
    walk.entries
        .retain(|e| e.rel.contains('/') || e.kind != EntryKind::File);
    let mut read = 0;
    for file in files {
        let abs = staging.join(&file.name);
        // Staged in a private directory for this run only: no durability needed; never
        // through anything already there.
        let written = async {
            use tokio::io::AsyncWriteExt;
            let mut out = tokio::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&abs)
                .await?;
            out.write_all(&file.bytes).await
        };
        written.await.map_err(|source| ArchiveError::Io {
            path: abs.clone(),
            source,
        })?;
        read += file.bytes.len() as u64;
        walk.entries.push(WalkEntry {
            rel: file.name,
            abs,
            kind: EntryKind::File,
            mode: 0o600,
            size: file.bytes.len() as u64,
            mtime: file.mtime,
        });
    }
    walk.entries.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(read)
}

async fn primary_top_files(
    primary: &tokio_postgres::Client,
) -> Result<Vec<PrimaryFile>, ArchiveError> {
    let rows = primary
        .query(
            "SELECT name, (s).size, extract(epoch FROM (s).modification)::bigint
             FROM (SELECT name, pg_catalog.pg_stat_file(name, true) AS s
                   FROM pg_catalog.pg_ls_dir('.') AS name) AS f
             WHERE (s).size IS NOT NULL AND NOT (s).isdir ORDER BY name",
            &[],
        )
        .await
        .doing("listing the primary's configuration files (pg_ls_dir, pg_stat_file: needs superuser or EXECUTE on them)")?;
    let mut files = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        let size: i64 = row.get(1);
        // The primary's own state (pid file, options, a label of a backup) is not copied, as
        // from any data directory.
        if FILES_OMITTED.contains(&name.as_str()) || name == "standby.signal" {
            continue;
        }
        check_top_file(&name, size)?;
        let read: Option<Vec<u8>> = primary
            .query_one(
                "SELECT pg_catalog.pg_read_binary_file($1, 0, $2, true)",
                &[&name, &size],
            )
            .await
            .doing("reading a configuration file of the primary (pg_read_binary_file: needs superuser or EXECUTE on it)")?
            .get(0);
        // Gone since it was listed: as a file a copy would not have found.
        let Some(bytes) = read else {
            continue;
        };
        files.push(PrimaryFile {
            name,
            bytes,
            mtime: row.get(2),
        });
    }
    Ok(files)
}
