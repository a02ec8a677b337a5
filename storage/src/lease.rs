//! Leases: a restore tells `prune` which backup it is reading, so that the retention policy
//! keeps that backup (and the WAL after it) until the restore and PostgreSQL's recovery are
//! done. A lease is one object under `leases/<backup id>/<holder>`; it protects its backup for
//! [`LIFETIME`] after it was written, and is never deleted: an expired lease is simply ignored.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use crate::{Durability, PutMode, Storage, StorageError, layout};

/// How long a lease protects its backup: the restore itself, then PostgreSQL's recovery
/// fetching WAL after lifeline has exited.
pub const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Take a lease on `backup_id` for `holder` (host and process). A lease that cannot be written
/// only warns: the restore matters more than the protection.
pub async fn take(storage: &dyn Storage, backup_id: &str, holder: &str) {
    if let Err(e) = write(storage, backup_id, holder).await {
        tracing::warn!("no lease on {backup_id} ({e}): a prune meanwhile could remove it");
    }
}

/// Take a lease on `backup_id` for this process ([`this_holder`]).
pub async fn take_here(storage: &dyn Storage, backup_id: &str) {
    take(storage, backup_id, &this_holder()).await;
}

/// This process as a lease holder: `host-pid`.
pub fn this_holder() -> String {
    format!("{}-{}", host_name(), std::process::id())
}

/// This host's name as it may appear in a repository key (letters, digits, `-`, `.`), or
/// `host`.
pub fn host_name() -> String {
    // The kernel's node name: set in containers that have no /etc/hostname too.
    let uname = rustix::system::uname();
    Some(uname.nodename().to_string_lossy().trim().to_string())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .unwrap_or_else(|| "host".into())
}

async fn write(storage: &dyn Storage, backup_id: &str, holder: &str) -> Result<(), StorageError> {
    let key = layout::lease_key(backup_id, holder);
    let body = serde_json::json!({ "backup_id": backup_id, "taken_at": jiff::Timestamp::now() });
    // A JSON value of strings always serializes.
    let body = serde_json::to_vec(&body).unwrap_or_default();
    storage
        .put_bytes(&key, body, PutMode::Overwrite, Durability::Immediate)
        .await
}

/// The backups a lease taken within [`LIFETIME`] protects.
pub async fn held(storage: &dyn Storage) -> Result<HashSet<String>, StorageError> {
    held_at(storage, SystemTime::now()).await
}

/// The backups a lease taken within [`LIFETIME`] before `now` protects.
pub async fn held_at(
    storage: &dyn Storage,
    now: SystemTime,
) -> Result<HashSet<String>, StorageError> {
    let cutoff = now.checked_sub(LIFETIME).unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(storage
        .list(layout::LEASES_PREFIX)
        .await?
        .into_iter()
        .filter(|m| m.last_modified >= cutoff)
        .filter_map(|m| layout::parse_lease_key(&m.key).map(str::to_string))
        .collect())
}

/// The keys of leases past [`LIFETIME`]: they protect nothing any more, and `prune` deletes
/// them so that the lease listing does not grow with every restore ever made.
pub async fn expired(storage: &dyn Storage) -> Result<Vec<String>, StorageError> {
    let cutoff = SystemTime::now()
        .checked_sub(LIFETIME)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(storage
        .list(layout::LEASES_PREFIX)
        .await?
        .into_iter()
        .filter(|m| m.last_modified < cutoff)
        .map(|m| m.key)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LocalStorage;

    #[tokio::test]
    async fn a_lease_protects_its_backup_for_its_lifetime_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = LocalStorage::open(dir.path()).expect("storage");
        assert!(held(&storage).await.expect("held").is_empty());
        take(&storage, "20250101T000000Z-base", "host-42").await;
        let now = SystemTime::now();
        let leased = held_at(&storage, now).await.expect("held");
        assert_eq!(
            leased.into_iter().collect::<Vec<_>>(),
            ["20250101T000000Z-base"]
        );
        let later = now + LIFETIME + Duration::from_secs(60);
        assert!(held_at(&storage, later).await.expect("held").is_empty());
    }
}
