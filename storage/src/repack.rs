//! Repacking: packs hold the new chunks of one backup; as backups expire, a pack can end up
//! with a few chunks some kept backup still names and many that nobody does. Such a pack can
//! never be deleted whole, and the repository grows by its dead bytes. Repacking copies the
//! live chunks of sparse packs, verbatim (still compressed, re-verified on the way), into new
//! packs; the manifests are then pointed at the copies, and the old packs become unreferenced
//! garbage for the two-phase sweep of `prune` to delete after its grace period.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::manifest::{BackupManifest, ChunkRef, StreamManifest, put_manifest};
use crate::pack::{self, DEFAULT_PACK_TARGET, PackBuilder};
use crate::{Durability, PackId, PutMode, Storage, StorageError, StorageExt, layout};

/// What [`sweep_packs`] did.
#[derive(Debug, Default)]
pub struct PackSweep {
    pub deleted: usize,
    pub repacked: usize,
    pub copied_bytes: u64,
    /// Unreferenced packs marked, waiting out the grace period.
    pub waiting: usize,
    /// Backups whose manifest now names the copies, with the new manifest's checksum.
    pub rewritten: Vec<(String, blake3::Hash)>,
}

/// The manifests that remain, as read: rewritten in place when their chunks move.
// One per backup, each owning far more on the heap than its inline size: boxing buys nothing.
#[allow(clippy::large_enum_variant)]
enum Manifest {
    Base(BackupManifest),
    Stream(StreamManifest),
}

impl Manifest {
    /// Every chunk reference: a chunk named at two places (which lifeline never writes, but a
    /// manifest could say) keeps both places live.
    fn references(&self) -> Box<dyn Iterator<Item = &ChunkRef> + '_> {
        match self {
            Manifest::Base(m) => Box::new(m.references()),
            Manifest::Stream(m) => Box::new(m.references()),
        }
    }

    /// Point the manifest at the copies; true when anything moved.
    fn relocate(&mut self, moved: &Relocations) -> bool {
        match self {
            Manifest::Base(m) => m.relocate(moved),
            Manifest::Stream(m) => m.relocate(moved),
        }
    }

    /// Store it under `key` in place of the old one; its backup id and the new checksum.
    async fn overwrite(
        &self,
        storage: &dyn Storage,
        key: &str,
    ) -> Result<(String, blake3::Hash), StorageError> {
        let (id, checksum) = match self {
            Manifest::Base(m) => (
                &m.backup_id,
                put_manifest(storage, key, m, PutMode::Overwrite).await?,
            ),
            Manifest::Stream(m) => (
                &m.backup_id,
                put_manifest(storage, key, m, PutMode::Overwrite).await?,
            ),
        };
        Ok((id.clone(), checksum))
    }
}

async fn remaining_manifests(
    storage: &dyn Storage,
) -> Result<Vec<(String, Manifest)>, StorageError> {
    let mut all = Vec::new();
    for meta in storage.list(layout::BACKUPS_PREFIX).await? {
        if let Some(id) = layout::parse_stream_manifest_key(&meta.key) {
            let m = StreamManifest::load(storage, id).await?;
            all.push((meta.key, Manifest::Stream(m)));
        } else if let Some(id) = layout::parse_manifest_key(&meta.key) {
            let m = BackupManifest::load(storage, id).await?;
            all.push((meta.key, Manifest::Base(m)));
        }
    }
    Ok(all)
}

