//! `BACKUP_DIR/.backup_status`: one JSON file that monitoring reads, rewritten atomically after
//! every backup, prune and verify: the last run of each operation with its outcome, the last
//! archived WAL, and the repository's size. Writing it never fails the operation it reports.
//! Beside it `.last_restore` (which backup the server was restored from) and the operation
//! logs in `logs/`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::Repository;

/// Record how `operation` ended in `.backup_status`: `error` when it failed, `problems` when it
/// ran but found some (a non-zero exit counts as a failure). A failure is notified; a command
/// that found problems (verify) has notified with them itself.
pub async fn report(
    settings: &crate::Settings,
    operation: &str,
    error: Option<String>,
    problems: bool,
) {
    let outcome = match (&error, problems) {
        (Some(e), _) => Err(e.clone()),
        (None, true) => Err("found problems (see its output)".to_string()),
        (None, false) => Ok(()),
    };
    update(settings, operation, &outcome).await;
    crate::metrics::write_textfile(settings, Some(&settings.database().server())).await;
    if let Some(e) = error {
        settings.notify(operation, false, &e, &e).await;
    }
}

/// Record that `operation` (`backup postgres base`, `prune`, ...) ended with `outcome` (the
/// error's words when it failed).
pub async fn update(repo: &impl Repository, operation: &str, outcome: &Result<(), String>) {
    // A missing BACKUP_DIR is never created; the command's own error already says so.
    let Some(dir) = repo.backup_dir() else {
        return;
    };
    if !tokio::fs::metadata(dir).await.is_ok_and(|m| m.is_dir()) {
        return;
    }
    let path = dir.join(".backup_status");
    let catalog = repo.catalog_path().ok();
    let now = jiff::Timestamp::now().to_string();
    let local = {
        let (path, operation, outcome, now) = (
            path.clone(),
            operation.to_string(),
            outcome.clone(),
            now.clone(),
        );
        tokio::task::spawn_blocking(move || local_status(&path, catalog, &operation, &outcome, now))
            .await
    };
    let Ok(mut status) = local else {
        return;
    };
    if let Ok(storage) = repo.open().await
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
    let written = tokio::task::spawn_blocking(move || {
        let written = write_atomically(&path, &Value::Object(status));
        (path, written)
    })
    .await;
    if let Ok((path, Err(e))) = written {
        tracing::warn!("{} not updated: {e}", path.display());
    }
}

