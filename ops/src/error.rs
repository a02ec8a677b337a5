use thiserror::Error;

#[derive(Debug, Error)]
pub enum OpsError {
    #[error(transparent)]
    Drill(#[from] DrillError),
    #[error("{source_name} is not a valid runbook:\n  {}", problems.join("\n  "))]
    Runbook {
        source_name: String,
        problems: Vec<String>,
    },
    /// `message` carries the server's SQLSTATE for the reader; `sqlstate` for the code.
    #[error("PostgreSQL at {node}: {message}")]
    Postgres {
        node: String,
        message: String,
        sqlstate: Option<String>,
    },
    #[error("{path}: {message}")]
    ConnectionFile { path: String, message: String },
    #[error("{what}: {message}")]
    Command { what: String, message: String },
    #[error("{0}")]
    Timeout(String),
    /// A value in the configuration file (or its environment variable) is not usable.
    #[error("{0}")]
    Setting(String),
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
    #[error("open the repository")]
    OpenRepository(#[source] storage::StorageError),
    #[error("open the S3 repository")]
    OpenS3Repository(#[source] storage::StorageError),
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
    /// No server binaries of the backup's major: the text names what was tried and the fix.
    #[error("{0}")]
    NoServerBinaries(String),
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
        chain(self)
    }

    /// The SQLSTATE of a PostgreSQL server's refusal (`28000`: no such role), if it answered.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            OpsError::Postgres { sqlstate, .. } => sqlstate.as_deref(),
            _ => None,
        }
    }
}

pub(crate) use storage::error_chain as chain;

/// Why a restore drill could not run or could not finish. Inside the rehearsal (restore,
/// recovery, checks) it becomes the FAILED verdict, with the whole chain as its reason.
#[derive(Debug, Error)]
pub enum DrillError {
    #[error(
        "PostgreSQL will not run as root: run the drill as the database's owner (runuser -u postgres -- lifeline drill ...)"
    )]
    AsRoot,
    #[error(
        "the catalog lists no complete base backup to rehearse: run `lifeline backup postgres`"
    )]
    NoBaseBackup,
    /// A local file, directory or program the drill needs; `doing` names it.
    #[error("{doing}")]
    Io {
        doing: String,
        #[source]
        source: std::io::Error,
    },
    #[error("internal error: the {what} stopped unexpectedly")]
    TaskFailed {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("open the catalog {}", path.display())]
    OpenCatalog {
        path: std::path::PathBuf,
        #[source]
        source: catalog::CatalogError,
    },
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    /// No server binaries of the backup's major: the text names what was tried and the fix.
    #[error("{0}")]
    NoServerBinaries(String),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error("record the verdict in {backup_id}'s .metadata")]
    RecordVerdict {
        backup_id: String,
        #[source]
        source: catalog::CatalogError,
    },
    #[error(transparent)]
    Restore(#[from] restore::RestoreError),
    #[error("the archive cannot carry the backup to its end")]
    ArchiveShort(#[source] restore::RestoreError),
    #[error(
        "`id -un` did not name the OS user the drill runs as ({stderr}): run the drill as a user with a name (e.g. postgres)"
    )]
    NoOsUser { stderr: String },
    #[error(
        "the user name {0:?} cannot be written in pg_hba.conf: run the drill as a plainly named user (e.g. postgres)"
    )]
    UnwritableUserName(String),
    #[error(
        "{} is not valid UTF-8, which PostgreSQL's configuration cannot name: set drill-dir to a plain path",
        .0.display()
    )]
    NotUtf8(std::path::PathBuf),
    #[error(
        "no socket directory short enough for the scratch server: set drill-dir to a short path (at most {max} bytes)"
    )]
    NoSocketDir { max: usize },
    #[error("the scratch server did not start: {stderr} {log}")]
    ServerDidNotStart { stderr: String, log: String },
    #[error("the scratch server stopped before {what}: {log}")]
    ServerStopped { what: &'static str, log: String },
    #[error("the scratch server did not reach {what} within {seconds} s ({last}): {log}")]
    RecoveryTimedOut {
        what: &'static str,
        seconds: u64,
        last: String,
        log: String,
    },
    #[error("the paused scratch server did not stop: {stderr}")]
    PausedServerDidNotStop { stderr: String },
    /// `server` is "paused" or "promoted", `what` the position it was asked for.
    #[error("the {server} server reported the {what} {value:?}: {problem}")]
    BadPosition {
        server: &'static str,
        what: &'static str,
        value: String,
        problem: String,
    },
    #[error("the restore failed")]
    RestoreFailed(#[source] restore::RestoreError),
    /// The caller could not say how to restore (how WAL is fetched, from where).
    #[error("the restore failed")]
    RestoreSettings(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("connect to the promoted scratch server")]
    PromotedUnreachable(#[source] Box<OpsError>),
    #[error("the promoted server did not take a write")]
    WriteRefused(#[source] Box<OpsError>),
}