/// Repack the packs at least `min_unused_percent` dead (and older than `grace`: younger ones
/// belong to a backup that has only now published them), point the manifests at the copies,
/// then delete the packs an earlier sweep found unreferenced at least `grace` ago and that
/// still are, and mark the newly unreferenced ones for a later sweep.
pub async fn sweep_packs(
    storage: &dyn Storage,
    grace: Duration,
    min_unused_percent: u64,
) -> Result<PackSweep, StorageError> {
    let mut manifests = remaining_manifests(storage).await?;
    let now = jiff::Timestamp::now();
    let settled = SystemTime::now()
        .checked_sub(grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let sizes: BTreeMap<PackId, u64> = storage
        .list(layout::PACKS_PREFIX)
        .await?
        .iter()
        .filter(|m| m.last_modified <= settled)
        .filter_map(|m| Some((layout::parse_pack_key(&m.key)?, m.size)))
        .collect();
    let live = live_chunks(manifests.iter().flat_map(|(_, m)| m.references()));
    let sparse = sparse_packs(&sizes, &live, min_unused_percent);
    let mut sweep = PackSweep {
        repacked: sparse.len(),
        copied_bytes: sparse
            .iter()
            .flat_map(|id| live.get(id).into_iter().flatten())
            .map(|c| c.stored)
            .sum(),
        ..PackSweep::default()
    };
    if !sparse.is_empty() {
        let moved = repack(storage, &sparse, &live).await?;
        for (key, manifest) in &mut manifests {
            if manifest.relocate(&moved) {
                sweep
                    .rewritten
                    .push(manifest.overwrite(storage, key).await?);
            }
        }
    }

    let referenced: HashSet<PackId> = manifests
        .iter()
        .flat_map(|(_, m)| m.references())
        .map(|c| c.pack)
        .collect();
    let packs: Vec<PackId> = storage
        .list(layout::PACKS_PREFIX)
        .await?
        .iter()
        // Anything else under packs/ is not lifeline's: never deleted.
        .filter_map(|m| layout::parse_pack_key(&m.key))
        .collect();
    let pending = load_pending(storage).await;
    let grace_us = i64::try_from(grace.as_micros()).unwrap_or(i64::MAX);
    let (doomed, marks) = plan_sweep(
        &packs,
        &referenced,
        &pending,
        now.as_microsecond(),
        grace_us,
    );
    let keys: Vec<String> = doomed.iter().map(layout::pack_key).collect();
    storage.delete_many(&keys).await?;
    let text = serde_json::to_vec_pretty(&marks).unwrap_or_default();
    storage
        .put_bytes(
            layout::PRUNE_PENDING_KEY,
            text,
            PutMode::Overwrite,
            Durability::Immediate,
        )
        .await?;
    sweep.deleted = doomed.len();
    sweep.waiting = marks.len();
    Ok(sweep)
}

/// The marks of earlier sweeps; unreadable marks start the count again (nothing is lost: a
/// pack is only deleted later).
async fn load_pending(storage: &dyn Storage) -> PendingPacks {
    match storage.get_bytes(layout::PRUNE_PENDING_KEY).await {
        // By name first: a mark an older lifeline left on something under packs/ that is not
        // a pack costs that mark only, not the others.
        Ok(bytes) => match serde_json::from_slice::<BTreeMap<String, i64>>(&bytes) {
            Ok(marks) => marks
                .into_iter()
                .filter_map(|(id, at)| Some((id.parse().ok()?, at)))
                .collect(),
            Err(e) => {
                tracing::warn!(
                    "{} does not parse ({e}); marking afresh",
                    layout::PRUNE_PENDING_KEY
                );
                PendingPacks::new()
            }
        },
        Err(_) => PendingPacks::new(),
    }
}

/// Where chunks moved: (old pack, old offset) to the chunk in its new pack.
pub type Relocations = HashMap<(PackId, u64), ChunkRef>;

/// Live chunks per pack, each once, from every manifest that remains.
pub fn live_chunks<'a>(
    refs: impl IntoIterator<Item = &'a ChunkRef>,
) -> HashMap<PackId, Vec<ChunkRef>> {
    let mut seen = std::collections::HashSet::new();
    let mut live: HashMap<PackId, Vec<ChunkRef>> = HashMap::new();
    for c in refs {
        if seen.insert((c.pack, c.offset)) {
            live.entry(c.pack).or_default().push(*c);
        }
    }
    live
}

/// Packs (of `sizes`, id to bytes) of which at least `min_unused_percent` of the bytes belong
/// to no live chunk, but some do: those worth rewriting. Wholly dead packs are not listed
/// (they are deleted, not repacked).
pub fn sparse_packs(
    sizes: &BTreeMap<PackId, u64>,
    live: &HashMap<PackId, Vec<ChunkRef>>,
    min_unused_percent: u64,
) -> Vec<PackId> {
    sizes
        .iter()
        .filter_map(|(id, &size)| {
            let chunks = live.get(id)?;
            let used: u64 = chunks.iter().map(|c| c.stored).sum();
            let unused = size.saturating_sub(used);
            (size > 0 && unused * 100 >= size * min_unused_percent).then_some(*id)
        })
        .collect()
}

