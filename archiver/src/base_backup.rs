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
//! at all, so a restore decides where every byte goes (see `walk_data_dir`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use storage::chunking::{self, content_defined_chunks};
use storage::manifest::{
    BackupManifest, ChunkRef, EXACT_COUNT_LIMIT, EntryKind, FileEntry, MANIFEST_FORMAT, Tablespace,
};
use storage::wal::{Lsn, Segment, TimelineId, WalFileName};
use storage::{Compression, PutMode, Storage, StorageExt, layout};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::chunk_store::{self, Lineage, pack_jobs};
use crate::error::PgContext;
use crate::{ArchiveError, cluster};

/// How to reach PostgreSQL. `Debug` never shows the password.
#[derive(Clone)]
pub struct ConnectionOptions {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
}

impl std::fmt::Debug for ConnectionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("dbname", &self.dbname)
            .finish()
    }
}

impl ConnectionOptions {
    /// The driver's configuration for this server (its Debug output shows the password: never
    /// log it).
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname)
            .application_name("lifeline")
            .connect_timeout(Duration::from_secs(10));
        if let Some(password) = &self.password {
            config.password(password);
        }
        config
    }

    pub async fn connect(&self) -> Result<tokio_postgres::Client, ArchiveError> {
        let (client, connection) = self
            .pg_config()
            .connect(tokio_postgres::NoTls)
            .await
            .doing("connecting (check DB_HOST, DB_PORT, DB_USER, DB_PASSWORD, DB_NAME)")?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!("PostgreSQL connection closed: {e}");
            }
        });
        Ok(client)
    }
}

#[derive(Debug, Clone)]
pub struct BaseBackupOptions {
    pub connection: ConnectionOptions,
    /// PGDATA; asked of the server (`SHOW data_directory`) when not given.
    pub data_dir: Option<PathBuf>,
    pub compression: Compression,
    pub block_size: usize,
    pub parallelism: usize,
    /// Packs written at once (each up to 16 MiB in memory).
    pub uploads: usize,
    /// How long to wait for the backup's WAL to reach the repository.
    pub wal_wait: Duration,
    pub catalog_path: PathBuf,
}

struct ServerFacts {
    version: String,
    system_identifier: u64,
    data_directory: PathBuf,
    segment_size: u64,
    archive_mode: String,
    /// The directory this server version keeps inside every tablespace,
    /// `PG_<major>_<catversion>`; the others there belong to other majors.
    tablespace_version_dir: String,
}

