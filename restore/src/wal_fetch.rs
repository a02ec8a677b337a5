//! `restore_command`: fetch one archived file, verify it, and write it where PostgreSQL asked.

use std::path::Path;

use storage::manifest::ClusterIdentity;
use storage::wal::{self, WalFileName};
use storage::{Storage, StorageExt, layout, object};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};

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
        && let Some(stored) = spool.take(sysid, &name).await
    {
        let result = decode(key.clone(), stored).await;
        spool.discard(sysid, &name).await;
        match result {
            Ok(plain) => {
                write_atomically(dest, &plain).await?;
                info!(wal = %name, bytes = plain.len(), "restored from the prefetch spool");
                return Ok(FetchOutcome::Fetched {
                    bytes: plain.len() as u64,
                    system_identifier: sysid,
                    from_spool: true,
                });
            }
            Err(e) => {
                warn!(wal = %name, "the prefetched copy failed its check ({e}); reading the repository")
            }
        }
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
    write_atomically(dest, &plain).await?;
    info!(wal = %name, bytes = plain.len(), "restored");
    Ok(FetchOutcome::Fetched {
        bytes: plain.len() as u64,
        system_identifier: sysid,
        from_spool: false,
    })
}

async fn decode(key: String, stored: Vec<u8>) -> Result<Vec<u8>, RestoreError> {
    tokio::task::spawn_blocking(move || object::decode(&key, &stored))
        .await
        .map_err(|e| RestoreError::Refused(format!("decompression task failed: {e}")))?
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

/// Write to a temporary name beside `dest`, fsync, rename: PostgreSQL never sees a prefix.
pub(crate) async fn write_atomically(dest: &Path, bytes: &[u8]) -> Result<(), RestoreError> {
    let file_name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dest.with_file_name(format!(".{file_name}.lifeline.{}", std::process::id()));
    let result = async {
        let mut file = tokio::fs::File::create(&temp).await?;
        file.write_all(bytes).await?;
        file.sync_all().await?;
        tokio::fs::rename(&temp, dest).await
    }
    .await;
    if let Err(e) = result {
        let _ = tokio::fs::remove_file(&temp).await;
        return Err(RestoreError::io(dest, e));
    }
    Ok(())
}
