use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A check that failed before anything was written; the message names the fix.
    #[error("{0}")]
    Refused(String),
    /// A worker of this process stopped without an answer (it panicked or was cancelled): a
    /// bug, not something the operator did.
    #[error("internal error: the {what} stopped unexpectedly ({source})")]
    TaskFailed {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// `--until` names a local time that the clock skips (a daylight-saving change).
    #[error("--until {text:?} does not exist in the local time zone")]
    NotLocalTime {
        text: String,
        #[source]
        source: jiff::Error,
    },
    #[error("read the manifest of {backup_id}")]
    ReadManifest {
        backup_id: String,
        #[source]
        source: Box<RestoreError>,
    },
    /// A restore of `what` (a backup id or a file) into `into` failed.
    #[error("restore {what} into {}", into.display())]
    RestoreInto {
        what: String,
        into: PathBuf,
        #[source]
        source: Box<RestoreError>,
    },
    /// A step that runs another program (psql, pg_restore, redis-server), or one the caller
    /// supplied (a pre-restore dump, a key count), failed; `step` says which, on what, and
    /// what was left unchanged.
    #[error("{step}")]
    Step {
        step: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A program failed, or the restored data did not pass its check; the message names the
    /// program, its target and what it said.
    #[error("{0}")]
    Failed(String),
    /// A delta restore stopped after it began to change the data directory, which is left
    /// without `pg_control` so that it cannot start half-restored.
    #[error(
        "the delta restore stopped before the end, and the data directory is left without \
         global/pg_control so that it cannot start half-restored: mend the cause below, then \
         run the restore with --delta again to finish it (with --from another backup of this \
         cluster if this one is damaged)"
    )]
    DeltaUnfinished {
        #[source]
        source: Box<RestoreError>,
    },
    /// Stopped by a signal (Ctrl-C, SIGTERM, a lost terminal); everything written was removed.
    #[error("interrupted: every worker was stopped and everything this restore wrote was removed")]
    Interrupted,
}

impl RestoreError {
    pub(crate) fn task(what: &'static str) -> impl FnOnce(tokio::task::JoinError) -> Self {
        move |source| RestoreError::TaskFailed { what, source }
    }

    pub(crate) fn step<E: Into<Box<dyn std::error::Error + Send + Sync>>>(
        step: impl Into<String>,
    ) -> impl FnOnce(E) -> Self {
        let step = step.into();
        move |source| RestoreError::Step {
            step,
            source: source.into(),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        RestoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// A blocking job on the blocking pool, its panic turned into an error naming `what`.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, RestoreError> + Send + 'static,
) -> Result<T, RestoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(RestoreError::task(what))?
}