async fn server_facts(client: &tokio_postgres::Client) -> Result<ServerFacts, ArchiveError> {
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
    Ok(ServerFacts {
        version: row.get(0),
        system_identifier: number(row.get(1), "system identifier")?,
        data_directory: PathBuf::from(row.get::<_, String>(2)),
        segment_size: number(row.get(3), "wal_segment_size")?,
        archive_mode: row.get(4),
        tablespace_version_dir: tablespace_version_dir(
            number(row.get(5), "server_version_num")?,
            number(row.get(6), "catalog version")?,
        ),
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
async fn server_tablespaces(
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

/// Take a base backup and return its manifest once it is complete and restorable.
pub async fn run_base_backup(
    storage: Arc<dyn Storage>,
    opts: &BaseBackupOptions,
) -> Result<BackupManifest, ArchiveError> {
    let block_size =
        chunking::validate_block_size(opts.block_size).map_err(ArchiveError::Precondition)?;
    let client = opts.connection.connect().await?;
    let facts = server_facts(&client).await?;
    if facts.archive_mode == "off" {
        return Err(ArchiveError::Precondition(
            "archive_mode is off, so the WAL a base backup needs is never archived: set \
             archive_mode = on and archive_command = 'lifeline wal push %p', then restart PostgreSQL"
                .into(),
        ));
    }
    let data_dir = opts
        .data_dir
        .clone()
        .unwrap_or(facts.data_directory.clone());
    check_data_dir(&data_dir, facts.system_identifier).await?;
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
    )
    .await;
    let backup_id = new_backup_id(storage.as_ref()).await?;
    let started_at = jiff::Timestamp::now();
    info!(backup = %backup_id, data_dir = %data_dir.display(), "starting base backup");

    let start_lsn: String = client
        .query_one("SELECT pg_backup_start($1, true)::text", &[&backup_id])
        .await
        .doing("starting the backup (pg_backup_start; needs superuser or EXECUTE on it)")?
        .get(0);
    let start_lsn: Lsn = start_lsn.parse().map_err(ArchiveError::Precondition)?;
    info!(%start_lsn, "checkpoint done, copying files");

    let tablespace_rows = server_tablespaces(&client).await?;
    let counts = tokio::spawn(count_rows(opts.connection.clone()));
    let walk_dir = data_dir.clone();
    let version_dir = facts.tablespace_version_dir.clone();
    let walk = tokio::task::spawn_blocking(move || walk_data_dir(&walk_dir, &version_dir))
        .await
        .map_err(ArchiveError::task("directory walk"))??;
    let tablespaces = match_tablespaces(tablespace_rows, &walk)?;
    for t in &tablespaces {
        info!(tablespace = %t.name, oid = t.oid, location = %t.location, "copying tablespace");
    }
    let copied = copy_files(storage.clone(), walk.entries, block_size, opts, previous).await?;
    storage.sync().await?;
    info!(
        size_bytes = copied.size_bytes,
        new_bytes = copied.new_bytes,
        "files copied and durable, stopping the backup"
    );

    let stop = client
        .query_one(
            "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)",
            &[],
        )
        .await
        .doing("stopping the backup (pg_backup_stop)")?;
    let stop_lsn: Lsn = stop
        .get::<_, String>(0)
        .parse()
        .map_err(ArchiveError::Precondition)?;
    let backup_label: String = stop.get(1);
    let tablespace_map: Option<String> = stop.get::<_, Option<String>>(2).filter(|m| !m.is_empty());
    let timeline = start_timeline(&backup_label)?;

    let start_segment = Segment::containing(timeline, start_lsn, facts.segment_size);
    let stop_segment = Segment::containing(timeline, stop_lsn, facts.segment_size);
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
        service: "postgresql".into(),
        kind: "base".into(),
        system_identifier: facts.system_identifier,
        server_version: facts.version,
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
        bundle: copied.bundle,
        backup_label,
        tablespace_map,
        tablespaces,
        row_counts: row_counts.exact,
        row_estimates: row_counts.estimated,
        size_bytes: copied.size_bytes,
        new_bytes: copied.new_bytes,
    };
    write_manifest(storage.as_ref(), &manifest, &opts.catalog_path).await?;
    info!(
        backup = %backup_id,
        size_bytes = manifest.size_bytes,
        new_bytes = manifest.new_bytes,
        files = manifest.files.len(),
        "base backup complete"
    );
    Ok(manifest)
}

async fn check_data_dir(data_dir: &Path, system_identifier: u64) -> Result<(), ArchiveError> {
    let control = data_dir.join("global/pg_control");
    let bytes = tokio::fs::read(&control).await.map_err(|e| {
        ArchiveError::Precondition(format!(
            "cannot read {} ({e}): run the backup as a user that can read PGDATA, or set PGDATA to the server's data directory",
            control.display()
        ))
    })?;
    let found = storage::wal::parse_control_file_system_identifier(&bytes)
        .map_err(ArchiveError::Precondition)?;
    if found != system_identifier {
        return Err(ArchiveError::Precondition(format!(
            "{} belongs to cluster {found}, but the server at DB_HOST/DB_PORT is cluster {system_identifier}: PGDATA and the connection point at different servers",
            data_dir.display()
        )));
    }
    Ok(())
}

fn start_timeline(backup_label: &str) -> Result<TimelineId, ArchiveError> {
    backup_label
        .lines()
        .find_map(|l| l.strip_prefix("START TIMELINE:"))
        .and_then(|t| t.trim().parse::<u32>().ok())
        .map(TimelineId)
        .ok_or_else(|| ArchiveError::Precondition("backup_label has no START TIMELINE line".into()))
}

/// Ids are `backup_YYYYMMDD_HHMMSS` in UTC; a second backup in the same second gets a suffix.
pub(crate) async fn new_backup_id(storage: &dyn Storage) -> Result<String, ArchiveError> {
    let base = jiff::Timestamp::now()
        .strftime("backup_%Y%m%d_%H%M%S")
        .to_string();
    for n in 0..100 {
        let id = if n == 0 {
            base.clone()
        } else {
            format!("{base}_{n}")
        };
        if !storage.exists(&layout::manifest_key(&id)).await?
            && !storage.exists(&layout::stream_manifest_key(&id)).await?
        {
            return Ok(id);
        }
    }
    Err(ArchiveError::Precondition(format!(
        "100 backups named {base}* already exist"
    )))
}

/// A file or directory found under PGDATA (or inside a tablespace it links to).
struct WalkEntry {
    /// The path the manifest records, relative to PGDATA.
    rel: String,
    /// Where it is read from.
    abs: PathBuf,
    kind: EntryKind,
    mode: u32,
    size: u64,
    mtime: i64,
}

/// What a walk of PGDATA found.
struct Walk {
    entries: Vec<WalkEntry>,
    /// Tablespace links `pg_tblspc/<oid>`, by oid, with where each one points.
    linked: BTreeMap<u32, PathBuf>,
    /// In-place tablespaces (`allow_in_place_tablespaces`): real directories under
    /// `pg_tblspc`, copied as ordinary entries.
    in_place: BTreeSet<u32>,
}

/// Directories whose contents a base backup omits (PostgreSQL docs, "Backing Up the Data
/// Directory", and pg_basebackup): they are recreated empty.
const CONTENTS_OMITTED: &[&str] = &[
    "pg_wal",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
    "pg_replslot",
];
/// Files omitted wherever they are.
const FILES_OMITTED: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "pg_internal.init",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label.old",
];

/// List what a base backup copies. The manifest records no links: a tablespace link
/// `pg_tblspc/<oid>` becomes a directory holding the tablespace's `version_dir` (read from the
/// link's target; other majors' directories there are not ours), `pg_wal` and the other
/// directories whose contents are omitted become empty directories even when they are links
/// elsewhere (as pg_basebackup writes them), and any other link is skipped with a warning. So a
/// restore never has to recreate a link to a place on the backed-up host.
fn walk_data_dir(root: &Path, version_dir: &str) -> Result<Walk, ArchiveError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let io = |path: &Path, source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    };
    let entry = |rel: String, abs: PathBuf, meta: &std::fs::Metadata| WalkEntry {
        rel,
        abs,
        kind: if meta.is_dir() {
            EntryKind::Dir
        } else {
            EntryKind::File
        },
        mode: meta.permissions().mode() & 0o7777,
        size: if meta.is_dir() { 0 } else { meta.len() },
        mtime: meta.mtime(),
    };
    let mut walk = Walk {
        entries: Vec::new(),
        linked: BTreeMap::new(),
        in_place: BTreeSet::new(),
    };
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel_dir)) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel_dir.is_empty() => continue,
            Err(e) => return Err(io(&dir, e)),
        };
        for dir_entry in entries {
            let dir_entry = dir_entry.map_err(|e| io(&dir, e))?;
            let name = dir_entry.file_name().to_string_lossy().into_owned();
            let abs = dir_entry.path();
            let rel = if rel_dir.is_empty() {
                name.clone()
            } else {
                format!("{rel_dir}/{name}")
            };
            if FILES_OMITTED.contains(&name.as_str()) || name.starts_with("pgsql_tmp") {
                continue;
            }
            let meta = match std::fs::symlink_metadata(&abs) {
                Ok(m) => m,
                // Dropped while we walk: WAL replay recreates whatever state is right.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&abs, e)),
            };
            let is_link = meta.file_type().is_symlink();
            if rel_dir.is_empty() && CONTENTS_OMITTED.contains(&name.as_str()) {
                if !(is_link || meta.is_dir()) {
                    continue;
                }
                let mut item = entry(rel, abs, &meta);
                item.kind = EntryKind::Dir;
                item.size = 0;
                // Whatever its mode here, or wherever it links to, the restored directory is
                // the server's own: private.
                if is_link || name == "pg_wal" {
                    item.mode = 0o700;
                }
                walk.entries.push(item);
                continue;
            }
            let tablespace_oid = (rel_dir == "pg_tblspc")
                .then(|| name.parse::<u32>().ok())
                .flatten();
            if is_link {
                let target = std::fs::read_link(&abs).map_err(|e| io(&abs, e))?;
                let Some(oid) = tablespace_oid else {
                    warn!(
                        "{} is a link to {}: skipped (a base backup copies only PGDATA and its \
                         tablespaces; back that place up separately)",
                        abs.display(),
                        target.display()
                    );
                    continue;
                };
                // Read through the link: a relative target resolves as PostgreSQL resolves it.
                let target_meta = std::fs::metadata(&abs).map_err(|e| {
                    ArchiveError::Precondition(format!(
                        "tablespace link {} points to {}, which cannot be read ({e}): run the \
                         backup as a user that can read every tablespace",
                        abs.display(),
                        target.display()
                    ))
                })?;
                let version_abs = abs.join(version_dir);
                let version_meta = std::fs::metadata(&version_abs)
                    .ok()
                    .filter(std::fs::Metadata::is_dir)
                    .ok_or_else(|| {
                        ArchiveError::Precondition(format!(
                            "tablespace {oid} at {} has no {version_dir} directory, so it does \
                             not belong to this server's PostgreSQL version: check the link {}",
                            target.display(),
                            abs.display()
                        ))
                    })?;
                let mut item = entry(rel.clone(), abs.clone(), &target_meta);
                item.kind = EntryKind::Dir;
                walk.entries.push(item);
                let version_rel = format!("{rel}/{version_dir}");
                walk.entries.push(entry(
                    version_rel.clone(),
                    version_abs.clone(),
                    &version_meta,
                ));
                stack.push((version_abs, version_rel));
                walk.linked.insert(oid, target);
                continue;
            }
            if meta.is_dir() {
                if let Some(oid) = tablespace_oid {
                    walk.in_place.insert(oid);
                }
                stack.push((abs.clone(), rel.clone()));
            } else if !meta.is_file() {
                continue;
            }
            walk.entries.push(entry(rel, abs, &meta));
        }
    }
    walk.entries.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(walk)
}

