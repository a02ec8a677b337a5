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
