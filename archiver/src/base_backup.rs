//! A physical base backup of a running cluster.
//!
//! `pg_backup_start` (non-exclusive, on one session), copy PGDATA, `pg_backup_stop`, then wait
//! until the WAL from the start to the stop LSN is in the repository: only then is the backup
//! restorable, and only then is its manifest written.
//!
//! The copy is a bounded pipeline: one reader thread cuts files into blocks (relation files)
//! or content-defined chunks (the bundle of small files) and sends them through a bounded
//! channel; up to `parallelism` chunks at a time are hashed and compressed on blocking threads
//! and written. A chunk the previous backup already stored is not written again. Memory is
//! bounded by the channel capacity times the largest chunk, whatever the size of the database.
//!
//! Tablespaces are copied as though their version directory lived at `pg_tblspc/<oid>/` in
//! PGDATA, and the manifest names each one (oid, name, original location); it records no links
//! at all, so a restore decides where every byte goes (see [`crate::walk`]).

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use storage::chunking::{self, content_defined_chunks};
use storage::manifest::{BackupManifest, EXACT_COUNT_LIMIT, EntryKind, FileEntry, MANIFEST_FORMAT};
use storage::pg_version::{self, Major, Support};
use storage::progress::Progress;
use storage::stages::Stages;
use storage::tuning::Tuner;
use storage::wal::{Lsn, Segment, TimelineId, WalFileName};
use storage::{BackupKind, Compression, Service, Storage, StorageExt, layout};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::block_spool::{BlockSpool, SpooledLists};
use crate::chunk_index::ChunkIndex;
use crate::chunk_store::{self, Lineage, pack_jobs};
use crate::error::PgContext;
use crate::publish::{new_backup_id, publish_base_backup};
use crate::standby::{self, StandbyOptions};
use crate::walk::{WalkEntry, match_tablespaces, walk_data_dir};
use crate::{ArchiveError, ConnectionOptions, cluster};

#[derive(Debug, Clone)]
pub struct BaseBackupOptions {
    pub connection: ConnectionOptions,
    /// PGDATA; asked of the server (`SHOW data_directory`) when not given.
    pub data_dir: Option<PathBuf>,
    pub compression: Compression,
    pub block_size: usize,
    pub parallelism: usize,
    /// Packs written at once (`transfers`), each up to 18 MiB in memory.
    pub transfers: usize,
    /// How long to wait for the backup's WAL to reach the repository.
    pub wal_wait: Duration,
    pub catalog_path: PathBuf,
    /// The policy whose daily label a new backup starts with.
    pub retention: catalog::RetentionPolicy,
    /// Read the data files from this standby (`backup-standby`); none: from the primary.
    pub standby: Option<StandbyOptions>,
    /// Bytes copied of the files found (`storage::progress::none()` for none).
    pub progress: Arc<dyn Progress>,
}

pub(crate) struct ServerFacts {
    pub(crate) version: String,
    pub(crate) major_version: u32,
    pub(crate) catalog_version: u64,
    /// What this major's base backup differs in (see `storage::pg_version`).
    pub(crate) layout: &'static Major,
    pub(crate) system_identifier: u64,
    pub(crate) data_directory: PathBuf,
    pub(crate) segment_size: u64,
    pub(crate) archive_mode: String,
    /// The directory this server version keeps inside every tablespace,
    /// `PG_<major>_<catversion>`; the others there belong to other majors.
    pub(crate) tablespace_version_dir: String,
}

pub(crate) async fn server_facts(
    client: &tokio_postgres::Client,
) -> Result<ServerFacts, ArchiveError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'),
                    (SELECT system_identifier::text FROM pg_control_system()),
                    current_setting('data_directory'),
                    (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'),
                    current_setting('archive_mode'),
                    current_setting('server_version_num'),
                    (SELECT catalog_version_no::text FROM pg_control_system())",
            &[],
        )
        .await
        .doing("reading the server's settings (the backup user needs pg_read_all_settings or superuser)")?;
    let number = |s: String, what: &str| {
        s.parse::<u64>().map_err(|_| {
            ArchiveError::Precondition(format!("the server reported an unreadable {what}: {s:?}"))
        })
    };
    let version: String = row.get(0);
    let version_num = number(row.get(5), "server_version_num")?;
    let catalog_version = number(row.get(6), "catalog version")?;
    let major_version = pg_version::major_of_version_num(u32::try_from(version_num).unwrap_or(0));
    let support = Support::of(major_version);
    let layout = support
        .facts_for_backup()
        .map_err(ArchiveError::Precondition)?;
    if let Support::Newer(major) = support {
        warn!(
            "PostgreSQL {major} ({version}) is newer than lifeline knows ({} to {}): backing up with {}'s layout; run `lifeline drill` on this backup before relying on it",
            pg_version::OLDEST,
            pg_version::NEWEST,
            layout
        );
    }
    Ok(ServerFacts {
        version,
        major_version,
        catalog_version,
        layout,
        system_identifier: number(row.get(1), "system identifier")?,
        data_directory: PathBuf::from(row.get::<_, String>(2)),
        segment_size: number(row.get(3), "wal_segment_size")?,
        archive_mode: row.get(4),
        tablespace_version_dir: tablespace_version_dir(version_num, catalog_version),
    })
}

