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
}

pub(crate) trait QueryContext<T> {
    fn doing(self, action: &'static str) -> Result<T, CatalogError>;
}

impl<T> QueryContext<T> for Result<T, rusqlite::Error> {
    fn doing(self, action: &'static str) -> Result<T, CatalogError> {
        self.map_err(|source| CatalogError::Query { action, source })
    }
}
