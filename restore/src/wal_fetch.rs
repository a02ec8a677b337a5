//! `restore_command`: fetch one archived file, verify it, and write it where PostgreSQL asked.

use std::path::Path;

use storage::manifest::ClusterIdentity;
use storage::wal::{self, WalFileName};
use storage::{Storage, StorageExt, layout, object};
use tracing::info;

use crate::RestoreError;
use crate::prefetch::Spool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    Fetched {
        bytes: u64,
        /// The cluster it belongs to (resolved when the caller did not say).
        system_identifier: u64,
        /// Served from the prefetch spool rather than the repository.
        from_spool: bool,
    },
    /// Not archived: an ordinary answer (PostgreSQL probes for files that do not exist).
    NotArchived,
}

/// Fetch `name` into `dest`. The cluster is `system_identifier` when given, else the one whose
/// `global/pg_control` is in the working directory (PostgreSQL runs restore_command in PGDATA),
/// else the repository's. A segment waiting in `spool` is served from there once it passes
/// its checksum.
pub async fn fetch_wal(
    storage: &dyn Storage,
    system_identifier: Option<u64>,
    name: &str,
    dest: &Path,
    spool: Option<&Spool>,
) -> Result<FetchOutcome, RestoreError> {
    let name: WalFileName = name.parse().map_err(RestoreError::Refused)?;
    let sysid = match system_identifier {
        Some(id) => id,
        None => resolve_cluster(storage).await?,
    };
    let key = layout::wal_key(sysid, &name);
    if let Some(spool) = spool
        && let Some(bytes) = spool.serve(sysid, &name.to_string(), dest).await
    {
        info!(wal = %name, bytes, "restored from the prefetch spool");
        return Ok(FetchOutcome::Fetched {
            bytes,
            system_identifier: sysid,
            from_spool: true,
        });
    }
    let bytes = match storage.get_bytes(&key).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => {
            info!(wal = %name, "not in the archive");
            return Ok(FetchOutcome::NotArchived);
        }
        Err(e) => return Err(e.into()),
    };
    let plain = decode(key, bytes).await?;
    let size = plain.len() as u64;
    write_atomically(dest, plain).await?;
    info!(wal = %name, bytes = size, "restored");
    Ok(FetchOutcome::Fetched {
        bytes: size,
        system_identifier: sysid,
        from_spool: false,
    })
}

pub(crate) async fn decode(key: String, stored: Vec<u8>) -> Result<Vec<u8>, RestoreError> {
    tokio::task::spawn_blocking(move || object::decode(&key, &stored))
        .await
        .map_err(RestoreError::task("decompression task"))?
        .map_err(RestoreError::from)
}

async fn resolve_cluster(storage: &dyn Storage) -> Result<u64, RestoreError> {
    if let Ok(bytes) = tokio::fs::read("global/pg_control").await {
        return wal::parse_control_file_system_identifier(&bytes).map_err(RestoreError::Refused);
    }
    ClusterIdentity::load(storage)
        .await?
        .and_then(|i| i.system_identifier())
        .ok_or_else(|| {
            RestoreError::Refused(format!(
                "the repository at {} has no cluster.json: nothing was ever archived there; check BACKUP_DIR",
                storage.describe()
            ))
        })
}

/// Write to a temporary name beside `dest` and rename: PostgreSQL never sees a prefix. No
/// fsync: PostgreSQL reads the file at once, and after a crash it asks for it again.
pub(crate) async fn write_atomically(dest: &Path, bytes: Vec<u8>) -> Result<(), RestoreError> {
    let dest = dest.to_path_buf();
    let task = dest.clone();
    tokio::task::spawn_blocking(move || write_atomically_blocking(&task, &bytes))
        .await
        .map_err(|e| RestoreError::io(&dest, std::io::Error::other(e)))?
}

pub(crate) fn write_atomically_blocking(dest: &Path, bytes: &[u8]) -> Result<(), RestoreError> {
    use std::io::Write;
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dest.with_file_name(format!(".{file_name}.lifeline.{}", std::process::id()));
    let written = std::fs::File::create(&temp)
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|()| std::fs::rename(&temp, dest));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(RestoreError::io(dest, e));
    }
    Ok(())
}
