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

/// An error and its causes on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
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
        .map_err(|e| format!("it does not answer ({})", chain(&e)))?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(),
                    (SELECT system_identifier::text FROM pg_control_system()),
                    coalesce(pg_last_wal_replay_lsn()::text, '0/0'),
                    coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), -1)::float8",
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
    let behind = Duration::from_secs_f64(row.get::<_, f64>(3).max(0.0));
    if replayed < primary_at && behind > options.max_lag {
        return Err(format!(
            "it has replayed to {replayed} while the primary is at {primary_at}, its last replayed transaction {} s old, beyond standby-max-lag ({} s)",
            behind.as_secs(),
            options.max_lag.as_secs()
        ));
    }
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
                    format!("its restartpoint failed ({e}): the backup user needs superuser or pg_checkpoint")
                })?;
                continue;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "it did not replay to the backup's checkpoint {checkpoint} within standby-max-lag ({} s; it is at {replayed})",
                    self.max_lag.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Where the primary's newest checkpoint record is (the backup's, just made).
pub(crate) async fn primary_checkpoint(
    primary: &tokio_postgres::Client,
) -> Result<Lsn, ArchiveError> {
    let text: String = primary
        .query_one(
            "SELECT checkpoint_lsn::text FROM pg_control_checkpoint()",
            &[],
        )
        .await
        .doing("reading the backup's checkpoint (pg_control_checkpoint)")?
        .get(0);
    text.parse().map_err(ArchiveError::Precondition)
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
        // Staged in a private directory for this run only: no durability needed.
        tokio::fs::write(&abs, &file.bytes)
            .await
            .map_err(|source| ArchiveError::Io {
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
            "SELECT name, extract(epoch FROM (pg_stat_file(name)).modification)::bigint
             FROM pg_ls_dir('.') AS name
             WHERE NOT (pg_stat_file(name)).isdir ORDER BY name",
            &[],
        )
        .await
        .doing("listing the primary's configuration files (pg_ls_dir; needs superuser or pg_read_server_files)")?;
    let mut files = Vec::new();
    for row in rows {
        let name: String = row.get(0);
        // The primary's own state (pid file, options, a label of a backup) is not copied, as
        // from any data directory.
        if FILES_OMITTED.contains(&name.as_str()) || name == "standby.signal" {
            continue;
        }
        let bytes: Vec<u8> = primary
            .query_one("SELECT pg_read_binary_file($1)", &[&name])
            .await
            .doing("reading a configuration file of the primary (pg_read_binary_file; needs superuser or pg_read_server_files)")?
            .get(0);
        files.push(PrimaryFile {
            name,
            bytes,
            mtime: row.get(1),
        });
    }
    Ok(files)
}