/// `PG_15_202209061`: PostgreSQL's `TABLESPACE_VERSION_DIRECTORY` (`PG_9.6_...` before 10).
fn tablespace_version_dir(server_version_num: u64, catalog_version: u64) -> String {
    let major = if server_version_num >= 100_000 {
        (server_version_num / 10_000).to_string()
    } else {
        format!(
            "{}.{}",
            server_version_num / 10_000,
            server_version_num / 100 % 100
        )
    };
    format!("PG_{major}_{catalog_version}")
}

/// The tablespaces the server knows (not `pg_default` and `pg_global`, which live in PGDATA):
/// (oid, name, location).
pub(crate) async fn server_tablespaces(
    client: &tokio_postgres::Client,
) -> Result<Vec<(u32, String, String)>, ArchiveError> {
    let rows = client
        .query(
            "SELECT oid, spcname::text, pg_tablespace_location(oid) FROM pg_tablespace
             WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid",
            &[],
        )
        .await
        .doing("listing the server's tablespaces (pg_tablespace)")?;
    Ok(rows
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// What a backup learns before it changes anything: the server, and where its files are read.
pub(crate) struct Preflight {
    pub(crate) block_size: usize,
    pub(crate) client: tokio_postgres::Client,
    pub(crate) facts: ServerFacts,
    pub(crate) primary_dir: PathBuf,
    pub(crate) standby: Option<standby::Standby>,
    pub(crate) data_dir: PathBuf,
}

/// The checks every base backup runs first; they only read.
pub(crate) async fn preflight(opts: &BaseBackupOptions) -> Result<Preflight, ArchiveError> {
    let block_size =
        chunking::validate_block_size(opts.block_size).map_err(ArchiveError::Precondition)?;
    let client = match opts.connection.connect().await {
        Ok(client) => client,
        // The backup's checkpoint, label and end record come from the primary: a standby
        // alone cannot archive the segment its backup would end in until a primary writes
        // again, so such a backup could never be completed.
        Err(e) if opts.standby.is_some() => {
            return Err(ArchiveError::Precondition(format!(
                "the primary does not answer ({}), and a backup from the standby needs the primary to start and stop it: bring the primary back, or promote the standby (lifeline failover) and back up the new primary",
                storage::error_chain(&e)
            )));
        }
        Err(e) => return Err(e),
    };
    let facts = server_facts(&client).await?;
    if facts.archive_mode == "off" {
        return Err(ArchiveError::Precondition(
            "archive_mode is off, so the WAL a base backup needs is never archived: set \
             archive_mode = on and archive_command = 'lifeline wal push %p', then restart PostgreSQL"
                .into(),
        ));
    }
    let primary_dir = opts
        .data_dir
        .clone()
        .unwrap_or(facts.data_directory.clone());
    let standby_options = opts.standby.as_ref();
    let standby = standby::choose(&client, facts.system_identifier, standby_options).await?;
    let data_dir = match &standby {
        Some(standby) => standby.data_dir.clone(),
        None => primary_dir.clone(),
    };
    check_data_dir(&data_dir, &facts).await?;
    Ok(Preflight {
        block_size,
        client,
        facts,
        primary_dir,
        standby,
        data_dir,
    })
}

/// Take a base backup and return its manifest once it is complete and restorable.
pub async fn run_base_backup(
    storage: Arc<dyn Storage>,
    opts: &BaseBackupOptions,
) -> Result<BackupManifest, ArchiveError> {
    let Preflight {
        block_size,
        client,
        facts,
        primary_dir,
        mut standby,
        mut data_dir,
    } = preflight(opts).await?;
    let standby_options = opts.standby.as_ref();
    cluster::bind(
        storage.as_ref(),
        facts.system_identifier,
        facts.segment_size,
        "this server",
    )
    .await?;

    let previous = chunk_store::previous_chunks(
        storage.as_ref(),
        &opts.catalog_path,
        Lineage::Base {
            system_identifier: facts.system_identifier,
        },
        opts.block_size as u64,
    )
    .await?;
    let backup_id = new_backup_id(storage.as_ref()).await?;
    let started_at = jiff::Timestamp::now();
    info!(backup = %backup_id, data_dir = %data_dir.display(), "starting base backup");

    let functions = facts.layout.backup_functions;
    let start_lsn: String = client
        .query_one(functions.start_sql(), &[&backup_id])
        .await
        .map_err(|e| backup_function_error(e, functions.start_name(), &facts))?
        .get(0);
    let start_lsn: Lsn = start_lsn.parse().map_err(ArchiveError::Precondition)?;
    info!(%start_lsn, "checkpoint done, copying files");
    // The standby's files must be at least as new as the primary's checkpoint. (Leaving with
    // an error ends the session, which ends the backup on the primary.)
    let (checkpoint, timeline_now) = standby::primary_checkpoint(&client).await?;
    if let (Some(reading), Some(options)) = (&standby, standby_options)
        && let Err(why) = reading.reach_checkpoint(start_lsn, checkpoint).await
    {
        standby::unfit(options, why)?;
        standby = None;
        data_dir = primary_dir;
        check_data_dir(&data_dir, &facts).await?;
    }
    standby::check_fresh(&data_dir, start_lsn, timeline_now, standby.is_some()).await?;
    let source = match &standby {
        Some(_) => storage::BackupSource::Standby,
        None => storage::BackupSource::Primary,
    };

    let tablespace_rows = server_tablespaces(&client).await?;
    // Counted where the files are read: a standby backup leaves the primary alone.
    let counted_on = match (&standby, standby_options) {
        (Some(_), Some(options)) => options.connection.clone(),
        _ => opts.connection.clone(),
    };
    let counts = tokio::spawn(count_rows(counted_on));
    let walk_dir = data_dir.clone();
    let version_dir = facts.tablespace_version_dir.clone();
    let skipped = facts.layout.skip_contents;
    let mut walk =
        tokio::task::spawn_blocking(move || walk_data_dir(&walk_dir, &version_dir, skipped))
            .await
            .map_err(ArchiveError::task("directory walk"))??;
    // The primary's configuration (perhaps server.key) waits in the private BACKUP_DIR, not
    // in a shared temporary directory, until it is copied.
    let mut staging = None;
    if let Some(reading) = &standby {
        let home = chunk_store::scratch_dir(&opts.catalog_path);
        let dir = tempfile::Builder::new()
            .prefix(".standby-files-")
            .tempdir_in(home)
            .map_err(|source| ArchiveError::Io {
                path: home.to_path_buf(),
                source,
            })?;
        let from_primary =
            standby::take_top_files_from_primary(&client, &mut walk, dir.path()).await?;
        staging = Some(dir);
        info!(
            standby = %reading.name,
            primary_bytes = from_primary,
            "data files from the standby, configuration files from the primary"
        );
    }
    let tablespaces = match_tablespaces(tablespace_rows, &walk)?;
    for t in &tablespaces {
        info!(tablespace = %t.name, oid = t.oid, location = %t.location, "copying tablespace");
    }
    let copied = copy_files(storage.clone(), walk.entries, block_size, opts, previous).await?;
    drop(staging);
    if let Some(reading) = &standby {
        reading.still_in_recovery().await?;
    }
    // Every pack was durable when its write ended (chunk_store::Packer): nothing to flush.
    opts.progress.set_phase("waiting for WAL");
    info!(
        size_bytes = copied.size_bytes,
        new_bytes = copied.new_bytes,
        "files copied and durable, stopping the backup"
    );

    let stop = client
        .query_one(functions.stop_sql(), &[])
        .await
        .map_err(|e| backup_function_error(e, functions.stop_name(), &facts))?;
    let stop_lsn: Lsn = stop
        .get::<_, String>(0)
        .parse()
        .map_err(ArchiveError::Precondition)?;
    let backup_label: String = stop.get(1);
    let tablespace_map: Option<String> = stop.get::<_, Option<String>>(2).filter(|m| !m.is_empty());
    let timeline = start_timeline(&backup_label)?;

    let start_segment = Segment::containing(timeline, start_lsn, facts.segment_size);
    let stop_segment = last_segment(timeline, start_lsn, stop_lsn, facts.segment_size);
    info!(%stop_lsn, "waiting for the backup's WAL to be archived");
    wait_for_wal(
        storage.as_ref(),
        facts.system_identifier,
        start_segment,
        stop_segment,
        facts.segment_size,
        opts.wal_wait,
    )
    .await?;

    let row_counts = match counts.await {
        Ok(Ok(counts)) => counts,
        Ok(Err(e)) => {
            warn!("row counts not recorded: {e:#}");
            RowCounts::default()
        }
        Err(e) => {
            warn!("row counts not recorded: {e}");
            RowCounts::default()
        }
    };

    let manifest = BackupManifest {
        format: MANIFEST_FORMAT,
        backup_id: backup_id.clone(),
        service: Service::Postgresql,
        kind: BackupKind::Base,
        system_identifier: facts.system_identifier,
        server_version: facts.version,
        major_version: facts.major_version,
        catalog_version: facts.catalog_version,
        source,
        database: opts.connection.dbname.clone(),
        timeline,
        start_lsn,
        stop_lsn,
        start_wal: start_segment.file_name(facts.segment_size),
        stop_wal: stop_segment.file_name(facts.segment_size),
        segment_size: facts.segment_size,
        started_at,
        finished_at: jiff::Timestamp::now(),
        block_size: block_size as u64,
        files: copied.files,
        bundle: Vec::new(),
        backup_label,
        tablespace_map,
        tablespaces,
        row_counts: row_counts.exact,
        row_estimates: row_counts.estimated,
        size_bytes: copied.size_bytes,
        new_bytes: copied.new_bytes,
    };
    publish_base_backup(
        storage.as_ref(),
        &manifest,
        copied.lists,
        chunk_store::scratch_dir(&opts.catalog_path),
        &opts.catalog_path,
        &opts.retention,
    )
    .await?;
    opts.progress.finish();
    info!(
        backup = %backup_id,
        size_bytes = manifest.size_bytes,
        new_bytes = manifest.new_bytes,
        files = manifest.files.len(),
        "base backup complete"
    );
    Ok(manifest)
}

/// Why the backup could not start or stop: a function this major does not have (a newer
/// PostgreSQL that changed them) says so with the fix; anything else is the server's refusal.
fn backup_function_error(
    error: tokio_postgres::Error,
    function: &'static str,
    facts: &ServerFacts,
) -> ArchiveError {
    if error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) {
        return ArchiveError::Precondition(format!(
            "PostgreSQL {} ({}) has no {function}() as lifeline calls it: lifeline supports \
             {} to {}; upgrade lifeline for this major",
            facts.major_version,
            facts.version,
            pg_version::OLDEST,
            pg_version::NEWEST
        ));
    }
    ArchiveError::Postgres {
        action: if function.contains("start") {
            "starting the backup (needs superuser or EXECUTE on the backup functions)"
        } else {
            "stopping the backup"
        },
        source: error,
    }
}

/// PGDATA must be the connected server's: its cluster, and its major (`PG_VERSION`).
async fn check_data_dir(data_dir: &Path, facts: &ServerFacts) -> Result<(), ArchiveError> {
    let unreadable = |path: PathBuf, e: std::io::Error| {
        ArchiveError::Precondition(format!(
            "cannot read {} ({e}): run the backup as a user that can read PGDATA, or set PGDATA to the server's data directory",
            path.display()
        ))
    };
    let control = data_dir.join("global/pg_control");
    let bytes = tokio::fs::read(&control)
        .await
        .map_err(|e| unreadable(control, e))?;
    let control_facts =
        pg_version::parse_control_file(&bytes).map_err(ArchiveError::Precondition)?;
    let found = control_facts.system_identifier;
    let expected = facts.system_identifier;
    if found != expected {
        return Err(ArchiveError::Precondition(format!(
            "{} belongs to cluster {found}, but the server at DB_HOST/DB_PORT is cluster {expected}: PGDATA and the connection point at different servers",
            data_dir.display()
        )));
    }
    if u64::from(control_facts.catalog_version) != facts.catalog_version {
        return Err(ArchiveError::Precondition(format!(
            "{} has catalog version {}, but the server at DB_HOST/DB_PORT has {}: PGDATA and the connection point at different servers",
            data_dir.display(),
            control_facts.catalog_version,
            facts.catalog_version
        )));
    }
    let version_file = data_dir.join("PG_VERSION");
    let text = tokio::fs::read_to_string(&version_file)
        .await
        .map_err(|e| unreadable(version_file, e))?;
    let major = pg_version::parse_pg_version_file(&text).map_err(ArchiveError::Precondition)?;
    if major != facts.major_version {
        return Err(ArchiveError::Precondition(format!(
            "{} was made by PostgreSQL {major}, but the server at DB_HOST/DB_PORT is PostgreSQL {}: set PGDATA to the server's data directory",
            data_dir.display(),
            facts.major_version
        )));
    }
    Ok(())
}

/// The last segment holding the backup's WAL (see `storage::wal::last_segment_number`).
fn last_segment(timeline: TimelineId, start: Lsn, stop: Lsn, segment_size: u64) -> Segment {
    Segment {
        timeline,
        number: storage::wal::last_segment_number(start, stop, segment_size),
    }
}

fn start_timeline(backup_label: &str) -> Result<TimelineId, ArchiveError> {
    backup_label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE:"))
        .and_then(|t| t.trim().parse::<u32>().ok())
        .map(TimelineId)
        .ok_or_else(|| ArchiveError::Precondition("backup_label has no START TIMELINE line".into()))
}

struct Copied {
    /// The manifest's files, their blocks in `lists`.
    files: Vec<FileEntry>,
    lists: SpooledLists,
    size_bytes: u64,
    new_bytes: u64,
}

enum Slot {
    Block { file: usize, index: usize },
    Bundle(usize),
}

impl Slot {
    /// The bundle's number among the entries: after every file.
    const BUNDLE: usize = usize::MAX;

    /// Whose chunk it is, as an entry's number, and which of its chunks.
    fn place(&self) -> (usize, usize) {
        match *self {
            Slot::Block { file, index } => (file, index),
            Slot::Bundle(index) => (Slot::BUNDLE, index),
        }
    }
}

type Job = chunk_store::Job<Slot>;

/// What the reader thread learned: the bytes actually copied of each file (None: vanished)
/// and where each small file starts in the bundle stream.
struct ReadReport {
    sizes: Vec<Option<u64>>,
    bundle_offsets: HashMap<usize, u64>,
}

async fn copy_files(
    storage: Arc<dyn Storage>,
    entries: Vec<WalkEntry>,
    block_size: usize,
    opts: &BaseBackupOptions,
    mut index: ChunkIndex,
) -> Result<Copied, ArchiveError> {
    // A first backup: room in the index for every chunk, made before the first one. After the
    // previous backup's chunks, most blocks are found there, and the table (made for those,
    // with a third to spare) grows only if more are new.
    let expected = match index.len() {
        0 => expected_chunks(&entries, block_size as u64),
        _ => 0,
    };
    let index = tokio::task::spawn_blocking(move || index.reserve(expected).map(|()| index))
        .await
        .map_err(ArchiveError::task("chunk index"))??;
    let parallelism = opts.parallelism.max(1);
    let (tx, rx) = mpsc::channel::<Job>(parallelism * 2);
    let plan: Vec<(usize, PathBuf, bool)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == EntryKind::File)
        .map(|(i, e)| (i, e.abs.clone(), e.size >= block_size as u64))
        .collect();
    let entry_count = entries.len();
    let total = entries.iter().filter(|e| e.kind == EntryKind::File);
    opts.progress.set_total(total.map(|e| e.size).sum());
    let stages = Arc::new(Stages::new(chunk_store::STAGES));
    let reader_stages = stages.clone();
    let reader = tokio::task::spawn_blocking(move || {
        read_files(plan, entry_count, block_size, tx, &reader_stages)
    });

    let mut spool = BlockSpool::create_in(chunk_store::scratch_dir(&opts.catalog_path))?;
    let packer = pack_jobs(
        rx,
        storage,
        Arc::new(std::sync::Mutex::new(index)),
        opts.compression,
        parallelism,
        opts.transfers,
        opts.progress.as_ref(),
        &stages,
        |slot, hash, len| {
            let (owner, index) = slot.place();
            spool.push(owner, index, hash, len)
        },
    )
    .await?;
    let report = reader.await.map_err(ArchiveError::task("file reader"))??;
    debug!(stages = %stages.summary(), "files copied");
    let new_bytes = packer.written;
    // The chunk index goes with the packer: the lists name each chunk's place from here on.
    let locations = packer.into_locations();
    let mut lists = tokio::task::spawn_blocking(move || spool.resolve(&locations))
        .await
        .map_err(ArchiveError::task("block lists"))??;

    let mut files = Vec::with_capacity(entries.len());
    let mut size_bytes = 0;
    for (i, e) in entries.into_iter().enumerate() {
        let mut entry = FileEntry {
            path: e.rel,
            kind: e.kind,
            mode: e.mode,
            size: 0,
            mtime: e.mtime,
            link_target: None,
            blocks: Vec::new(),
            bundle_offset: None,
        };
        let mut owner = None;
        if e.kind == EntryKind::File {
            // A file that vanished before it was read is left out.
            let Some(size) = report.sizes[i] else {
                continue;
            };
            entry.size = size;
            size_bytes += size;
            entry.bundle_offset = report.bundle_offsets.get(&i).copied();
            if entry.bundle_offset.is_none() {
                owner = Some(i);
            }
        }
        let listed = lists.next_file(owner);
        if owner.is_some() && listed != entry.size {
            return Err(ArchiveError::Internal(format!(
                "the blocks of {} add up to {listed} bytes, not the {} read",
                entry.path, entry.size
            )));
        }
        files.push(entry);
    }
    lists.set_bundle(Slot::BUNDLE);
    Ok(Copied {
        files,
        lists,
        size_bytes,
        new_bytes,
    })
}