/// Copy the live chunks of `packs` into new packs (written durably before this returns).
pub async fn repack(
    storage: &dyn Storage,
    packs: &[PackId],
    live: &HashMap<PackId, Vec<ChunkRef>>,
) -> Result<Relocations, StorageError> {
    let ids = storage.chunk_ids();
    let mut moved = Relocations::new();
    let mut builder = PackBuilder::new();
    let mut pending: Vec<((PackId, u64), ChunkRef)> = Vec::new();
    for id in packs {
        let Some(chunks) = live.get(id) else {
            continue;
        };
        let key = layout::pack_key(id);
        let bytes = storage.get_bytes(&key).await?;
        for c in chunks {
            let framed = slice(&key, &bytes, c)?;
            pack::open_chunk(&key, framed, &ids, &c.hash, c.len)?;
            let offset = builder.add(c.hash, framed);
            // The new pack is named once sealed: `store` sets it.
            pending.push(((c.pack, c.offset), ChunkRef { offset, ..*c }));
            if builder.len() >= DEFAULT_PACK_TARGET {
                let full = std::mem::take(&mut builder);
                store(storage, full, &mut pending, &mut moved).await?;
            }
        }
    }
    if !builder.is_empty() {
        store(storage, builder, &mut pending, &mut moved).await?;
    }
    Ok(moved)
}

fn slice<'a>(key: &str, pack: &'a [u8], c: &ChunkRef) -> Result<&'a [u8], StorageError> {
    let start = usize::try_from(c.offset).ok();
    let end = c
        .offset
        .checked_add(c.stored)
        .and_then(|e| usize::try_from(e).ok());
    match (start, end) {
        (Some(s), Some(e)) if e <= pack.len() => Ok(&pack[s..e]),
        _ => Err(StorageError::Corrupt {
            key: key.to_string(),
            reason: format!(
                "chunk {} at {}+{} lies outside the pack",
                c.hash, c.offset, c.stored
            ),
        }),
    }
}

async fn store(
    storage: &dyn Storage,
    builder: PackBuilder,
    pending: &mut Vec<((PackId, u64), ChunkRef)>,
    moved: &mut Relocations,
) -> Result<(), StorageError> {
    let sealed = builder.seal(&storage.chunk_ids())?;
    let key = layout::pack_key(&sealed.id);
    match storage
        .put_bytes(&key, sealed.bytes, PutMode::Create, Durability::Immediate)
        .await
    {
        // Same bytes, same name: an identical pack is already there.
        Ok(()) | Err(StorageError::AlreadyExists { .. }) => {}
        Err(e) => return Err(e),
    }
    for (from, mut to) in pending.drain(..) {
        to.pack = sealed.id;
        moved.insert(from, to);
    }
    Ok(())
}

/// Packs found unreferenced, with when (microseconds since the epoch): the first phase of the
/// sweep. Kept in the repository (`layout::PRUNE_PENDING_KEY`) so that any host's next prune
/// carries on.
pub type PendingPacks = BTreeMap<PackId, i64>;

/// The two-phase sweep: a pack is deleted only when it was unreferenced when an earlier prune
/// marked it, at least `grace_us` ago, and is still unreferenced now. A backup that was
/// writing its packs (or naming old ones) when they were marked has published its manifest by
/// then, and the pack is referenced again. Returns the packs to delete and the marks to keep.
pub fn plan_sweep(
    packs: &[PackId],
    referenced: &std::collections::HashSet<PackId>,
    pending: &PendingPacks,
    now_us: i64,
    grace_us: i64,
) -> (Vec<PackId>, PendingPacks) {
    let mut doomed = Vec::new();
    let mut marks = PendingPacks::new();
    for id in packs {
        if referenced.contains(id) {
            continue;
        }
        match pending.get(id) {
            Some(&marked) if now_us.saturating_sub(marked) >= grace_us => doomed.push(*id),
            Some(&marked) => {
                marks.insert(*id, marked);
            }
            None => {
                marks.insert(*id, now_us);
            }
        }
    }
    (doomed, marks)
}

fn relocate_all<'a>(refs: impl Iterator<Item = &'a mut ChunkRef>, moved: &Relocations) -> bool {
    let mut changed = false;
    for c in refs {
        if let Some(to) = moved.get(&(c.pack, c.offset)) {
            *c = *to;
            changed = true;
        }
    }
    changed
}

impl BackupManifest {
    /// Point chunk references at their new packs; true when any changed.
    pub fn relocate(&mut self, moved: &Relocations) -> bool {
        let files = self.files.iter_mut().flat_map(|f| f.blocks.iter_mut());
        let in_files = relocate_all(files, moved);
        relocate_all(self.bundle.iter_mut(), moved) || in_files
    }
}

