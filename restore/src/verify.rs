//! Repository verification: every manifest's packs exist and are long enough for the chunks
//! the manifests place in them, every timeline history file parses, and the WAL chain of every timeline
//! is whole from the start of the oldest base backup to the newest segment archived (following
//! the history files); with `read_data`, every chunk a backup needs is read back, decompressed
//! and re-hashed, and so is every WAL object. Problems name the object and the backups it
//! breaks.

use std::collections::{BTreeMap, HashMap, HashSet};

use futures::StreamExt;
use storage::manifest::{BackupManifest, ChunkRef, StreamManifest};
use storage::{ChunkHash, PackId, Storage, StorageExt, layout, object, pack};

use crate::RestoreError;
use crate::pitr::{BackupWal, WalGap, check_wal_chains};
use crate::restore_base::decode_chunk;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerifyReport {
    pub backups: usize,
    pub packs: usize,
    pub chunks: usize,
    pub wal_files: usize,
    pub bytes_read: u64,
    /// Temporary files left by interrupted runs (counted by the caller on a local
    /// repository; not a problem, prune removes them).
    pub temporary_files: usize,
    pub temporary_bytes: u64,
    pub problems: Vec<String>,
    /// Segments missing from the WAL chains that recovery from the kept backups reads (also
    /// named in `problems`).
    pub wal_gaps: Vec<WalGap>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    /// What an alert says: how many problems in `repository`, and the first 20 of them.
    pub fn alert(&self, repository: &str) -> (String, String) {
        let shown: Vec<&str> = self.problems.iter().take(20).map(String::as_str).collect();
        let more = self.problems.len().saturating_sub(shown.len());
        let mut details = shown.join("\n");
        if more > 0 {
            details.push_str(&format!("\n... and {more} more"));
        }
        (
            format!("{} problem(s) in {repository}", self.problems.len()),
            details,
        )
    }
}

/// One `[FAIL]` line per problem, the temporary files found, and the summary line.
impl std::fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for problem in &self.problems {
            writeln!(f, "[FAIL] {problem}")?;
        }
        if self.temporary_files > 0 {
            writeln!(
                f,
                "{} temporary files left by interrupted runs ({:.1} MiB), removed by prune after \
                 the grace period",
                self.temporary_files,
                self.temporary_bytes as f64 / (1u64 << 20) as f64
            )?;
        }
        let read_back = if self.bytes_read > 0 {
            format!(", {} MiB read back", self.bytes_read >> 20)
        } else {
            String::new()
        };
        let verdict = if self.is_clean() {
            "OK".to_string()
        } else {
            format!("{} problem(s)", self.problems.len())
        };
        write!(
            f,
            "checked {} backups, {} chunks in {} packs, {} WAL objects{read_back}: {verdict}",
            self.backups, self.chunks, self.packs, self.wal_files
        )
    }
}

/// pack id -> chunk hash -> (the chunk, the backups that need it)
type Needed = BTreeMap<PackId, BTreeMap<ChunkHash, (ChunkRef, Vec<String>)>>;