/// At most how many chunks `entries` make: every block of the files of a block or more, and
/// the bundle of the smaller ones in content-defined chunks of at least `CDC_MIN` bytes.
fn expected_chunks(entries: &[WalkEntry], block_size: u64) -> u64 {
    let files = entries.iter().filter(|e| e.kind == EntryKind::File);
    let (blocks, bundled) = files.fold((0u64, 0u64), |(blocks, bundled), e| {
        if e.size >= block_size {
            (blocks.saturating_add(e.size.div_ceil(block_size)), bundled)
        } else {
            (blocks, bundled.saturating_add(e.size))
        }
    });
    blocks.saturating_add(bundled / u64::from(chunking::CDC_MIN) + 1)
}

/// The reader thread: small files first, as one content-chunked bundle stream, then relation
/// files block by block. Stops early when the writers have gone (an error downstream).
fn read_files(
    plan: Vec<(usize, PathBuf, bool)>,
    entry_count: usize,
    block_size: usize,
    tx: mpsc::Sender<Job>,
    stages: &Stages,
) -> Result<ReadReport, ArchiveError> {
    let mut report = ReadReport {
        sizes: vec![None; entry_count],
        bundle_offsets: HashMap::new(),
    };
    let small: Vec<(usize, PathBuf)> = plan
        .iter()
        .filter(|p| !p.2)
        .map(|p| (p.0, p.1.clone()))
        .collect();
    let mut pack = BundleReader {
        files: small.into_iter(),
        current: None,
        offset: 0,
        records: Vec::new(),
    };
    let mut chunks = content_defined_chunks(&mut pack).enumerate();
    let mut tuner = Tuner::default();
    while let Some((index, chunk)) = stages.time(chunk_store::READ, || chunks.next()) {
        let data = chunk.map_err(|source| ArchiveError::Io {
            path: PathBuf::from("(small files)"),
            source,
        })?;
        let job = Job {
            slot: Slot::Bundle(index),
            data,
            tuning: tuner.next_chunk(),
        };
        if stages
            .time(chunk_store::READER_BLOCKED, || tx.blocking_send(job))
            .is_err()
        {
            return Ok(report);
        }
    }
    drop(chunks);
    for (file, offset, len) in pack.records {
        report.sizes[file] = Some(len);
        report.bundle_offsets.insert(file, offset);
    }
    for (file, path, _) in plan.into_iter().filter(|p| p.2) {
        let mut reader = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(ArchiveError::Io { path, source }),
        };
        // Only sizes the sampling: a file that grows or shrinks while read is still read whole.
        let expected = reader.metadata().map_or(0, |m| m.len());
        tuner.start_file(expected.div_ceil(block_size as u64));
        let mut size = 0u64;
        for index in 0.. {
            let data = stages
                .time(chunk_store::READ, || {
                    chunking::read_block(&mut reader, block_size)
                })
                .map_err(|source| ArchiveError::Io {
                    path: path.clone(),
                    source,
                })?;
            if data.is_empty() {
                break;
            }
            size += data.len() as u64;
            let job = Job {
                slot: Slot::Block { file, index },
                data,
                tuning: tuner.next_chunk(),
            };
            if stages
                .time(chunk_store::READER_BLOCKED, || tx.blocking_send(job))
                .is_err()
            {
                return Ok(report);
            }
        }
        report.sizes[file] = Some(size);
    }
    Ok(report)
}

