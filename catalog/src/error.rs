use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(
        "cannot open the catalog {path}: {cause}; check LIFELINE_CATALOG / BACKUP_DIR and permissions"
    )]
    Open {
        path: PathBuf,
        cause: rusqlite::Error,
    },
    #[error(
        "the catalog's directory {dir} does not exist: create it, owned by the user that runs PostgreSQL, or fix LIFELINE_CATALOG / BACKUP_DIR"
    )]
    MissingDir { dir: PathBuf },
    #[error(
        "cannot create the catalog {path}: {cause}; check LIFELINE_CATALOG / BACKUP_DIR and permissions"
    )]
    Create {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot migrate the catalog {path}: {reason}")]
    Migrate { path: PathBuf, reason: String },
    #[error("catalog query failed while {action}")]
    Query {
        action: &'static str,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the catalog holds an invalid value in {what}: {value}")]
    Invalid { what: &'static str, value: String },
    /// Reading or writing the repository failed; the storage error names the object.
    #[error(transparent)]
    Repository(#[from] storage::StorageError),
    /// One step of a longer operation failed: the step, then why.
    #[error("{action}")]
    During {
        action: &'static str,
        #[source]
        source: Box<CatalogError>,
    },
    #[error(
        "another prune holds {key} ({holder}, {minutes} min ago): wait for it to finish; if it died, delete that object from the repository (it is taken over after 6 h)"
    )]
    PruneLocked {
        key: &'static str,
        /// What the holder wrote in the lock (host, process, when).
        holder: String,
        minutes: u64,
    },
    #[error(
        "this prune's lock {key} was taken over (now held by {holder:?}): stopped; the deletions so far leave every kept backup whole, and the other prune goes on"
    )]
    PruneLockLost { key: &'static str, holder: String },
    /// A file on this host (not in the repository) could not be read or removed.
    #[error("{action} {}", path.display())]
    LocalFile {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A background task died (panicked or was cancelled) before it could answer.
    #[error("{task} stopped before it finished: {reason}")]
    TaskFailed { task: &'static str, reason: String },
}

impl CatalogError {
    /// `source`, as the failure of the step `action`.
    pub fn during(action: &'static str, source: CatalogError) -> Self {
        CatalogError::During {
            action,
            source: Box::new(source),
        }
    }
}

pub(crate) trait QueryContext<T> {
    fn doing(self, action: &'static str) -> Result<T, CatalogError>;
}

impl<T> QueryContext<T> for Result<T, rusqlite::Error> {
    fn doing(self, action: &'static str) -> Result<T, CatalogError> {
        self.map_err(|source| CatalogError::Query { action, source })
    }
}