pub async fn verify_repository(
    storage: &dyn Storage,
    read_data: bool,
    parallelism: usize,
) -> Result<VerifyReport, RestoreError> {
    let mut report = VerifyReport::default();
    let mut needed: Needed = BTreeMap::new();
    // cluster -> (its segment size, the WAL its base backups need)
    let mut kept_wal: BTreeMap<u64, (u64, Vec<BackupWal>)> = BTreeMap::new();
    for meta in storage.list(layout::BACKUPS_PREFIX).await? {
        let chunks = if let Some(id) = layout::parse_manifest_key(&meta.key) {
            let manifest = BackupManifest::load(storage, id).await;
            if let Ok(m) = &manifest
                && m.kind == storage::BackupKind::Base
            {
                let (_, kept) = kept_wal
                    .entry(m.system_identifier)
                    .or_insert((m.segment_size, Vec::new()));
                kept.push(BackupWal {
                    timeline: m.timeline.0,
                    start: m.start_lsn,
                    stop: m.stop_lsn,
                });
            }
            (
                id,
                manifest.map(|m| m.references().copied().collect::<Vec<_>>()),
            )
        } else if let Some(id) = layout::parse_stream_manifest_key(&meta.key) {
            let manifest = StreamManifest::load(storage, id).await;
            (
                id,
                manifest.map(|m| m.references().copied().collect::<Vec<_>>()),
            )
        } else {
            continue;
        };
        let (id, chunks) = chunks;
        report.backups += 1;
        match chunks {
            Ok(chunks) => {
                for chunk in &chunks {
                    needed
                        .entry(chunk.pack)
                        .or_default()
                        .entry(chunk.hash)
                        .or_insert_with(|| (*chunk, Vec::new()))
                        .1
                        .push(id.to_string());
                }
            }
            Err(e) => report.problems.push(format!("backup {id}: {e}")),
        }
    }
    // pack id -> its size, from the listing (no pack is read without --read-data)
    let present: HashMap<PackId, u64> = storage
        .list(layout::PACKS_PREFIX)
        .await?
        .into_iter()
        .filter_map(|m| Some((layout::parse_pack_key(&m.key)?, m.size)))
        .collect();
    report.packs = present.len();
    report.chunks = needed.values().map(BTreeMap::len).sum();
    let mut truncated = HashSet::new();
    for (pack_id, chunks) in &needed {
        let backups = || {
            let mut backups: Vec<&str> = chunks
                .values()
                .flat_map(|(_, b)| b.iter().map(String::as_str))
                .collect();
            backups.sort_unstable();
            backups.dedup();
            backups.join(", ")
        };
        let Some(&size) = present.get(pack_id) else {
            report.problems.push(format!(
                "pack {} is missing: {} chunk(s) lost, needed by {}",
                layout::pack_key(pack_id),
                chunks.len(),
                backups()
            ));
            continue;
        };
        if let Some(problem) = pack_size_problem(pack_id, size, chunks, backups) {
            truncated.insert(*pack_id);
            report.problems.push(problem);
        }
    }
    let wal = storage.list(layout::WAL_PREFIX).await?;
    report.wal_files = wal.len();
    report
        .problems
        .extend(check_history_files(storage, &wal, parallelism).await);
    for (sysid, (segment_size, kept)) in kept_wal {
        let records = crate::pitr::wal_records(&wal, sysid, segment_size);
        match crate::pitr::timeline_histories(storage, sysid, &records).await {
            Ok(histories) => {
                let chains = check_wal_chains(&records, &histories, segment_size, &kept);
                report.problems.extend(chains.problems());
                report.wal_gaps.extend(chains.gaps);
            }
            Err(e) => report.problems.push(format!(
                "the WAL history files of cluster {sysid} cannot be read, so its WAL chain was \
                 not checked: {e}"
            )),
        }
    }
    if !read_data {
        return Ok(report);
    }

    // A truncated pack is already reported; reading it back would only list its chunks again.
    let pack_checks: Vec<_> = needed
        .iter()
        .filter(|(id, _)| present.contains_key(*id) && !truncated.contains(*id))
        .collect();
    let pack_results: Vec<(u64, Vec<String>)> = futures::stream::iter(pack_checks)
        .map(|(id, chunks)| check_pack(storage, id, chunks))
        .buffer_unordered(parallelism.max(1))
        .collect()
        .await;
    let wal_results: Vec<(u64, Vec<String>)> = futures::stream::iter(wal)
        .map(|meta| async move {
            match read_object(storage, &meta.key).await {
                Ok(bytes) => (bytes, Vec::new()),
                Err(reason) => (
                    0,
                    vec![format!("WAL object {} is corrupt: {reason}", meta.key)],
                ),
            }
        })
        .buffer_unordered(parallelism.max(1) * 2)
        .collect()
        .await;
    for (bytes, problems) in pack_results.into_iter().chain(wal_results) {
        report.bytes_read += bytes;
        report.problems.extend(problems);
    }
    report.problems.sort();
    Ok(report)
}

/// A pack ends with its index object and a 12-byte trailer after the last chunk.
const PACK_TAIL_MIN: u64 = object::HEADER_LEN as u64 + 12;