/// The small files read back to back as one stream, recording where each one starts.
struct BundleReader {
    files: std::vec::IntoIter<(usize, PathBuf)>,
    current: Option<(usize, std::fs::File, u64, u64)>,
    offset: u64,
    /// (entry index, offset in the stream, bytes read)
    records: Vec<(usize, u64, u64)>,
}

impl Read for BundleReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some((index, file, start, read)) = &mut self.current {
                let n = file.read(buf)?;
                if n > 0 {
                    *read += n as u64;
                    self.offset += n as u64;
                    return Ok(n);
                }
                self.records.push((*index, *start, *read));
                self.current = None;
            }
            let Some((index, path)) = self.files.next() else {
                return Ok(0);
            };
            match std::fs::File::open(&path) {
                Ok(file) => self.current = Some((index, file, self.offset, 0)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("{}: {e}", path.display()),
                    ));
                }
            }
        }
    }
}

/// Row counts of every table in the backed-up database, in one snapshot: exact for tables
/// under `EXACT_COUNT_LIMIT` rows, the planner's estimate above (a full scan of a large table
/// would cost more than the backup). Returns (exact, estimated).
async fn count_rows(connection: ConnectionOptions) -> Result<RowCounts, ArchiveError> {
    let mut client = connection.connect().await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .doing("starting the row-count snapshot")?;
    let tables = tx
        .query(
            "SELECT n.nspname || '.' || c.relname,
                    quote_ident(n.nspname) || '.' || quote_ident(c.relname),
                    c.reltuples::bigint
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
               AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
             ORDER BY 1",
            &[],
        )
        .await
        .doing("listing tables for the row-count snapshot")?;
    let mut counts = RowCounts::default();
    for row in tables {
        let name: String = row.get(0);
        let quoted: String = row.get(1);
        // reltuples is -1 for a table never vacuumed or analyzed: count those.
        let estimate: i64 = row.get(2);
        if estimate > EXACT_COUNT_LIMIT {
            counts.estimated.insert(name, estimate);
            continue;
        }
        let count: i64 = tx
            .query_one(&format!("SELECT count(*) FROM {quoted}"), &[])
            .await
            .doing("counting rows")?
            .get(0);
        counts.exact.insert(name, count);
    }
    Ok(counts)
}

