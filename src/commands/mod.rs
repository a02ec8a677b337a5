pub mod backup;
pub mod catalog;
pub mod dump;
pub mod info;
pub mod prune;
pub mod restore;
pub mod status_file;
pub mod verify;
pub mod wal;

/// `db0=12 db3=5`, or `none`: the key counts a Redis backup recorded.
pub fn counts_line(counts: &std::collections::BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".to_string();
    }
    counts
        .iter()
        .map(|(db, n)| format!("{db}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Tell `prune` that a restore is using `backup_id` (for a day: recovery goes on fetching WAL
/// after lifeline exits). A lease that cannot be written only warns: the restore matters more.
pub async fn take_lease(storage: &dyn storage::Storage, backup_id: &str) {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .unwrap_or_else(|| "host".into());
    let key = storage::layout::lease_key(backup_id, &format!("{host}-{}", std::process::id()));
    let body = serde_json::json!({ "backup_id": backup_id, "taken_at": jiff::Timestamp::now() });
    let written = storage
        .put_bytes(
            &key,
            serde_json::to_vec(&body).unwrap_or_default(),
            storage::PutMode::Overwrite,
            storage::Durability::Immediate,
        )
        .await;
    if let Err(e) = written {
        tracing::warn!("no lease on {backup_id} ({e}): a prune meanwhile could remove it");
    }
}