/// The status as it was, with this run and what the catalog knows now.
fn local_status(
    path: &Path,
    catalog: Option<PathBuf>,
    operation: &str,
    outcome: &Result<(), String>,
    now: String,
) -> Map<String, Value> {
    let mut status: Map<String, Value> = read_regular(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut last = serde_json::json!({
        "finished_at": now,
        "outcome": if outcome.is_ok() { "success" } else { "failed" },
    });
    if let Err(e) = outcome {
        last["error"] = Value::from(e.as_str());
    }
    let runs = status
        .entry("last_runs")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(runs) = runs.as_object_mut() {
        runs.insert(operation.to_string(), last);
    }
    if let Some(Ok(catalog)) = catalog.map(catalog::Catalog::open) {
        if let Ok(backups) = catalog.backups(None) {
            let mut newest: Map<String, Value> = Map::new();
            for b in &backups {
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
    status
}

/// Record which backup the server in `data_dir` was restored from (`BACKUP_DIR/.last_restore`):
/// `verify-recovery` compares row counts with what that backup recorded.
pub fn record_restore(backup_dir: &Path, backup_id: &str, data_dir: &Path) {
    let path = backup_dir.join(".last_restore");
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
pub fn last_restore(backup_dir: &Path) -> Option<(String, jiff::Timestamp)> {
    let path = backup_dir.join(".last_restore");
    let value: Value = serde_json::from_slice(&read_regular(&path).ok()?).ok()?;
    let id = value.get("backup_id")?.as_str()?.to_string();
    let at = value.get("restored_at")?.as_str()?.parse().ok()?;
    Some((id, at))
}

/// The newest `count` logs of `operation` in `BACKUP_DIR/logs` (oldest first), each with its
/// RESULT line.
pub fn recent_logs(
    backup_dir: Option<&Path>,
    operation: &str,
    count: usize,
) -> Vec<(String, String)> {
    let Some(dir) = backup_dir.map(|d| d.join("logs")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("{operation}_")) && n.ends_with(".log"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    // Newest first; a simulation (`failover --simulate`) is not a run of the operation.
    let mut found: Vec<(String, String)> = names
        .into_iter()
        .rev()
        .filter_map(|name| {
            // Never through a link or a FIFO: `failover --status` runs as root.
            let text = read_regular(&dir.join(&name))
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default();
            if text.contains(crate::steps::SIMULATION_BANNER) {
                return None;
            }
            let result = text
                .lines()
                .rev()
                .find_map(|l| l.split_once("RESULT: ").map(|(_, r)| r.to_string()))
                .unwrap_or_else(|| "no result recorded (interrupted?)".into());
            Some((name, result))
        })
        .take(count)
        .collect();
    found.reverse();
    found
}

/// A status file's bytes, never through a link: a link there (planted by whoever can write
/// to BACKUP_DIR) would copy another file's contents into the repository. Non-blocking, so
/// that a FIFO there is refused rather than waited on.
pub(crate) fn read_regular(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.by_ref().take(16 << 20).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Replace `path` whole, private and (as root) given to the owner of BACKUP_DIR.
fn write_atomically(path: &Path, value: &Value) -> std::io::Result<()> {
    let owner = storage::private::Owner::of(path.parent().unwrap_or(Path::new(".")));
    let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    storage::atomic::write(path, &bytes, storage::atomic::WriteOptions::private(owner))
        .map_err(|e| e.source)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repository::Scratch;

    #[tokio::test]
    async fn every_run_is_recorded_beside_the_others_with_the_repository_size() {
        let scratch = Scratch::new();
        scratch.storage.set_object("packs/ab/abcd", vec![0; 1000]);
        update(&scratch, "prune", &Err("the lock is held".into())).await;
        update(&scratch, "verify", &Ok(())).await;
        let bytes = std::fs::read(scratch.dir.path().join(".backup_status")).expect("written");
        let status: Value = serde_json::from_slice(&bytes).expect("JSON");
        let runs = &status["last_runs"];
        assert_eq!(runs["prune"]["outcome"], "failed");
        assert_eq!(runs["prune"]["error"], "the lock is held");
        assert_eq!(runs["verify"]["outcome"], "success");
        assert!(runs["verify"].get("error").is_none());
        assert_eq!(status["repository"]["bytes"], 1000);
        assert_eq!(status["last_backups"], serde_json::json!({}));
        assert!(status.get("last_archived_wal").is_none());
    }

    #[test]
    fn the_last_restore_is_read_back_as_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(last_restore(dir.path()), None);
        record_restore(
            dir.path(),
            "base_20250101T000000Z",
            Path::new("/srv/pgdata"),
        );
        let (id, at) = last_restore(dir.path()).expect("recorded");
        assert_eq!(id, "base_20250101T000000Z");
        assert!(at <= jiff::Timestamp::now());
    }

    #[test]
    fn a_linked_last_restore_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let elsewhere = tempfile::tempdir().expect("tempdir");
        record_restore(elsewhere.path(), "base_x", Path::new("/srv/pgdata"));
        std::os::unix::fs::symlink(
            elsewhere.path().join(".last_restore"),
            dir.path().join(".last_restore"),
        )
        .expect("link");
        assert_eq!(last_restore(dir.path()), None);
    }

    #[test]
    fn recent_logs_are_the_newest_of_the_operation_with_their_result() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).expect("logs");
        for (name, text) in [
            ("failover_20250101T000000Z.log", "x\nRESULT: FAILED (a)\n"),
            (
                "failover_20250102T000000Z.log",
                "RESULT: SUCCESS (b)\nlater\n",
            ),
            ("failover_20250103T000000Z.log", "started\n"),
            ("drill_20250104T000000Z.log", "RESULT: SUCCESS (c)\n"),
        ] {
            std::fs::write(logs.join(name), text).expect("log");
        }
        assert_eq!(
            recent_logs(Some(dir.path()), "failover", 2),
            [
                (
                    "failover_20250102T000000Z.log".to_string(),
                    "SUCCESS (b)".to_string()
                ),
                (
                    "failover_20250103T000000Z.log".to_string(),
                    "no result recorded (interrupted?)".to_string()
                ),
            ]
        );
        assert!(recent_logs(None, "failover", 5).is_empty());
    }

    #[test]
    fn recent_logs_never_read_through_a_link_or_wait_on_a_fifo() {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = dir.path().join("logs");
        std::fs::create_dir(&logs).expect("logs");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "RESULT: root's secret\n").expect("secret");
        std::os::unix::fs::symlink(&secret, logs.join("failover_20250101T000000Z.log"))
            .expect("link");
        let fifo = logs.join("failover_20250102T000000Z.log");
        // Test set-up on the test's own thread.
        #[allow(clippy::disallowed_methods)]
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo");
        assert!(made.success());
        let none = "no result recorded (interrupted?)".to_string();
        assert_eq!(
            recent_logs(Some(dir.path()), "failover", 5),
            [
                ("failover_20250101T000000Z.log".to_string(), none.clone()),
                ("failover_20250102T000000Z.log".to_string(), none),
            ]
        );
    }
}
