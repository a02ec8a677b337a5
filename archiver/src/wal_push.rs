//! `archive_command`: archive one WAL, history or backup-history file.
//!
//! The contract PostgreSQL relies on: exit 0 only once the object is durable; a file already
//! archived with identical contents is a success (PostgreSQL re-archives after a crash); the
//! same name with different contents is refused and the archived copy is never replaced.

use std::path::{Path, PathBuf};

use catalog::{Catalog, WalRecord};
use storage::wal::{self, WalFileName};
use storage::{
    Compression, Durability, ObjectHeader, PutMode, Storage, StorageError, layout, object,
};
use tracing::{debug, info, warn};

use crate::{ArchiveError, cluster};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    Archived {
        name: String,
        stored_bytes: u64,
        plain_bytes: u64,
    },
    AlreadyArchived {
        name: String,
    },
}

/// Archive the file at `path` (archive_command's `%p`, relative to the data directory it runs
/// in); `global/pg_control` there tells history files which cluster they belong to.
pub async fn push_wal(
    storage: &dyn Storage,
    catalog_path: &Path,
    path: &Path,
    compression: Compression,
) -> Result<PushOutcome, ArchiveError> {
    let invalid = |reason: String| ArchiveError::InvalidWalFile {
        path: path.to_path_buf(),
        reason,
    };
    let file_name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| invalid("the path has no file name".into()))?;
    let name: WalFileName = file_name.parse().map_err(invalid)?;
    debug!(wal = %name, "pushing");
    let io = |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = tokio::fs::metadata(path).await.map_err(io)?.len();
    check_contents(path, &name, size).await?;
    let first_page = read_first_page(path).await.map_err(io)?;
    let (system_identifier, segment_size) =
        identify(storage, path, &name, &first_page, size).await?;

    let key = layout::wal_key(system_identifier, &name);
    let catalog = open_catalog(catalog_path.to_path_buf());
    let stored = match storage.head(&key).await {
        Ok(meta) => Some(meta.size),
        Err(e) if e.is_not_found() => None,
        Err(e) => return Err(e.into()),
    };
    if let Some(stored_bytes) = stored {
        // PostgreSQL re-archives after a crash: comparing checksums is enough, no compression.
        let ours = hash_file(path, io).await?;
        let outcome = compare_with_archived(storage, &key, &name, &ours).await?;
        // Another process (a look-ahead worker, an attempt killed mid-way) may have made it
        // visible without flushing it yet: flushed before PostgreSQL may delete the segment.
        storage.sync_object(&key).await?;
        let record = wal_record(system_identifier, &name, segment_size, &ours, stored_bytes);
        record_in_catalog(catalog.await, record).await;
        return Ok(outcome);
    }

    // Compression is most of the work: check the cluster and open the catalog meanwhile.
    let what = format!("WAL file {name}");
    let bound = cluster::bind(storage, system_identifier, segment_size, &what);
    let (catalog, bound, compressed) =
        tokio::join!(catalog, bound, compress_file(path, size, compression));
    bound?;
    let (header, encoded) = compressed?;
    debug!(wal = %name, "compressed");

    let (outcome, stored_bytes) = store(storage, &key, &name, &header, encoded).await?;
    debug!(wal = %name, "durable; recording in the catalog");
    let record = wal_record(
        system_identifier,
        &name,
        segment_size,
        &header,
        stored_bytes,
    );
    record_in_catalog(catalog, record).await;
    if matches!(outcome, PushOutcome::Archived { .. }) {
        info!(wal = %name, stored_bytes, plain_bytes = header.plain_len, "archived");
    }
    Ok(outcome)
}

/// History files are a few lines; anything this large is not one.
const MAX_HISTORY_BYTES: u64 = 1 << 20;

