use std::path::PathBuf;

/// What went wrong with the repository, in terms a caller can branch on.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {key} not found in the repository")]
    NotFound { key: String },
    #[error("object {key} already exists in the repository")]
    AlreadyExists { key: String },
    #[error("object {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
    /// An encrypted repository's object that does not open: altered, moved, or not sealed.
    #[error("object {key} was refused: {reason}")]
    Refused { key: String, reason: String },
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("repository I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file of this machine's that an object is written into before it is stored (a
    /// backup's manifest): the repository is not at fault.
    #[error(
        "a temporary file in {path} failed (an object waits there until it is stored; if the disk is full, free space on it)"
    )]
    Scratch {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A remote repository failed in a way that may pass (throttling, timeouts, 5xx,
    /// connection refused); already retried when it reaches a caller.
    #[error("repository request {operation} {key} failed: {reason}")]
    Transient {
        operation: &'static str,
        key: String,
        reason: String,
    },
    /// A remote repository refused the request; retrying will not help.
    #[error("repository request {operation} {key} was refused: {reason}")]
    Rejected {
        operation: &'static str,
        key: String,
        reason: String,
    },
    #[error("repository at {path} is not usable: {reason}")]
    Unavailable { path: PathBuf, reason: String },
}

impl StorageError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.into(),
            source,
        }
    }

    /// True when the object is simply absent, as opposed to the repository failing.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// True when retrying the same call may succeed (a transient I/O failure).
    pub fn is_retryable(&self) -> bool {
        match self {
            StorageError::Transient { .. } => true,
            StorageError::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }
}

/// An error and its causes on one line, `what: why: why`, as the operator reads it in a
/// message that has room for one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