impl StreamManifest {
    /// Point chunk references at their new packs; true when any changed.
    pub fn relocate(&mut self, moved: &Relocations) -> bool {
        relocate_all(
            self.files.iter_mut().flat_map(|f| f.chunks.iter_mut()),
            moved,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Compression, LocalStorage, object};

    /// A pack id made of `n`.
    fn id(n: u8) -> PackId {
        PackId::from_bytes([n; 32])
    }

    fn chunk(pack: u8, offset: u64, stored: u64) -> ChunkRef {
        let mut hash = [pack; 32];
        hash[..8].copy_from_slice(&offset.to_le_bytes());
        ChunkRef {
            hash: crate::ChunkHash::from_bytes(hash),
            len: stored,
            pack: id(pack),
            offset,
            stored,
        }
    }

    #[test]
    fn only_packs_with_enough_dead_bytes_are_sparse() {
        let (full, half, dead, little) = (1, 2, 3, 4);
        let sizes = BTreeMap::from([
            (id(full), 1000),
            (id(half), 1000),
            (id(dead), 1000),
            (id(little), 1000),
        ]);
        let refs = [
            chunk(full, 0, 980),
            chunk(half, 0, 500),
            chunk(half, 0, 500),
            chunk(little, 0, 800),
        ];
        let live = live_chunks(refs.iter());
        assert_eq!(live[&id(half)].len(), 1, "a chunk named twice is live once");
        assert_eq!(sparse_packs(&sizes, &live, 30), vec![id(half)]);
        assert_eq!(sparse_packs(&sizes, &live, 20), vec![id(half), id(little)]);
    }

    #[test]
    fn packs_are_deleted_only_after_two_sightings_a_grace_period_apart() {
        let (a, b, c, d) = (id(1), id(2), id(3), id(4));
        let packs = vec![a, b, c, d];
        let referenced = std::collections::HashSet::from([a]);
        let pending = PendingPacks::from([(b, 0), (c, 50), (a, 0)]);
        let (doomed, marks) = plan_sweep(&packs, &referenced, &pending, 100, 60);
        assert_eq!(doomed, vec![b], "c was marked too recently, d only now");
        assert_eq!(marks, PendingPacks::from([(c, 50), (d, 100)]));
        // With no grace, a pack still goes only on the second sighting.
        let (doomed, marks) = plan_sweep(&packs, &referenced, &PendingPacks::new(), 100, 0);
        assert!(doomed.is_empty());
        let (doomed, _) = plan_sweep(&packs, &referenced, &marks, 100, 0);
        assert_eq!(doomed.len(), 3);
    }

    #[tokio::test]
    async fn live_chunks_move_verified_and_manifests_follow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = LocalStorage::open(dir.path()).expect("open");
        let mut builder = PackBuilder::new();
        let mut refs = Vec::new();
        for i in 0..4u8 {
            let plain = vec![i; 5000];
            let (_, framed) = object::encode(&plain, Compression::default()).expect("encode");
            let hash = object::checksum(&plain).into();
            let offset = builder.add(hash, &framed);
            refs.push(ChunkRef {
                hash,
                len: 5000,
                pack: id(0),
                offset,
                stored: framed.len() as u64,
            });
        }
        let sealed = builder.seal(&crate::ChunkIds::plain()).expect("seal");
        for r in &mut refs {
            r.pack = sealed.id;
        }
        let old = sealed.id;
        storage
            .put_bytes(
                &layout::pack_key(&old),
                sealed.bytes,
                PutMode::Create,
                Durability::Immediate,
            )
            .await
            .expect("put");
        // Only chunks 1 and 3 are still named.
        let live = live_chunks([&refs[1], &refs[3]]);
        let moved = repack(&storage, std::slice::from_ref(&old), &live)
            .await
            .expect("repack");
        assert_eq!(moved.len(), 2);
        let new = &moved[&(old, refs[1].offset)];
        assert_ne!(new.pack, old);
        let bytes = storage
            .get_bytes(&layout::pack_key(&new.pack))
            .await
            .expect("new pack");
        let framed = slice("new", &bytes, new).expect("in range");
        assert_eq!(
            object::decode("new", framed).expect("decodes"),
            vec![1u8; 5000]
        );

        let mut manifest = StreamManifest {
            format: crate::manifest::MANIFEST_FORMAT,
            backup_id: "b".into(),
            service: crate::Service::Redis,
            kind: crate::BackupKind::Rdb,
            server_version: String::new(),
            source: String::new(),
            started_at: jiff::Timestamp::UNIX_EPOCH,
            finished_at: jiff::Timestamp::UNIX_EPOCH,
            files: vec![crate::manifest::StreamFile {
                name: "dump.rdb".into(),
                size: 10_000,
                chunks: vec![refs[1], refs[3]],
            }],
            counts: BTreeMap::new(),
            size_bytes: 10_000,
            new_bytes: 0,
        };
        assert!(manifest.relocate(&moved));
        assert!(manifest.chunks().all(|c| c.pack == new.pack));
        assert!(
            !manifest.relocate(&moved),
            "relocating twice changes nothing"
        );
    }

