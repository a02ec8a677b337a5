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
    /// A catalog query failed.
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error("open the catalog {}", path.display())]
    OpenCatalog {
        path: std::path::PathBuf,
        #[source]
        source: catalog::CatalogError,
    },
    /// The repository could not be opened: the binary's words, causes included.
    #[error("{0}")]
    Repository(String),
    /// A backup's manifest could not be read: the backup and the restore crate's words.
    #[error("{message}")]
    Manifest { message: String },
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Restore(#[from] restore::RestoreError),
    /// The binary could not name the command a restored server fetches its WAL with.
    #[error("{0}")]
    RestoreCommand(String),
    /// Redis did not answer its key count: the Redis client's words.
    #[error("{0}")]
    Redis(String),
    #[error("Redis did not answer within 60 s of its restart")]
    RedisRestart(#[source] Box<OpsError>),
    /// A step needs something the configuration does not name; the text names the key.
    #[error("{0}")]
    NotConfigured(String),
    /// The failover stopped on purpose: nothing to do, or a check failed; the text says what
    /// to do next.
    #[error("{0}")]
    Stopped(String),
    #[error("{doing}")]
    Io {
        doing: String,
        #[source]
        source: std::io::Error,
    },
    /// A blocking task (a Redis query, a file write) died.
    #[error(transparent)]
    TaskFailed(#[from] tokio::task::JoinError),
}

impl OpsError {
    /// The error and its causes on one line, `what: why: why`, as the operator reads them in a
    /// RESULT line or a check.
    pub fn chain(&self) -> String {
        let mut text = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        text
    }
}