#[derive(Debug, Default)]
struct RowCounts {
    exact: BTreeMap<String, i64>,
    estimated: BTreeMap<String, i64>,
}

/// Wait until every segment from `start` to `stop` is in the repository.
async fn wait_for_wal(
    storage: &dyn Storage,
    system_identifier: u64,
    start: Segment,
    stop: Segment,
    segment_size: u64,
    timeout: Duration,
) -> Result<(), ArchiveError> {
    let deadline = tokio::time::Instant::now() + timeout;
    for number in start.number..=stop.number {
        let segment = Segment {
            timeline: stop.timeline,
            number,
        };
        let name: WalFileName = segment
            .file_name(segment_size)
            .parse()
            .map_err(ArchiveError::Precondition)?;
        let key = layout::wal_key(system_identifier, &name);
        while !storage.exists(&key).await? {
            if tokio::time::Instant::now() >= deadline {
                return Err(ArchiveError::WalNotArchived {
                    segment: name.to_string(),
                    waited_secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::manifest::BlockSource;

    /// Every block of the large files, the small ones' bytes in the smallest content-defined
    /// chunks, no directory; a size no file system has saturates instead of wrapping.
    #[test]
    fn the_chunks_expected_count_every_block_and_the_bundle() {
        let entry = |kind, size| WalkEntry {
            rel: String::new(),
            abs: PathBuf::new(),
            kind,
            mode: 0o600,
            size,
            mtime: 0,
        };
        let min = u64::from(chunking::CDC_MIN);
        let entries = [
            entry(EntryKind::File, 5 * 4096 + 100),
            entry(EntryKind::File, 3 * 4096),
            entry(EntryKind::File, 10),
            entry(EntryKind::File, 2 * min),
            entry(EntryKind::Dir, 1 << 40),
        ];
        // Blocks 6 + 3 + 32; 10 bytes bundled make no whole chunk of CDC_MIN, and one more.
        assert_eq!(expected_chunks(&entries, 4096), 6 + 3 + 32 + 1);
        // Every file bundled: 2 * min + 32,878 bytes, two whole chunks of CDC_MIN, and one more.
        assert_eq!(expected_chunks(&entries, 4 * min), 2 + 1);
        let huge = [
            entry(EntryKind::File, u64::MAX),
            entry(EntryKind::File, 1 << 62),
        ];
        assert_eq!(expected_chunks(&huge, 1), u64::MAX);
    }

    /// Every chunk of every file lands in its own file's list, in order, whatever order the
    /// compression threads finish in; a file that vanished before it was read is left out.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_file_gets_its_own_blocks_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).expect("repo");
        let storage: Arc<dyn Storage> = Arc::new(storage::LocalStorage::open(&repo).expect("open"));
        let block = 4096usize;
        let content = |file: usize, len: usize| -> Vec<u8> {
            (0..len)
                .map(|i| (i / block * 7 + file * 13) as u8)
                .collect()
        };
        let sizes = [5 * block + 100, 10, 3 * block, 0, 2 * block];
        let mut entries = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            let abs = dir.path().join(format!("f{i}"));
            std::fs::write(&abs, content(i, len)).expect("write");
            entries.push(WalkEntry {
                rel: format!("base/1/{i}"),
                abs,
                kind: EntryKind::File,
                mode: 0o600,
                size: len as u64,
                mtime: 0,
            });
        }
        std::fs::remove_file(dir.path().join("f2")).expect("f2 vanishes");
        let opts = BaseBackupOptions {
            connection: ConnectionOptions {
                host: String::new(),
                port: 0,
                user: String::new(),
                password: None,
                dbname: String::new(),
                tls: Default::default(),
            },
            data_dir: None,
            compression: Compression::default(),
            block_size: block,
            parallelism: 2,
            transfers: 2,
            wal_wait: Duration::ZERO,
            catalog_path: dir.path().join("catalog.db"),
            retention: Default::default(),
            standby: None,
            progress: storage::progress::none(),
        };
        let copied = copy_files(storage, entries, block, &opts, ChunkIndex::new(dir.path()))
            .await
            .expect("copied");
        let paths: Vec<&str> = copied.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["base/1/0", "base/1/1", "base/1/3", "base/1/4"]);
        let mut lists = copied.lists;
        for (n, f) in copied.files.iter().enumerate() {
            assert!(f.blocks.is_empty(), "{}: its list is kept apart", f.path);
            let mut blocks = Vec::new();
            lists.file_blocks(n, &mut blocks).expect("read back");
            let i: usize = f.path["base/1/".len()..].parse().expect("number");
            let data = content(i, sizes[i]);
            if sizes[i] < block {
                assert!(blocks.is_empty() && f.bundle_offset.is_some(), "{}", f.path);
                continue;
            }
            let expected: Vec<storage::ChunkHash> =
                data.chunks(block).map(|b| blake3::hash(b).into()).collect();
            let got: Vec<storage::ChunkHash> = blocks.iter().map(|c| c.hash).collect();
            assert_eq!(got, expected, "{}", f.path);
            let lens: Vec<u64> = blocks.iter().map(|c| c.len).collect();
            let expected: Vec<u64> = data.chunks(block).map(|b| b.len() as u64).collect();
            assert_eq!(lens, expected, "{}", f.path);
        }
        let mut bundle = Vec::new();
        lists.bundle(&mut bundle).expect("read back");
        assert!(!bundle.is_empty());
        assert!(
            lists
                .file_blocks(copied.files.len(), &mut Vec::new())
                .is_err(),
            "a file past the manifest's has no list"
        );
    }

    #[test]
    fn a_stop_on_a_segment_boundary_needs_the_segment_that_ends_there() {
        let size = 16 << 20;
        let tli = TimelineId(1);
        let last =
            |start: u64, stop: u64| last_segment(tli, Lsn(start), Lsn(stop), size).file_name(size);
        assert_eq!(last(0x200_0028, 0x200_0100), "000000010000000000000002");
        assert_eq!(last(0x200_0028, 0x300_0000), "000000010000000000000002");
        assert_eq!(last(0x200_0028, 0x300_0001), "000000010000000000000003");
        // A backup that starts and stops at the same boundary needs the segment starting there.
        assert_eq!(last(0x300_0000, 0x300_0000), "000000010000000000000003");
    }

    #[test]
    fn timeline_comes_from_the_label() {
        let label =
            "START WAL LOCATION: 0/2000028 (file 000000020000000000000002)\nSTART TIMELINE: 2\n";
        assert_eq!(start_timeline(label).expect("timeline"), TimelineId(2));
        assert!(start_timeline("nothing").is_err());
    }

    #[test]
    fn version_directory_names_follow_postgres() {
        assert_eq!(
            tablespace_version_dir(150_004, 202_209_061),
            "PG_15_202209061"
        );
        assert_eq!(
            tablespace_version_dir(90_624, 201_608_131),
            "PG_9.6_201608131"
        );
    }
}
