//! Where the repository, its catalog and BACKUP_DIR are, as the binary resolved them. Opened
//! only when a step needs them: a service restart never fails for want of a repository, and
//! no S3 client is set up for nothing.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::OpsError;

pub trait Repository: Sync {
    /// The repository, for reading.
    fn open(&self) -> impl Future<Output = Result<Arc<dyn storage::Storage>, OpsError>> + Send;

    /// The catalog's file, or why there is none.
    fn catalog_path(&self) -> Result<PathBuf, OpsError>;

    /// BACKUP_DIR, home of the status files and operation logs, when one is configured.
    fn backup_dir(&self) -> Option<&Path>;

    fn open_catalog(&self) -> Result<catalog::Catalog, OpsError> {
        let path = self.catalog_path()?;
        catalog::Catalog::open(&path).map_err(|source| OpsError::OpenCatalog { path, source })
    }
}

/// Read the catalog off the async threads (SQLite is blocking file I/O); `read` is given the
/// opened catalog, or why it could not be opened.
pub(crate) async fn read_catalog<T: Send + 'static>(
    repo: &impl Repository,
    read: impl FnOnce(Result<catalog::Catalog, OpsError>) -> T + Send + 'static,
) -> Result<T, OpsError> {
    let path = repo.catalog_path();
    let opened = move || {
        path.and_then(|path| {
            catalog::Catalog::open(&path).map_err(|source| OpsError::OpenCatalog { path, source })
        })
    };
    Ok(tokio::task::spawn_blocking(move || read(opened())).await?)
}

/// A repository in memory and a BACKUP_DIR (with the catalog) in a temporary directory.
#[cfg(test)]
pub(crate) struct Scratch {
    pub storage: testing::MemoryStorage,
    pub dir: tempfile::TempDir,
}

#[cfg(test)]
impl Scratch {
    pub fn new() -> Self {
        Self {
            storage: testing::MemoryStorage::new(),
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
}

#[cfg(test)]
impl Repository for Scratch {
    async fn open(&self) -> Result<Arc<dyn storage::Storage>, OpsError> {
        Ok(Arc::new(self.storage.clone()))
    }

    fn catalog_path(&self) -> Result<PathBuf, OpsError> {
        Ok(self.dir.path().join("catalog.db"))
    }

    fn backup_dir(&self) -> Option<&Path> {
        Some(self.dir.path())
    }
}
