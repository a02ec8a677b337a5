//! `.last_restore`: which backup the server in a data directory was restored from
//! (`ops::status_file`).

use std::path::Path;

use crate::config::Settings;

/// Record which backup the server in `data_dir` was restored from.
pub fn record_restore(settings: &Settings, backup_id: &str, data_dir: &Path) {
    if let Some(dir) = &settings.backup_dir {
        ops::status_file::record_restore(dir, backup_id, data_dir);
    }
}