/// The manifest's tablespaces: each server tablespace matched to its link in PGDATA. A link
/// without a tablespace, or a tablespace without a link, means the walk and the server disagree
/// (PGDATA is not this server's, or a tablespace came or went during the backup): refuse rather
/// than record a backup that cannot be put back as it was.
fn match_tablespaces(
    rows: Vec<(u32, String, String)>,
    walk: &Walk,
) -> Result<Vec<Tablespace>, ArchiveError> {
    let mut out = Vec::new();
    for (oid, name, location) in rows {
        if walk.linked.contains_key(&oid) {
            out.push(Tablespace {
                oid,
                name,
                location,
            });
        } else if !walk.in_place.contains(&oid) {
            return Err(ArchiveError::Precondition(format!(
                "the server has tablespace {name} (oid {oid}, at {location}) but PGDATA has no \
                 pg_tblspc/{oid}: PGDATA is not this server's data directory, or the tablespace \
                 was created during the backup; check PGDATA and run the backup again"
            )));
        }
    }
    for (oid, target) in &walk.linked {
        if !out.iter().any(|t| t.oid == *oid) {
            return Err(ArchiveError::Precondition(format!(
                "PGDATA has pg_tblspc/{oid} (a link to {}) but the server has no tablespace \
                 with oid {oid}: it was dropped during the backup, or the link is stray; run the \
                 backup again, or remove the stray link",
                target.display()
            )));
        }
    }
    Ok(out)
}