/// History and backup-history files are read by recovery and by restores: refuse one that
/// does not parse before anything is stored, so PostgreSQL keeps retrying (and logging the
/// reason) instead of an archive that breaks every later point-in-time restore.
async fn check_contents(path: &Path, name: &WalFileName, size: u64) -> Result<(), ArchiveError> {
    if !matches!(
        name,
        WalFileName::History { .. } | WalFileName::BackupHistory { .. }
    ) {
        return Ok(());
    }
    let invalid = |reason: String| ArchiveError::InvalidWalFile {
        path: path.to_path_buf(),
        reason,
    };
    if size > MAX_HISTORY_BYTES {
        return Err(invalid(format!(
            "{size} bytes is too large for a {} file (PostgreSQL writes a few lines)",
            name.kind()
        )));
    }
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|source| ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let checked = match name {
        WalFileName::History { timeline } => wal::check_history(*timeline, &bytes).map(|_| ()),
        _ => wal::check_backup_history(name, &bytes).map(|_| ()),
    };
    checked.map_err(|reason| invalid(format!("{reason}; nothing was archived")))
}

fn wal_record(
    system_identifier: u64,
    name: &WalFileName,
    segment_size: u64,
    header: &ObjectHeader,
    stored_bytes: u64,
) -> WalRecord {
    let now = jiff::Timestamp::now().as_microsecond();
    WalRecord::new(
        system_identifier,
        name,
        segment_size,
        Some(header),
        stored_bytes,
        now,
    )
}

async fn hash_file(
    path: &Path,
    io: impl Fn(std::io::Error) -> ArchiveError,
) -> Result<ObjectHeader, ArchiveError> {
    let source = path.to_path_buf();
    let (plain_len, checksum) =
        tokio::task::spawn_blocking(move || object::checksum_reader(std::fs::File::open(&source)?))
            .await
            .map_err(ArchiveError::task("hash task"))?
            .map_err(io)?;
    Ok(ObjectHeader {
        codec: storage::Codec::None,
        plain_len,
        checksum,
    })
}

