//! What the ops crate reads through the settings: the repository, the catalog and BACKUP_DIR
//! (`.backup_status`, `.last_restore`, the operation logs).

use std::path::Path;

use crate::config::Settings;

impl ops::Repository for Settings {
    async fn open(&self) -> Result<std::sync::Arc<dyn storage::Storage>, ops::OpsError> {
        self.repository()
            .await
            .map_err(|e| ops::OpsError::Repository(format!("{e:#}")))
    }

    fn catalog_path(&self) -> Result<std::path::PathBuf, ops::OpsError> {
        Settings::catalog_path(self).map_err(|e| ops::OpsError::NotConfigured(format!("{e:#}")))
    }

    fn backup_dir(&self) -> Option<&Path> {
        self.backup_dir.as_deref()
    }
}

/// Record which backup the server in `data_dir` was restored from.
pub fn record_restore(settings: &Settings, backup_id: &str, data_dir: &Path) {
    if let Some(dir) = &settings.backup_dir {
        ops::status_file::record_restore(dir, backup_id, data_dir);
    }
}