struct Copied {
    files: Vec<FileEntry>,
    bundle: Vec<ChunkRef>,
    size_bytes: u64,
    new_bytes: u64,
}

enum Slot {
    Block { file: usize, index: usize },
    Bundle(usize),
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
    previous: HashMap<String, ChunkRef>,
) -> Result<Copied, ArchiveError> {
    let parallelism = opts.parallelism.max(1);
    let (tx, rx) = mpsc::channel::<Job>(parallelism * 2);
    let plan: Vec<(usize, PathBuf, bool)> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e.kind == EntryKind::File)
        .map(|(i, e)| (i, e.abs.clone(), e.size >= block_size as u64))
        .collect();
    let entry_count = entries.len();
    let reader = tokio::task::spawn_blocking(move || read_files(plan, entry_count, block_size, tx));

    let (packer, slots) = pack_jobs(
        rx,
        storage,
        previous,
        opts.compression,
        parallelism,
        opts.uploads,
    )
    .await?;
    let report = reader.await.map_err(ArchiveError::task("file reader"))??;

    let mut blocks: HashMap<usize, Vec<Option<ChunkRef>>> = HashMap::new();
    let mut bundle: Vec<Option<ChunkRef>> = Vec::new();
    for (slot, hash, len) in slots {
        let chunk = packer.chunk_ref(hash, len)?;
        let (list, index) = match slot {
            Slot::Block { file, index } => (blocks.entry(file).or_default(), index),
            Slot::Bundle(index) => (&mut bundle, index),
        };
        if list.len() <= index {
            list.resize(index + 1, None);
        }
        list[index] = Some(chunk);
    }
    let complete = |list: Vec<Option<ChunkRef>>| -> Result<Vec<ChunkRef>, ArchiveError> {
        list.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| {
            ArchiveError::Precondition("a chunk went missing in the copy pipeline".into())
        })
    };

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
        if e.kind == EntryKind::File {
            let Some(size) = report.sizes[i] else {
                continue;
            };
            entry.size = size;
            size_bytes += size;
            entry.bundle_offset = report.bundle_offsets.get(&i).copied();
            if entry.bundle_offset.is_none() {
                entry.blocks = complete(blocks.remove(&i).unwrap_or_default())?;
            }
        }
        files.push(entry);
    }
    Ok(Copied {
        files,
        bundle: complete(bundle)?,
        size_bytes,
        new_bytes: packer.written,
    })
}

