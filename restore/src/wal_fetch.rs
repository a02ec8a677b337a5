//! `restore_command`: fetch one archived file, verify it, and write it where PostgreSQL asked,
//! from the read-ahead spool when a good copy waits there, else from the repository.

use std::path::Path;
use std::sync::Arc;

use storage::Storage;
use storage::manifest::ClusterIdentity;
use storage::wal::{self, WalFileName};
use tracing::info;

use crate::RestoreError;
use crate::prefetch::Spool;
use crate::wal_file::{hand_over, read_archived};

/// What PostgreSQL asked for: `%f` and `%p`.
#[derive(Debug, Clone, Copy)]
pub struct FetchRequest<'a> {
    /// The file name (`%f`).
    pub name: &'a str,
    /// Where to write it (`%p`).
    pub dest: &'a Path,
    /// The cluster; when not given, the one whose `global/pg_control` is in the working
    /// directory (PostgreSQL runs restore_command in PGDATA), else the repository's.
    pub system_identifier: Option<u64>,
    /// The read-ahead spool, when prefetch is on.
    pub spool: Option<&'a Spool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    Fetched {
        bytes: u64,
        /// The cluster it belongs to (resolved when the caller did not say).
        system_identifier: u64,
        /// Served from the prefetch spool rather than the repository.
        from_spool: bool,
        /// Read-ahead past this file is worth starting now (see [`Spool::wants_refill`]).
        read_ahead: bool,
    },
    /// Not archived: an ordinary answer (PostgreSQL probes for files that do not exist).
    NotArchived,
}

/// Why a fetch failed: recovery must stop rather than take it for "not archived".
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Checked before anything is read or served: `restore_command` passes the wrong thing
    /// (`%p` for `%f`).
    #[error(
        "{reason}: restore_command must be 'lifeline wal fetch %f %p' (the file name, then the path)"
    )]
    NotAWalFileName { reason: String },
    #[error("fetch {name}")]
    Failed {
        name: String,
        #[source]
        source: RestoreError,
    },
}

/// Answer `restore_command`. A segment waiting in the spool for a known cluster is served
/// without `open_repository` ever being called (no repository client at all); otherwise the
/// repository it opens is read. Errors of `open_repository` are returned as they are.
pub async fn fetch_wal<E, F, Fut>(
    request: &FetchRequest<'_>,
    open_repository: F,
) -> Result<FetchOutcome, E>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Arc<dyn Storage>, E>>,
    E: From<FetchError>,
{
    let name: WalFileName = request
        .name
        .parse()
        .map_err(|reason| FetchError::NotAWalFileName { reason })?;
    if let Some(sysid) = request.system_identifier
        && let Some(outcome) = from_spool(request, sysid, &name).await
    {
        return Ok(outcome);
    }
    let storage = open_repository().await?;
    let failed = |source| FetchError::Failed {
        name: request.name.to_string(),
        source,
    };
    let sysid = match request.system_identifier {
        Some(id) => id,
        None => {
            let sysid = resolve_cluster(storage.as_ref()).await.map_err(failed)?;
            if let Some(outcome) = from_spool(request, sysid, &name).await {
                return Ok(outcome);
            }
            sysid
        }
    };
    let plain = match read_archived(storage.as_ref(), sysid, &name).await {
        Ok(plain) => plain,
        Err(RestoreError::Storage(e)) if e.is_not_found() => {
            info!(wal = %name, "not in the archive");
            return Ok(FetchOutcome::NotArchived);
        }
        Err(e) => return Err(failed(e).into()),
    };
    let bytes = plain.len() as u64;
    hand_over(request.dest, plain).await.map_err(failed)?;
    info!(wal = %name, bytes, "restored");
    Ok(FetchOutcome::Fetched {
        bytes,
        system_identifier: sysid,
        from_spool: false,
        read_ahead: wants_read_ahead(request.spool, sysid, &name).await,
    })
}

/// The spooled copy of `name`, moved to the request's destination once it passes its
/// checksum; `None` when there is no spool or no good copy in it.
async fn from_spool(
    request: &FetchRequest<'_>,
    sysid: u64,
    name: &WalFileName,
) -> Option<FetchOutcome> {
    let bytes = request
        .spool?
        .serve(sysid, &name.to_string(), request.dest)
        .await?;
    info!(wal = %name, bytes, "restored from the prefetch spool");
    Some(FetchOutcome::Fetched {
        bytes,
        system_identifier: sysid,
        from_spool: true,
        read_ahead: wants_read_ahead(request.spool, sysid, name).await,
    })
}

async fn wants_read_ahead(spool: Option<&Spool>, sysid: u64, name: &WalFileName) -> bool {
    let Some(spool) = spool.cloned() else {
        return false;
    };
    let name = name.to_string();
    tokio::task::spawn_blocking(move || spool.wants_refill(sysid, &name))
        .await
        .unwrap_or(false)
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