    /// A manifest that names one chunk at two places (lifeline never writes one, but a
    /// repacked or hand-made one could) keeps both packs; a pack nothing names goes.
    #[tokio::test]
    async fn every_place_a_manifest_names_stays_live() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = LocalStorage::open(dir.path()).expect("open");
        let plain = vec![5u8; 3000];
        let (_, framed) = object::encode(&plain, Compression::default()).expect("encode");
        let hash = object::checksum(&plain).into();
        let mut places = Vec::new();
        for salt in 0..3u8 {
            let mut builder = PackBuilder::new();
            // Packs of different bytes, so of different ids.
            builder.add(crate::ChunkHash::from_bytes([salt; 32]), &[salt; 10]);
            let offset = builder.add(hash, &framed);
            let sealed = builder.seal(&crate::ChunkIds::plain()).expect("seal");
            let key = layout::pack_key(&sealed.id);
            storage
                .put_bytes(&key, sealed.bytes, PutMode::Create, Durability::Immediate)
                .await
                .expect("put");
            let place = ChunkRef {
                hash,
                len: 3000,
                pack: sealed.id,
                offset,
                stored: framed.len() as u64,
            };
            places.push((key, place));
        }
        let manifest = StreamManifest {
            format: crate::manifest::MANIFEST_FORMAT,
            backup_id: "b".into(),
            service: crate::Service::Redis,
            kind: crate::BackupKind::Aof,
            server_version: String::new(),
            source: String::new(),
            started_at: jiff::Timestamp::UNIX_EPOCH,
            finished_at: jiff::Timestamp::UNIX_EPOCH,
            files: ["a.aof", "b.aof"]
                .iter()
                .zip(&places)
                .map(|(name, (_, place))| crate::manifest::StreamFile {
                    name: name.to_string(),
                    size: 3000,
                    chunks: vec![*place],
                })
                .collect(),
            counts: BTreeMap::new(),
            size_bytes: 6000,
            new_bytes: 0,
        };
        let key = layout::stream_manifest_key("b");
        crate::manifest::put_manifest(&storage, &key, &manifest, PutMode::Create)
            .await
            .expect("manifest");
        for _ in 0..2 {
            sweep_packs(&storage, Duration::ZERO, 101)
                .await
                .expect("sweep");
        }
        let kept: Vec<bool> = places
            .iter()
            .map(|(key, _)| dir.path().join(key).exists())
            .collect();
        assert_eq!(kept, [true, true, false]);
    }

    #[tokio::test]
    async fn a_mark_on_something_that_is_not_a_pack_costs_only_that_mark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = LocalStorage::open(dir.path()).expect("open");
        let marks = format!(r#"{{"{}": 5, "not-a-pack": 7}}"#, id(1).to_hex());
        storage
            .put_bytes(
                layout::PRUNE_PENDING_KEY,
                marks.into_bytes(),
                PutMode::Create,
                Durability::Immediate,
            )
            .await
            .expect("put");
        assert_eq!(
            load_pending(&storage).await,
            PendingPacks::from([(id(1), 5)])
        );
    }

    #[tokio::test]
    async fn a_corrupt_chunk_is_not_copied() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = LocalStorage::open(dir.path()).expect("open");
        let plain = vec![7u8; 4000];
        let (_, framed) = object::encode(&plain, Compression::default()).expect("encode");
        let mut builder = PackBuilder::new();
        let hash = object::checksum(&plain).into();
        let offset = builder.add(hash, &framed);
        let sealed = builder.seal(&crate::ChunkIds::plain()).expect("seal");
        let mut bytes = sealed.bytes;
        let last = framed.len() - 1;
        bytes[last] ^= 0xff;
        storage
            .put_bytes(
                &layout::pack_key(&sealed.id),
                bytes,
                PutMode::Create,
                Durability::Immediate,
            )
            .await
            .expect("put");
        let c = ChunkRef {
            hash,
            len: 4000,
            pack: sealed.id,
            offset,
            stored: framed.len() as u64,
        };
        let live = live_chunks([&c]);
        let err = repack(&storage, &[sealed.id], &live)
            .await
            .expect_err("corrupt");
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
    }
}
