use thiserror::Error;

#[derive(Debug, Error)]
pub enum OpsError {
    #[error("{source_name} is not a valid runbook:\n  {}", problems.join("\n  "))]
    Runbook {
        source_name: String,
        problems: Vec<String>,
    },
    #[error("PostgreSQL at {node}: {message}")]
    Postgres { node: String, message: String },
    #[error("{path}: {message}")]
    ConnectionFile { path: String, message: String },
    #[error("{what}: {message}")]
    Command { what: String, message: String },
    #[error("{0}")]
    Timeout(String),
    /// A value in the configuration file (or its environment variable) is not usable.
    #[error("{0}")]
    Setting(String),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
}
