//! `BACKUP_DIR/.backup_status`: one JSON file that monitoring reads, rewritten atomically after
//! every backup, prune and verify: the last run of each operation with its outcome, the last
//! archived WAL, and the repository's size. Writing it never fails the operation it reports.

use std::path::Path;

use serde_json::{Map, Value};

use crate::config::Settings;

/// Record that `operation` (`backup postgres base`, `prune`, ...) ended with `outcome`.
pub async fn update(settings: &Settings, operation: &str, outcome: &anyhow::Result<()>) {
    // A missing BACKUP_DIR is never created; the command's own error already says so.
    let Some(dir) = settings.backup_dir().ok().filter(|d| d.is_dir()) else {
        return;
    };
    let path = dir.join(".backup_status");
    let mut status: Map<String, Value> = read_regular(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let now = jiff::Timestamp::now().to_string();
    let mut last = serde_json::json!({
        "finished_at": now,
        "outcome": if outcome.is_ok() { "success" } else { "failed" },
    });
    if let Err(e) = outcome {
        last["error"] = Value::from(format!("{e:#}"));
    }
    let runs = status
        .entry("last_runs")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(runs) = runs.as_object_mut() {
        runs.insert(operation.to_string(), last);
    }
    if let Ok(catalog) = settings.open_catalog() {
        if let Ok(backups) = catalog.backups(None) {
            let mut newest: Map<String, Value> = Map::new();
            for b in backups
                .iter()
                .filter(|b| b.state == catalog::BackupState::Complete)
            {
                newest.insert(
                    format!("{} {}", b.service, b.kind),
                    serde_json::json!({
                        "backup_id": b.backup_id,
                        "finished_at": jiff::Timestamp::from_microsecond(b.finished_at_us).ok(),
                        "size_bytes": b.size_bytes,
                        "retention": b.retention,
                        "restorability": b.restorability,
                    }),
                );
            }
            status.insert("last_backups".into(), Value::Object(newest));
        }
        if let Ok(Some(wal)) = catalog.last_wal() {
            status.insert(
                "last_archived_wal".into(),
                serde_json::json!({
                    "name": wal.name,
                    "archived_at": jiff::Timestamp::from_microsecond(wal.archived_at_us).ok(),
                }),
            );
        }
    }
    if let Ok(storage) = settings.repository().await
        && let Ok(objects) = storage.list("").await
    {
        status.insert(
            "repository".into(),
            serde_json::json!({
                "location": storage.describe(),
                "bytes": objects.iter().map(|m| m.size).sum::<u64>(),
            }),
        );
    }
    status.insert("updated_at".into(), Value::from(now));
    if let Err(e) = write_atomically(&path, &Value::Object(status)) {
        tracing::warn!("{} not updated: {e}", path.display());
    }
}

/// Record which backup the server in `data_dir` was restored from (`BACKUP_DIR/.last_restore`):
/// `verify-recovery` compares row counts with what that backup recorded.
pub fn record_restore(settings: &Settings, backup_id: &str, data_dir: &Path) {
    let Ok(dir) = settings.backup_dir() else {
        return;
    };
    let path = dir.join(".last_restore");
    let value = serde_json::json!({
        "backup_id": backup_id,
        "data_dir": data_dir,
        "restored_at": jiff::Timestamp::now(),
    });
    if let Err(e) = write_atomically(&path, &value) {
        tracing::warn!("{} not updated: {e}", path.display());
    }
}

/// The backup of the last restore and when it ran, from [`record_restore`].
pub fn last_restore(settings: &Settings) -> Option<(String, jiff::Timestamp)> {
    let path = settings.backup_dir().ok()?.join(".last_restore");
    let value: Value = serde_json::from_slice(&read_regular(&path).ok()?).ok()?;
    let id = value.get("backup_id")?.as_str()?.to_string();
    let at = value.get("restored_at")?.as_str()?.parse().ok()?;
    Some((id, at))
}

/// A status file's bytes, never through a link: a link there (planted by whoever can write
/// to BACKUP_DIR) would copy another file's contents into the repository.
fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.by_ref().take(16 << 20).read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn write_atomically(path: &Path, value: &Value) -> std::io::Result<()> {
    use std::io::Write;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A name nobody can guess, created exclusively: a link planted there is never followed.
    let temp = path.with_file_name(format!(
        ".{name}.{}.{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    ));
    let dir = path.parent().unwrap_or(Path::new("."));
    // Private, and as root given to the owner of BACKUP_DIR before it takes the real name.
    let owner = storage::private::Owner::of(dir);
    let result = (|| {
        let mut file = storage::private::create_new_file(&temp, owner)?;
        file.write_all(&serde_json::to_vec_pretty(value).unwrap_or_default())?;
        file.sync_all()?;
        std::fs::rename(&temp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}