/// The reader thread: small files first, as one content-chunked bundle stream, then relation
/// files block by block. Stops early when the writers have gone (an error downstream).
fn read_files(
    plan: Vec<(usize, PathBuf, bool)>,
    entry_count: usize,
    block_size: usize,
    tx: mpsc::Sender<Job>,
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
    for (index, chunk) in content_defined_chunks(&mut pack).enumerate() {
        let data = chunk.map_err(|source| ArchiveError::Io {
            path: PathBuf::from("(small files)"),
            source,
        })?;
        if tx
            .blocking_send(Job {
                slot: Slot::Bundle(index),
                data,
            })
            .is_err()
        {
            return Ok(report);
        }
    }
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
        let mut size = 0u64;
        for index in 0.. {
            let data = chunking::read_block(&mut reader, block_size).map_err(|source| {
                ArchiveError::Io {
                    path: path.clone(),
                    source,
                }
            })?;
            if data.is_empty() {
                break;
            }
            size += data.len() as u64;
            if tx
                .blocking_send(Job {
                    slot: Slot::Block { file, index },
                    data,
                })
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

/// The manifest makes the backup exist: written create-only after everything it names is durable.
async fn write_manifest(
    storage: &dyn Storage,
    manifest: &BackupManifest,
    catalog_path: &Path,
) -> Result<(), ArchiveError> {
    let summary = MetadataSummary {
        backup_id: &manifest.backup_id,
        service: &manifest.service,
        kind: &manifest.kind,
        started_at: manifest.started_at,
        finished_at: manifest.finished_at,
        size_bytes: manifest.size_bytes,
        new_bytes: manifest.new_bytes,
        manifest_key: layout::manifest_key(&manifest.backup_id),
    };
    let extra = serde_json::json!({
        "start_lsn": manifest.start_lsn.to_string(),
        "stop_lsn": manifest.stop_lsn.to_string(),
        "timeline": manifest.timeline.0,
    });
    publish(storage, &summary, &manifest.to_json(), extra).await?;
    let record = catalog::BackupRecord::from_manifest(manifest, "7_days", "UNVERIFIED");
    let path = catalog_path.to_path_buf();
    tokio::task::spawn_blocking(move || -> Result<(), ArchiveError> {
        let mut catalog = catalog::Catalog::open(&path)?;
        catalog.register_cluster(record.system_identifier, record.started_at_us)?;
        catalog.upsert_backup(&record)?;
        Ok(())
    })
    .await
    .map_err(ArchiveError::task("catalog task"))?
}

/// Make a backup exist: its manifest framed, create-only and durable, then the plain JSON
/// `.metadata` beside it (for people and older tools) with the manifest's checksum.
pub(crate) async fn publish(
    storage: &dyn Storage,
    summary: &MetadataSummary<'_>,
    manifest_json: &[u8],
    extra: serde_json::Value,
) -> Result<(), ArchiveError> {
    let checksum = storage::manifest::put_manifest(
        storage,
        &summary.manifest_key,
        manifest_json,
        PutMode::Create,
    )
    .await?;
    metadata(summary, &checksum, extra).store(storage).await?;
    Ok(())
}

/// What a `.metadata` file says of any backup (the seed's fields).
pub(crate) struct MetadataSummary<'a> {
    pub(crate) backup_id: &'a str,
    pub(crate) service: &'a str,
    pub(crate) kind: &'a str,
    pub(crate) started_at: jiff::Timestamp,
    pub(crate) finished_at: jiff::Timestamp,
    pub(crate) size_bytes: u64,
    pub(crate) new_bytes: u64,
    pub(crate) manifest_key: String,
}

/// The seed-compatible summary written next to a manifest, with `extra` fields of its kind.
fn metadata(
    summary: &MetadataSummary<'_>,
    manifest_checksum: &blake3::Hash,
    extra: serde_json::Value,
) -> storage::manifest::BackupMetadata {
    let duration = (summary.finished_at.as_second() - summary.started_at.as_second()).max(0);
    storage::manifest::BackupMetadata {
        backup_id: summary.backup_id.to_string(),
        backup_type: "full".into(),
        service: summary.service.to_string(),
        kind: summary.kind.to_string(),
        timestamp: summary
            .started_at
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string(),
        size_bytes: summary.size_bytes,
        size_readable: readable_size(summary.size_bytes),
        new_bytes: summary.new_bytes,
        duration_seconds: duration,
        files: vec![summary.manifest_key.clone()],
        checksum: format!("blake3:{}", manifest_checksum.to_hex()),
        verified: true,
        retention: "7_days".into(),
        restorability: "UNVERIFIED".into(),
        extra: match extra {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        },
    }
}

pub(crate) fn readable_size(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 10.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_the_seed() {
        assert_eq!(readable_size(536_870_912), "512MB");
        assert_eq!(readable_size(1536), "1.5KB");
        assert_eq!(readable_size(12), "12B");
    }

    #[test]
    fn timeline_comes_from_the_label() {
        let label =
            "START WAL LOCATION: 0/2000028 (file 000000020000000000000002)\nSTART TIMELINE: 2\n";
        assert_eq!(start_timeline(label).expect("timeline"), TimelineId(2));
        assert!(start_timeline("nothing").is_err());
    }

    #[test]
    fn walk_skips_what_postgres_says_to_skip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        for d in ["base/1", "pg_wal/archive_status", "pg_stat_tmp", "global"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        for f in [
            "base/1/1259",
            "pg_wal/000000010000000000000001",
            "pg_stat_tmp/x",
            "postmaster.pid",
            "global/pg_control",
            "base/1/pg_internal.init",
        ] {
            std::fs::write(root.join(f), b"x").expect("write");
        }
        let rels: Vec<String> = walk_data_dir(root, "PG_15_202209061")
            .expect("walk")
            .entries
            .into_iter()
            .map(|e| e.rel)
            .collect();
        assert_eq!(
            rels,
            vec![
                "base",
                "base/1",
                "base/1/1259",
                "global",
                "global/pg_control",
                "pg_stat_tmp",
                "pg_wal"
            ]
        );
    }

    fn mkdirs(root: &Path, dirs: &[&str]) {
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
    }

    fn write_files(root: &Path, files: &[&str]) {
        for f in files {
            std::fs::write(root.join(f), b"x").expect("write");
        }
    }

    /// A data directory as `initdb --waldir` plus a tablespace in a place with a space and a
    /// quote in its name leaves it, plus a stray link and an in-place tablespace.
    #[test]
    fn walk_copies_tablespaces_and_records_no_links() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        let space = dir.path().join("my ts's place");
        let waldir = dir.path().join("wal dir");
        let elsewhere = dir.path().join("elsewhere");
        mkdirs(
            &root,
            &["base/1", "global", "pg_tblspc/16400/PG_15_202209061/5"],
        );
        mkdirs(&space, &["PG_15_202209061/5", "PG_14_202107181/5"]);
        mkdirs(&waldir, &["archive_status"]);
        mkdirs(&elsewhere, &["sub"]);
        write_files(
            &root,
            &[
                "base/1/1259",
                "global/pg_control",
                "pg_tblspc/16400/PG_15_202209061/5/16401",
            ],
        );
        write_files(
            &space,
            &[
                "PG_15_202209061/5/16390",
                "PG_15_202209061/5/16390_fsm",
                "PG_14_202107181/5/999",
            ],
        );
        write_files(&waldir, &["000000010000000000000001"]);
        write_files(&elsewhere, &["sub/secret"]);
        std::fs::set_permissions(&space, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        std::fs::set_permissions(&waldir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        symlink(&space, root.join("pg_tblspc/16389")).expect("link");
        symlink(&waldir, root.join("pg_wal")).expect("link");
        symlink(&elsewhere, root.join("base/stray")).expect("link");
        symlink(elsewhere.join("sub/secret"), root.join("global/stray_file")).expect("link");
        symlink(&elsewhere, root.join("pg_tblspc/not_an_oid")).expect("link");

        let walk = walk_data_dir(&root, "PG_15_202209061").expect("walk");
        let got: Vec<(&str, EntryKind)> = walk
            .entries
            .iter()
            .map(|e| (e.rel.as_str(), e.kind))
            .collect();
        use EntryKind::{Dir, File};
        assert_eq!(
            got,
            vec![
                ("base", Dir),
                ("base/1", Dir),
                ("base/1/1259", File),
                ("global", Dir),
                ("global/pg_control", File),
                ("pg_tblspc", Dir),
                ("pg_tblspc/16389", Dir),
                ("pg_tblspc/16389/PG_15_202209061", Dir),
                ("pg_tblspc/16389/PG_15_202209061/5", Dir),
                ("pg_tblspc/16389/PG_15_202209061/5/16390", File),
                ("pg_tblspc/16389/PG_15_202209061/5/16390_fsm", File),
                ("pg_tblspc/16400", Dir),
                ("pg_tblspc/16400/PG_15_202209061", Dir),
                ("pg_tblspc/16400/PG_15_202209061/5", Dir),
                ("pg_tblspc/16400/PG_15_202209061/5/16401", File),
                ("pg_wal", Dir),
            ]
        );
        let find = |rel: &str| {
            walk.entries
                .iter()
                .find(|e| e.rel == rel)
                .expect("entry recorded")
        };
        assert_eq!(
            find("pg_tblspc/16389/PG_15_202209061/5/16390").abs,
            root.join("pg_tblspc/16389/PG_15_202209061/5/16390"),
            "tablespace files are read from the tablespace (through its link)"
        );
        assert_eq!(
            std::fs::canonicalize(&find("pg_tblspc/16389/PG_15_202209061/5/16390").abs)
                .expect("canonical"),
            std::fs::canonicalize(space.join("PG_15_202209061/5/16390")).expect("canonical"),
        );
        assert_eq!(find("pg_tblspc/16389").mode, 0o750, "the target's mode");
        assert_eq!(find("pg_wal").mode, 0o700);
        assert_eq!(find("pg_wal").size, 0);
        assert_eq!(walk.linked, BTreeMap::from([(16389, space.clone())]));
        assert_eq!(walk.in_place, BTreeSet::from([16400]));
    }

    #[test]
    fn a_tablespace_link_without_this_version_is_refused() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("data");
        let space = dir.path().join("ts");
        mkdirs(&root, &["pg_tblspc"]);
        mkdirs(&space, &["PG_14_202107181"]);
        symlink(&space, root.join("pg_tblspc/16389")).expect("link");
        let err = walk_data_dir(&root, "PG_15_202209061")
            .err()
            .expect("refused")
            .to_string();
        assert!(
            err.contains("16389") && err.contains("PG_15_202209061"),
            "{err}"
        );
    }

    #[test]
    fn tablespaces_match_their_links_or_the_backup_refuses() {
        let walk = |linked: &[u32], in_place: &[u32]| Walk {
            entries: Vec::new(),
            linked: linked
                .iter()
                .map(|o| (*o, PathBuf::from(format!("/ts/{o}"))))
                .collect(),
            in_place: in_place.iter().copied().collect(),
        };
        let row = |oid: u32, name: &str| (oid, name.to_string(), format!("/ts/{oid}"));
        let got = match_tablespaces(
            vec![row(1, "a"), row(2, "b"), row(3, "inplace")],
            &walk(&[1, 2], &[3]),
        )
        .expect("matched");
        assert_eq!(
            got.iter()
                .map(|t| (t.oid, t.name.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "a"), (2, "b")],
            "in-place tablespaces are plain directories, not listed"
        );
        let err = match_tablespaces(vec![row(1, "a"), row(2, "b")], &walk(&[1], &[]))
            .expect_err("a tablespace without a link")
            .to_string();
        assert!(
            err.contains("tablespace b") && err.contains("pg_tblspc/2"),
            "{err}"
        );
        let err = match_tablespaces(vec![row(1, "a")], &walk(&[1, 7], &[]))
            .expect_err("a link without a tablespace")
            .to_string();
        assert!(
            err.contains("pg_tblspc/7") && err.contains("/ts/7"),
            "{err}"
        );
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