/// A pack shorter than the chunks the manifests place in it (from its listed size alone).
fn pack_size_problem(
    pack_id: &PackId,
    size: u64,
    chunks: &BTreeMap<ChunkHash, (ChunkRef, Vec<String>)>,
    backups: impl FnOnce() -> String,
) -> Option<String> {
    let key = layout::pack_key(pack_id);
    let chunks_end = chunks
        .values()
        .map(|(c, _)| c.offset.saturating_add(c.stored))
        .max()
        .unwrap_or(0);
    if size < chunks_end {
        let lost = chunks
            .values()
            .filter(|(c, _)| c.offset.saturating_add(c.stored) > size)
            .count();
        return Some(format!(
            "pack {key} is truncated: {size} bytes, but the manifests place chunks up to byte \
             {chunks_end}; {lost} chunk(s) lost, needed by {}",
            backups()
        ));
    }
    if size < chunks_end.saturating_add(PACK_TAIL_MIN) {
        return Some(format!(
            "pack {key} is truncated: {size} bytes, its chunks end at byte {chunks_end} but its \
             index is cut off (prune cannot repack it); needed by {}",
            backups()
        ));
    }
    None
}

/// Every timeline history file must parse: recovery follows them to find the WAL of parent
/// timelines, and a point-in-time restore across a broken one fails.
async fn check_history_files(
    storage: &dyn Storage,
    wal: &[storage::ObjectMeta],
    parallelism: usize,
) -> Vec<String> {
    let histories: Vec<(String, storage::wal::TimelineId)> = wal
        .iter()
        .filter_map(|meta| match layout::parse_wal_key(&meta.key)? {
            (_, storage::wal::WalFileName::History { timeline }) => {
                Some((meta.key.clone(), timeline))
            }
            _ => None,
        })
        .collect();
    futures::stream::iter(histories)
        .map(|(key, timeline)| async move {
            let checked = match storage.get_bytes(&key).await {
                Ok(bytes) => object::decode(&key, &bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|plain| storage::wal::check_history(timeline, &plain)),
                Err(e) => Err(e.to_string()),
            };
            checked.err().map(|reason| {
                format!(
                    "history file {key} does not parse: {reason}; recovery cannot follow \
                     timeline {}; replace it with the copy in pg_wal of the server that \
                     created that timeline",
                    timeline.0
                )
            })
        })
        .buffer_unordered(parallelism.max(1))
        .filter_map(|p| async move { p })
        .collect()
        .await
}

/// Read a pack once and check its index and every chunk a backup needs from it.
async fn check_pack(
    storage: &dyn Storage,
    pack_id: &PackId,
    chunks: &BTreeMap<ChunkHash, (ChunkRef, Vec<String>)>,
) -> (u64, Vec<String>) {
    let key = layout::pack_key(pack_id);
    let bytes = match storage.get_bytes(&key).await {
        Ok(b) => b,
        Err(e) => return (0, vec![format!("pack {key} cannot be read: {e}")]),
    };
    let len = bytes.len() as u64;
    let chunks = chunks.clone();
    let ids = storage.chunk_ids();
    let pack_id = *pack_id;
    let checked = tokio::task::spawn_blocking(move || {
        let mut problems = Vec::new();
        if let Err(e) = pack::read_index(&key, &bytes) {
            problems.push(format!("pack {key} has a damaged index: {e}"));
        }
        if PackId::from(ids.of(&bytes)) != pack_id {
            problems.push(format!(
                "pack {key} does not match its name (its bytes changed)"
            ));
        }
        for (chunk, backups) in chunks.values() {
            let range = chunk.offset as usize..(chunk.offset + chunk.stored) as usize;
            let outcome = match bytes.get(range) {
                Some(framed) => decode_chunk(&key, chunk, &ids, framed).map(|_| ()),
                None => Err(RestoreError::Refused(
                    "the pack is shorter than the manifest says".into(),
                )),
            };
            if let Err(e) = outcome {
                problems.push(format!(
                    "chunk {} in {key} is corrupt ({e}); needed by {}",
                    chunk.hash,
                    backups.join(", ")
                ));
            }
        }
        problems
    })
    .await
    .unwrap_or_else(|e| vec![format!("checking pack {pack_id} failed: {e}")]);
    (len, checked)
}

async fn read_object(storage: &dyn Storage, key: &str) -> Result<u64, String> {
    let bytes = storage.get_bytes(key).await.map_err(|e| e.to_string())?;
    let len = bytes.len() as u64;
    let key_owned = key.to_string();
    tokio::task::spawn_blocking(move || object::decode(&key_owned, &bytes))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| match e {
            storage::StorageError::Corrupt { reason, .. } => reason,
            other => other.to_string(),
        })?;
    Ok(len)
}
