use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A backup's own working file on this machine (its chunk index, block lists) in the
    /// catalog's directory: the repository is not at fault.
    #[error(
        "the backup's working file {path} failed (it lives in the catalog's directory; if that disk is full, free space on it or move the catalog with LIFELINE_CATALOG)"
    )]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an archivable WAL file: {reason}")]
    InvalidWalFile { path: PathBuf, reason: String },
    #[error(
        "{what} belongs to cluster {found}, but this repository archives cluster {expected}; \
         refusing to mix clusters: point BACKUP_DIR (or S3_BACKUP_BUCKET) at a repository of its own"
    )]
    ForeignCluster {
        what: String,
        expected: u64,
        found: u64,
    },
    #[error(
        "{name} is already archived with different contents (archived blake3 {archived}, this file {offered}); \
         the archived copy is kept. Two servers may be archiving as the same cluster (split brain, or a \
         restored copy that was not promoted): stop the one that should not archive"
    )]
    Conflict {
        name: String,
        archived: String,
        offered: String,
    },
    #[error(transparent)]
    Tls(#[from] pgtls::TlsError),
    #[error("PostgreSQL: {action}")]
    Postgres {
        action: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
    /// Something the operator must fix before a backup can run; the message names it.
    #[error("{0}")]
    Precondition(String),
    /// A broken invariant inside lifeline (a bug, not something the operator did); the text
    /// names it.
    #[error("internal error: {0}")]
    Internal(String),
    /// A worker of this process stopped without an answer (it panicked or was cancelled): a
    /// bug, not something the operator did.
    #[error("internal error: the {what} stopped unexpectedly ({source})")]
    TaskFailed {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error(
        "WAL {segment} needed by the backup was not archived within {waited_secs} s; check archive_command and the server log"
    )]
    WalNotArchived { segment: String, waited_secs: u64 },
}

impl ArchiveError {
    pub(crate) fn task(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Self {
        move |source| ArchiveError::TaskFailed { what, source }
    }
}

pub(crate) trait PgContext<T> {
    fn doing(self, action: &'static str) -> Result<T, ArchiveError>;
}

impl<T> PgContext<T> for Result<T, tokio_postgres::Error> {
    fn doing(self, action: &'static str) -> Result<T, ArchiveError> {
        self.map_err(|source| ArchiveError::Postgres { action, source })
    }
}