/// Read, hash and compress the file; a segment of 4 MiB or more is split between threads.
async fn compress_file(
    path: &Path,
    size: u64,
    compression: Compression,
) -> Result<(ObjectHeader, Vec<u8>), ArchiveError> {
    let source = path.to_path_buf();
    let compression = Compression {
        workers: if size >= 4 << 20 {
            compression.workers.max(2)
        } else {
            0
        },
        ..compression
    };
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&source)?;
        object::encode_file_in_parts(&file, size, compression)
    })
    .await
    .map_err(ArchiveError::task("compression task"))?
    .map_err(|source| {
        if object::is_changed_size(&source) {
            return ArchiveError::InvalidWalFile {
                path: path.to_path_buf(),
                reason: format!(
                    "it changed size while being archived (from {size} bytes); PostgreSQL never \
                     modifies a file it asked to archive, so something else is writing to it"
                ),
            };
        }
        ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Put the object create-only; an existing object with the same contents is a success.
/// Returns the outcome and the stored size.
async fn store(
    storage: &dyn Storage,
    key: &str,
    name: &WalFileName,
    header: &ObjectHeader,
    encoded: Vec<u8>,
) -> Result<(PushOutcome, u64), ArchiveError> {
    let stored_bytes = encoded.len() as u64;
    match storage
        .put_bytes(key, encoded, PutMode::Create, Durability::Immediate)
        .await
    {
        Ok(_) => Ok((
            PushOutcome::Archived {
                name: name.to_string(),
                stored_bytes,
                plain_bytes: header.plain_len,
            },
            stored_bytes,
        )),
        // Recorded in the catalog all the same: an earlier attempt may have died between the
        // put and the catalog.
        Err(StorageError::AlreadyExists { .. }) => {
            let outcome = compare_with_archived(storage, key, name, header).await?;
            storage.sync_object(key).await?;
            Ok((outcome, storage.head(key).await?.size))
        }
        Err(e) => Err(e.into()),
    }
}

/// The cluster a file belongs to and the segment size: from the segment's own page header, or
/// for history files from `global/pg_control` beside it (archive_command runs in PGDATA), or
/// else from the repository.
async fn read_first_page(path: &Path) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut page = Vec::with_capacity(8192);
    tokio::fs::File::open(path)
        .await?
        .take(8192)
        .read_to_end(&mut page)
        .await?;
    Ok(page)
}

async fn identify(
    storage: &dyn Storage,
    path: &Path,
    name: &WalFileName,
    first_page: &[u8],
    size: u64,
) -> Result<(u64, u64), ArchiveError> {
    let invalid = |reason: String| ArchiveError::InvalidWalFile {
        path: path.to_path_buf(),
        reason,
    };
    if let WalFileName::Segment { .. } | WalFileName::Partial { .. } = name {
        let header = wal::parse_segment_header(first_page).map_err(invalid)?;
        if storage::pg_version::major_of_wal_magic(header.magic).is_none() {
            // WAL needs no layout fact to be stored and fetched: archived all the same.
            tracing::warn!(
                "{}: WAL page magic {:#06X} is of a PostgreSQL major lifeline does not know ({} to {}); archived anyway: upgrade lifeline",
                path.display(),
                header.magic,
                storage::pg_version::OLDEST,
                storage::pg_version::NEWEST
            );
        }
        if !matches!(name, WalFileName::Partial { .. }) && size != header.segment_size {
            return Err(invalid(format!(
                "{size} bytes, but its header says segments are {} bytes: the file is truncated",
                header.segment_size
            )));
        }
        // A partial segment is at most a segment (PostgreSQL writes them whole).
        if size > header.segment_size {
            return Err(invalid(format!(
                "{size} bytes, more than the {} bytes of a segment its header names",
                header.segment_size
            )));
        }
        let segment = name
            .segment(header.segment_size)
            .expect("segments have a segment number");
        if header.page_address != segment.start_lsn(header.segment_size) {
            return Err(invalid(format!(
                "its first page is for LSN {}, not {}: the file does not match its name",
                header.page_address,
                segment.start_lsn(header.segment_size)
            )));
        }
        return Ok((header.system_identifier, header.segment_size));
    }
    let control = PathBuf::from("global/pg_control");
    if let Ok(bytes) = tokio::fs::read(&control).await {
        let sysid = wal::parse_control_file_system_identifier(&bytes).map_err(invalid)?;
        let segment_size = storage::manifest::ClusterIdentity::load(storage)
            .await?
            .map_or(wal::DEFAULT_SEGMENT_SIZE, |i| i.segment_size);
        return Ok((sysid, segment_size));
    }
    match storage::manifest::ClusterIdentity::load(storage).await? {
        Some(identity) => Ok((
            identity.system_identifier().unwrap_or_default(),
            identity.segment_size,
        )),
        None => Err(invalid(
            "a history file carries no system identifier and neither global/pg_control nor the \
             repository names one: run wal push from the data directory"
                .into(),
        )),
    }
}

async fn compare_with_archived(
    storage: &dyn Storage,
    key: &str,
    name: &WalFileName,
    ours: &ObjectHeader,
) -> Result<PushOutcome, ArchiveError> {
    let bytes = storage.get_range(key, 0..object::HEADER_LEN as u64).await?;
    let archived = ObjectHeader::parse(key, &bytes)?;
    if archived.checksum == ours.checksum && archived.plain_len == ours.plain_len {
        // The normal path with look-ahead, and after a crash: no warning.
        info!(wal = %name, "already archived with identical contents; nothing to do");
        return Ok(PushOutcome::AlreadyArchived {
            name: name.to_string(),
        });
    }
    Err(ArchiveError::Conflict {
        name: name.to_string(),
        archived: archived.checksum.to_hex().to_string(),
        offered: ours.checksum.to_hex().to_string(),
    })
}

async fn open_catalog(path: PathBuf) -> Result<Catalog, ArchiveError> {
    tokio::task::spawn_blocking(move || Catalog::open(&path).map_err(ArchiveError::from))
        .await
        .map_err(ArchiveError::task("catalog task"))?
}

/// The catalog is an index of the repository: once the object is durable the segment is
/// archived, and failing PostgreSQL's archiver over the index would stop archiving and fill
/// pg_wal. So a catalog failure is a warning that says how to repair it.
async fn record_in_catalog(catalog: Result<Catalog, ArchiveError>, record: WalRecord) {
    let name = record.name.clone();
    let recorded = async move {
        let mut catalog = catalog?;
        tokio::task::spawn_blocking(move || -> Result<(), ArchiveError> {
            catalog.register_cluster(record.system_identifier, record.archived_at_us)?;
            catalog.record_wal(&record)?;
            Ok(())
        })
        .await
        .map_err(ArchiveError::task("catalog task"))?
    };
    if let Err(e) = recorded.await {
        warn!(
            wal = %name,
            "archived, but not recorded in the catalog: {e:#}; fix the catalog's permissions \
             (the archiving user must be able to write it) and run `lifeline catalog rebuild`"
        );
    }
}
