//! Repository verification: every manifest's chunks exist; with `read_data`, every chunk and
//! WAL object is read back and re-hashed. Problems name the object and the backups it breaks.

use std::collections::{BTreeMap, HashSet};

use futures::StreamExt;
use storage::manifest::BackupManifest;
use storage::{Storage, StorageExt, layout, object};

use crate::RestoreError;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub backups: usize,
    pub chunks: usize,
    pub wal_files: usize,
    pub bytes_read: u64,
    pub problems: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

pub async fn verify_repository(
    storage: &dyn Storage,
    read_data: bool,
    parallelism: usize,
) -> Result<VerifyReport, RestoreError> {
    let mut report = VerifyReport::default();
    // chunk hash -> the backups that need it
    let mut needed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for meta in storage.list(layout::BACKUPS_PREFIX).await? {
        let Some(id) = layout::parse_manifest_key(&meta.key) else {
            continue;
        };
        report.backups += 1;
        let manifest = match storage
            .get_bytes(&meta.key)
            .await
            .and_then(|b| object::decode(&meta.key, &b))
        {
            Ok(plain) => BackupManifest::from_json(&meta.key, &plain),
            Err(e) => Err(e),
        };
        match manifest {
            Ok(m) => {
                for chunk in m.chunks() {
                    needed
                        .entry(chunk.hash.clone())
                        .or_default()
                        .push(id.to_string());
                }
            }
            Err(e) => report.problems.push(format!("backup {id}: {e}")),
        }
    }
    let present: HashSet<String> = storage
        .list(layout::CHUNKS_PREFIX)
        .await?
        .into_iter()
        .filter_map(|m| m.key.rsplit('/').next().map(str::to_string))
        .collect();
    report.chunks = needed.len();
    for (hash, backups) in &needed {
        if !present.contains(hash) {
            report.problems.push(format!(
                "chunk {} is missing; needed by {}",
                layout::chunk_key(hash),
                backups.join(", ")
            ));
        }
    }
    let wal = storage.list(layout::WAL_PREFIX).await?;
    report.wal_files = wal.len();
    if !read_data {
        return Ok(report);
    }
    let keys: Vec<(String, Option<String>)> = needed
        .iter()
        .filter(|(h, _)| present.contains(*h))
        .map(|(h, b)| {
            (
                layout::chunk_key(h),
                Some(format!("{} (needed by {})", h, b.join(", "))),
            )
        })
        .chain(wal.into_iter().map(|m| (m.key, None)))
        .collect();
    let results: Vec<(String, Option<String>, Result<u64, String>)> = futures::stream::iter(keys)
        .map(|(key, label)| async move {
            let outcome = read_and_check(storage, &key).await;
            (key, label, outcome)
        })
        .buffer_unordered(parallelism.max(1) * 2)
        .collect()
        .await;
    for (key, label, outcome) in results {
        match outcome {
            Ok(bytes) => report.bytes_read += bytes,
            Err(reason) => report.problems.push(match label {
                Some(label) => format!("chunk {key} is corrupt: {reason}; chunk {label}"),
                None => format!("WAL object {key} is corrupt: {reason}"),
            }),
        }
    }
    report.problems.sort();
    Ok(report)
}

async fn read_and_check(storage: &dyn Storage, key: &str) -> Result<u64, String> {
    let bytes = storage.get_bytes(key).await.map_err(|e| e.to_string())?;
    let len = bytes.len() as u64;
    let key_owned = key.to_string();
    let plain = tokio::task::spawn_blocking(move || object::decode(&key_owned, &bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| match e {
            storage::StorageError::Corrupt { reason, .. } => reason,
            other => other.to_string(),
        })?;
    // A chunk's key is its content's hash: check that too.
    if let Some(hash) = key
        .strip_prefix(layout::CHUNKS_PREFIX)
        .and_then(|r| r.rsplit('/').next())
        && object::checksum(&plain).to_hex().as_str() != hash
    {
        return Err("content does not match its key".into());
    }
    Ok(len)
}
