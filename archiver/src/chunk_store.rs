//! Where chunks go: hashed and, when new, compressed on threads of their own, then gathered into
//! packs written in the background. A chunk the repository already holds (by the blake3 of its
//! plaintext) is referenced, not stored again. Shared by base backups and stream backups.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures::{StreamExt, TryStreamExt};
use storage::chunking::content_defined_chunks;
use storage::manifest::{BackupManifest, ChunkRef, StreamManifest};
use storage::pack::{DEFAULT_PACK_TARGET, PackBuilder};
use storage::progress::Progress;
use storage::stages::Stages;
use storage::tuning::{ChunkTuning, Tuner};
use storage::{BackupKind, ChunkIds, Compression, Durability, PutMode, Storage, layout, object};
use storage::{ChunkHash, PackId};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::ArchiveError;
use crate::chunk_index::ChunkIndex;

/// Which earlier backup a new one may build on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lineage {
    /// Base backups of one PostgreSQL cluster.
    Base { system_identifier: u64 },
    /// Stream backups (dumps, RDB, AOF) of one kind.
    Stream { kind: BackupKind },
}

impl Lineage {
    fn kind(self) -> BackupKind {
        match self {
            Lineage::Base { .. } => BackupKind::Base,
            Lineage::Stream { kind } => kind,
        }
    }

    fn system_identifier(self) -> Option<u64> {
        match self {
            Lineage::Base { system_identifier } => Some(system_identifier),
            Lineage::Stream { .. } => None,
        }
    }
}

/// The directory of the catalog at `catalog_path`, where a backup keeps what is its own until it
/// ends (its unnamed chunk index and block lists, a standby's configuration files): this
/// machine's, private (BACKUP_DIR), never a shared temporary directory.
pub(crate) fn scratch_dir(catalog_path: &Path) -> &Path {
    match catalog_path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// Chunks the newest complete backup of `lineage` stored, with where they are: those need not be
/// written again. Only chunks whose pack is still in the repository and long enough to hold them
/// are offered (one listing of the packs per backup): a chunk in a lost pack is stored again, so
/// one lost pack damages the backups that used it, never the ones taken after. The index is
/// kept in the catalog's directory; the previous manifest's block lists are read file by file,
/// never held.
pub(crate) async fn previous_chunks(
    storage: &dyn Storage,
    catalog_path: &Path,
    lineage: Lineage,
    chunk_bytes: u64,
) -> Result<ChunkIndex, ArchiveError> {
    let dir = scratch_dir(catalog_path);
    let latest = match newest_backup(catalog_path, lineage, |p| catalog::Catalog::open(p)).await {
        Ok(Some(latest)) => latest,
        Ok(None) => return Ok(ChunkIndex::new(dir)),
        Err(why) => {
            warn!("{why}, storing every chunk again");
            return Ok(ChunkIndex::new(dir));
        }
    };
    let id = latest.backup_id;
    let packs: HashMap<PackId, u64> = match storage.list(layout::PACKS_PREFIX).await {
        Ok(list) => list
            .into_iter()
            .filter_map(|m| Some((layout::parse_pack_key(&m.key)?, m.size)))
            .collect(),
        Err(e) => {
            warn!("cannot list the packs ({e}), storing every chunk again");
            return Ok(ChunkIndex::new(dir));
        }
    };
    // Room for the previous backup's chunks (from its size, in chunks of `chunk_bytes`), made
    // once rather than grown as they come. A failure here is this machine's disk: the backup
    // would fail on it anyway.
    let mut index = ChunkIndex::new(dir);
    let expected = (latest.size_bytes / chunk_bytes.max(1)).saturating_add(latest.file_count);
    index.reserve(expected)?;
    let mut reusable = Reusable::new(index, packs);
    let failed = reusable.failed.clone();
    let read = match lineage {
        Lineage::Base { .. } => match BackupManifest::load_outline(storage, &id, reusable).await {
            Ok((outline, read)) => {
                reusable = read;
                let mut bundle = outline.manifest.bundle.iter();
                bundle
                    .try_for_each(|c| reusable.offer(c))
                    .map(|()| reusable)
            }
            Err(e) => Err(e.to_string()),
        },
        Lineage::Stream { .. } => match StreamManifest::load(storage, &id).await {
            Ok(manifest) => {
                let offered = manifest.references().try_for_each(|c| reusable.offer(c));
                offered.map(|()| reusable)
            }
            Err(e) => Err(e.to_string()),
        },
    };
    if let Some(e) = failed.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(e);
    }
    let (usable, lost) = match read {
        Ok(reusable) => reusable.finish()?,
        Err(why) => {
            warn!("cannot build on backup {id}, storing every chunk again: {why}");
            return Ok(ChunkIndex::new(dir));
        }
    };
    if lost > 0 {
        warn!(
            "{lost} chunk(s) of backup {id} are in packs that are missing or truncated: storing \
             them again (run `lifeline verify` to see which backups are damaged)"
        );
    } else {
        info!(previous = %id, chunks = usable.len(), "building on the previous backup");
    }
    Ok(usable)
}

/// [`previous_chunks`] for a stream backup of `kind` (content-defined chunks), shared by the
/// streams it stores: each adds the chunks it stores, which later ones may share.
pub(crate) async fn previous_stream_chunks(
    storage: &dyn Storage,
    catalog_path: &Path,
    kind: BackupKind,
) -> Result<Arc<Mutex<ChunkIndex>>, ArchiveError> {
    let lineage = Lineage::Stream { kind };
    let chunk_bytes = u64::from(storage::chunking::CDC_AVG);
    let index = previous_chunks(storage, catalog_path, lineage, chunk_bytes).await?;
    Ok(Arc::new(Mutex::new(index)))
}

/// The newest complete backup of `lineage` in the catalog at `catalog_path`, which `open`
/// opens, read off the async threads; the error says why it could not be read.
pub(crate) async fn newest_backup(
    catalog_path: &Path,
    lineage: Lineage,
    open: fn(&Path) -> Result<catalog::Catalog, catalog::CatalogError>,
) -> Result<Option<catalog::BackupRecord>, String> {
    let path = catalog_path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        open(&path)?.newest_backup(lineage.kind(), lineage.system_identifier())
    })
    .await
    .map_err(|e| format!("the catalog reader stopped ({e})"))?
    .map_err(|e| format!("the catalog cannot be read ({e})"))
}

/// Chunks without a usable place that are told apart (and counted once); past it, references
/// are counted. A sound repository has none; a forged manifest could name millions.
const LOST_KEPT: usize = 1 << 16;

/// The chunks of the backup a new one builds on, offered one reference at a time (a chunk used
/// twice is named twice), kept at the first place named whose pack (by id, with its size) holds
/// it whole. As the manifest's sink, it is given each file's blocks as they are parsed.
struct Reusable {
    index: ChunkIndex,
    packs: HashMap<PackId, u64>,
    /// Only the chunks of lost packs: none in a sound repository.
    lost: HashSet<ChunkHash>,
    /// References without a usable place beyond those in `lost`.
    more_lost: usize,
    /// Why the index could not be written (this machine's disk, not the manifest): the backup
    /// stops rather than storing every chunk again onto the same full disk. Shared: a sink
    /// that refuses is dropped with the manifest's read.
    failed: Arc<Mutex<Option<ArchiveError>>>,
}

impl Reusable {
    fn new(index: ChunkIndex, packs: HashMap<PackId, u64>) -> Reusable {
        Reusable {
            index,
            packs,
            lost: HashSet::new(),
            more_lost: 0,
            failed: Arc::default(),
        }
    }

    /// An error ends the reading of the manifest; it is kept in `failed`.
    fn offer(&mut self, c: &ChunkRef) -> Result<(), String> {
        let whole = self.packs.get(&c.pack).is_some_and(|&size| {
            c.offset
                .checked_add(c.stored)
                .is_some_and(|end| end <= size)
        });
        // A place found earlier is kept; a chunk lost here may have one (`finish`).
        let placed = match whole {
            true => self.index.insert_ref(c).map_err(|e| self.fail(e))?,
            false => false,
        };
        if placed || self.lost.contains(&c.hash) {
            return Ok(());
        }
        if self.lost.len() < LOST_KEPT {
            self.lost.insert(c.hash);
        } else {
            self.more_lost += 1;
        }
        Ok(())
    }

    fn fail(&mut self, e: ArchiveError) -> String {
        let why = e.to_string();
        let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed.get_or_insert(e);
        why
    }

    /// The index, and how many chunks (at least) have no usable place.
    fn finish(mut self) -> Result<(ChunkIndex, usize), ArchiveError> {
        let mut lost = self.more_lost;
        for hash in std::mem::take(&mut self.lost) {
            if !self.index.contains(&hash)? {
                lost += 1;
            }
        }
        Ok((self.index, lost))
    }
}

impl storage::manifest::BlockSink for Reusable {
    fn file(&mut self, _: usize, entry: &mut storage::manifest::FileEntry) -> Result<(), String> {
        entry.blocks.iter().try_for_each(|c| self.offer(c))
    }
}

/// The stages of the chunk pipeline, as `Stages` names them in the debug log at the end.
pub(crate) const STAGES: &[&str] = &[
    "read",
    "reader blocked on a full queue",
    "hash",
    "compress",
    "pack",
    "pack write",
    "packer waiting for chunks",
    "packer waiting for a pack write",
];
pub(crate) const READ: usize = 0;
pub(crate) const READER_BLOCKED: usize = 1;
const HASH: usize = 2;
const COMPRESS: usize = 3;
const PACK: usize = 4;
const PACK_WRITE: usize = 5;
const PACKER_IDLE: usize = 6;
const PACKER_BLOCKED: usize = 7;

/// One chunk's bytes and where it belongs (`S`: a block of a file, a place in a stream).
pub(crate) struct Job<S> {
    pub(crate) slot: S,
    pub(crate) data: Vec<u8>,
    /// Which zstd setting compresses it, should it be new.
    pub(crate) tuning: ChunkTuning,
}

/// A chunk hashed (and, when new, compressed) and ready to be packed.
pub(crate) struct Prepared<S> {
    pub(crate) slot: S,
    pub(crate) hash: ChunkHash,
    pub(crate) len: u64,
    pub(crate) framed: Option<Vec<u8>>,
}

/// A pack's buffer. It must hold a pack filled to its target, one more chunk (a
/// content-defined chunk is at most 1 MiB, framed a little more) and the index, so that a pack
/// never outgrows its first buffer. It is asked for as 40 MiB, above the largest request glibc's
/// malloc ever serves from its heaps (its dynamic mmap threshold stops at 32 MiB on 64-bit,
/// `mallopt(3)`): each pack buffer is then a mapping of its own, of which only the pages written
/// are resident, all given back when the pack is stored. At 18 MiB, once the first pack buffer
/// had been freed the threshold rose above it, and later ones came from the heaps, whose freed
/// pages stay resident: peak RSS of a scale 200 backup 83-86 MiB against 55-60 MiB.
const PACK_CAPACITY: usize = 40 << 20;
const _: () = assert!(PACK_CAPACITY >= DEFAULT_PACK_TARGET + (2 << 20));

/// Gathers new chunks into packs and writes each pack when it is full, in the background
/// (at most `transfers` at a time) so that compression never waits for the disk. Each pack
/// is durable (fsynced) when its write ends, while the next ones are being compressed: the
/// backup needs no flush of the whole filesystem at the end, whose time would depend on
/// what every other process on it has written.
pub(crate) struct Packer {
    storage: Arc<dyn Storage>,
    current: PackBuilder,
    /// Where the chunks of the backup this one builds on are, and those this backup stores:
    /// claimed by the compression threads as they find a new one (a second copy is referenced,
    /// not stored), placed once their pack is sealed.
    index: Arc<Mutex<ChunkIndex>>,
    pending: Vec<(ChunkHash, u64, u64)>,
    writes: tokio::task::JoinSet<Result<(), ArchiveError>>,
    transfers: usize,
    pub(crate) written: u64,
    stages: Arc<Stages>,
}

impl Packer {
    /// A packer that places new chunks in `index`, which knows where earlier ones are (they
    /// are not stored again).
    pub(crate) fn new(
        storage: Arc<dyn Storage>,
        index: Arc<Mutex<ChunkIndex>>,
        transfers: usize,
        stages: Arc<Stages>,
    ) -> Packer {
        Packer {
            storage,
            current: PackBuilder::with_capacity(PACK_CAPACITY),
            index,
            pending: Vec::new(),
            writes: tokio::task::JoinSet::new(),
            transfers: transfers.max(1),
            written: 0,
            stages,
        }
    }

    /// Where every chunk is, once the last pack is sealed ([`Packer::finish`]).
    pub(crate) fn into_locations(self) -> Locations {
        Locations { index: self.index }
    }

    pub(crate) async fn add(&mut self, hash: ChunkHash, framed: &[u8]) -> Result<(), ArchiveError> {
        let offset = self.current.add(hash, framed);
        self.pending.push((hash, offset, framed.len() as u64));
        if self.current.len() >= DEFAULT_PACK_TARGET {
            self.seal().await?;
        }
        Ok(())
    }

    async fn seal(&mut self) -> Result<(), ArchiveError> {
        if self.current.is_empty() {
            return Ok(());
        }
        let builder =
            std::mem::replace(&mut self.current, PackBuilder::with_capacity(PACK_CAPACITY));
        let ids = self.storage.chunk_ids();
        let stages = self.stages.clone();
        let index = self.index.clone();
        let pending = std::mem::take(&mut self.pending);
        let sealed = tokio::task::spawn_blocking(move || -> Result<_, ArchiveError> {
            let sealed = stages.time(PACK, || builder.seal(&ids))?;
            for (hash, offset, stored) in pending {
                // One record at a time: the compression threads claim chunks in between, rather
                // than waiting for a whole pack's places (thousands of small writes).
                if !lock(&index).insert(hash, sealed.id, offset, stored)? {
                    return Err(ArchiveError::Internal(format!(
                        "chunk {hash} takes {stored} bytes in its pack"
                    )));
                }
            }
            Ok(sealed)
        })
        .await
        .map_err(ArchiveError::task("pack task"))??;
        self.written += sealed.bytes.len() as u64;
        let waiting = std::time::Instant::now();
        while self.writes.len() >= self.transfers {
            join_write(self.writes.join_next().await)?;
        }
        self.stages.add(PACKER_BLOCKED, waiting.elapsed());
        let storage = self.storage.clone();
        let stages = self.stages.clone();
        self.writes.spawn(async move {
            let started = std::time::Instant::now();
            storage
                .put_bytes(
                    &layout::pack_key(&sealed.id),
                    sealed.bytes,
                    PutMode::Overwrite,
                    Durability::Immediate,
                )
                .await?;
            stages.add(PACK_WRITE, started.elapsed());
            Ok(())
        });
        Ok(())
    }

    /// Seal the last pack and wait for every write.
    pub(crate) async fn finish(&mut self) -> Result<(), ArchiveError> {
        self.seal().await?;
        while let Some(result) = self.writes.join_next().await {
            join_write(Some(result))?;
        }
        Ok(())
    }
}

/// The index, even if a thread panicked holding it: each of its changes is one write of a
/// record, or a grown table swapped in whole.
fn lock(index: &Mutex<ChunkIndex>) -> std::sync::MutexGuard<'_, ChunkIndex> {
    index.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where each chunk of a backup lies: those it stored and those of the backup it builds on.
pub(crate) struct Locations {
    index: Arc<Mutex<ChunkIndex>>,
}

impl Locations {
    #[cfg(test)]
    pub(crate) fn new(index: ChunkIndex) -> Locations {
        Locations {
            index: Arc::new(Mutex::new(index)),
        }
    }

    /// Where a chunk is, as a manifest names it.
    pub(crate) fn chunk_ref(&self, hash: ChunkHash, len: u64) -> Result<ChunkRef, ArchiveError> {
        lock(&self.index)
            .chunk_ref(hash, len)?
            .ok_or_else(|| ArchiveError::Internal(format!("chunk {hash} was never packed")))
    }
}

fn join_write(
    result: Option<Result<Result<(), ArchiveError>, tokio::task::JoinError>>,
) -> Result<(), ArchiveError> {
    match result {
        Some(Ok(outcome)) => outcome,
        Some(Err(source)) => Err(ArchiveError::TaskFailed {
            what: "pack writer",
            source,
        }),
        None => Ok(()),
    }
}

type Task = Box<dyn FnOnce() + Send>;

/// The threads that hash and compress a backup's chunks, one per chunk in flight, for as long
/// as it packs: each keeps its zstd context warm. Tokio's blocking pool handed each chunk to
/// whichever of its (a dozen and more) idle threads came first, each building a context of its
/// own and finding it cold: measured at scale 200, 12 % slower and 11 MiB more.
pub(crate) struct Compressors {
    tasks: std::sync::mpsc::Sender<Task>,
}

impl Compressors {
    pub(crate) fn start(threads: usize) -> Result<Compressors, ArchiveError> {
        let (tasks, queue) = std::sync::mpsc::channel::<Task>();
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("lifeline-compress".into())
                .spawn(move || {
                    // Ends once every sender is gone and the queue is drained.
                    while let Some(task) = queue.lock().ok().and_then(|q| q.recv().ok()) {
                        task();
                    }
                })
                .map_err(|e| {
                    ArchiveError::Internal(format!("cannot start a compression thread: {e}"))
                })?;
        }
        Ok(Compressors { tasks })
    }

    /// Run `work` on one of the threads and wait for its result.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ArchiveError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let task: Task = Box::new(move || {
            let _ = done.send(work());
        });
        let lost = || ArchiveError::Internal("a compression thread stopped mid-chunk".into());
        self.tasks.send(task).map_err(|_| lost())?;
        result.await.map_err(|_| lost())
    }
}

/// Hash a chunk, and compress it unless the repository (or this backup) already has it.
pub(crate) async fn prepare_chunk<S: Send + 'static>(
    compressors: &Compressors,
    index: Arc<Mutex<ChunkIndex>>,
    ids: ChunkIds,
    compression: Compression,
    job: Job<S>,
    stages: Arc<Stages>,
) -> Result<Prepared<S>, ArchiveError> {
    compressors
        .run(move || -> Result<Prepared<S>, ArchiveError> {
            let hash = stages.time(HASH, || object::checksum(&job.data));
            let id = ChunkHash::from(ids.of_checksum(hash));
            let is_new = lock(&index).claim(id)?;
            let framed = if is_new {
                let encoded = stages.time(COMPRESS, || {
                    object::encode_tuned(&job.data, hash, compression, &job.tuning)
                });
                Some(encoded?.1)
            } else {
                None
            };
            Ok(Prepared {
                slot: job.slot,
                hash: id,
                len: job.data.len() as u64,
                framed,
            })
        })
        .await?
}

/// Hash, compress and pack every job `rx` delivers, `parallelism * 2` at a time (twice the cores:
/// chunks keep compressing while a full pack is being written), and hand each job's slot, hash
/// and length to `chunk_done` in the order `rx` delivered them. Returns the packer, which knows
/// where every chunk is. Each chunk counts as progress once it is hashed and, when new,
/// compressed.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn pack_jobs<S: Send + 'static>(
    rx: mpsc::Receiver<Job<S>>,
    storage: Arc<dyn Storage>,
    index: Arc<Mutex<ChunkIndex>>,
    compression: Compression,
    parallelism: usize,
    transfers: usize,
    progress: &dyn Progress,
    stages: &Arc<Stages>,
    mut chunk_done: impl FnMut(S, ChunkHash, u64) -> Result<(), ArchiveError>,
) -> Result<Packer, ArchiveError> {
    let ids = storage.chunk_ids();
    let mut packer = Packer::new(storage, index.clone(), transfers, stages.clone());
    let in_flight = parallelism.max(1) * 2;
    let compressors = Compressors::start(in_flight)?;
    let mut rx = rx;
    let jobs = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut prepared = jobs
        .enumerate()
        .map(|(sequence, job)| {
            let job = Job {
                slot: (sequence, job.slot),
                data: job.data,
                tuning: job.tuning,
            };
            prepare_chunk(
                &compressors,
                index.clone(),
                ids.clone(),
                compression,
                job,
                stages.clone(),
            )
        })
        .buffer_unordered(in_flight);
    // Chunks packed as soon as they are ready, handed on in order: those that overtook a slower
    // one wait here, as many as finish while it is compressed (about 70 bytes each; not their
    // data, which is packed already).
    let mut overtaking = std::collections::BTreeMap::new();
    let mut next = 0;
    let mut idle_since = std::time::Instant::now();
    while let Some(chunk) = prepared.try_next().await? {
        packer.stages.add(PACKER_IDLE, idle_since.elapsed());
        progress.advance(chunk.len);
        if let Some(framed) = &chunk.framed {
            packer.add(chunk.hash, framed).await?;
        }
        let (sequence, slot) = chunk.slot;
        overtaking.insert(sequence, (slot, chunk.hash, chunk.len));
        while let Some(entry) = overtaking.first_entry().filter(|e| *e.key() == next) {
            let (slot, hash, len) = entry.remove();
            chunk_done(slot, hash, len)?;
            next += 1;
        }
        idle_since = std::time::Instant::now();
    }
    if !overtaking.is_empty() {
        return Err(ArchiveError::Internal(
            "a chunk went missing in the copy pipeline".into(),
        ));
    }
    packer.finish().await?;
    Ok(packer)
}

/// A stream stored as content-defined chunks.
#[derive(Debug)]
pub(crate) struct StoredStream {
    pub(crate) chunks: Vec<ChunkRef>,
    pub(crate) size: u64,
    pub(crate) new_bytes: u64,
}

/// Cut `reader` by content on a blocking thread and store its chunks; those `index` holds are
/// referenced rather than stored again, and those stored are added to it. Memory stays bounded
/// by the chunks and packs in flight.
pub(crate) async fn store_stream<R: Read + Send + 'static>(
    storage: Arc<dyn Storage>,
    reader: R,
    index: Arc<Mutex<ChunkIndex>>,
    compression: Compression,
    parallelism: usize,
    transfers: usize,
    progress: &dyn Progress,
) -> Result<StoredStream, ArchiveError> {
    let parallelism = parallelism.max(1);
    let (tx, rx) = mpsc::channel::<Job<usize>>(parallelism * 2);
    let stages = Arc::new(Stages::new(STAGES));
    let reader_stages = stages.clone();
    let cutter = tokio::task::spawn_blocking(move || -> Result<(), std::io::Error> {
        let mut chunks = content_defined_chunks(reader).enumerate();
        let mut tuner = Tuner::default();
        while let Some((index, chunk)) = reader_stages.time(READ, || chunks.next()) {
            let job = Job {
                slot: index,
                data: chunk?,
                tuning: tuner.next_chunk(),
            };
            if reader_stages
                .time(READER_BLOCKED, || tx.blocking_send(job))
                .is_err()
            {
                break;
            }
        }
        Ok(())
    });
    let mut chunks = Vec::new();
    let packer = pack_jobs(
        rx,
        storage,
        index,
        compression,
        parallelism,
        transfers,
        progress,
        &stages,
        |_, hash, len| {
            chunks.push((hash, len));
            Ok(())
        },
    )
    .await?;
    debug!(stages = %stages.summary(), "stream stored");
    cutter
        .await
        .map_err(ArchiveError::task("stream reader"))?
        .map_err(|source| ArchiveError::Io {
            path: "(stream)".into(),
            source,
        })?;
    let size = chunks.iter().map(|c| c.1).sum();
    let new_bytes = packer.written;
    let locations = packer.into_locations();
    let chunks = chunks
        .into_iter()
        .map(|(hash, len)| locations.chunk_ref(hash, len))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StoredStream {
        chunks,
        size,
        new_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(hash: u8, pack: u8, offset: u64, stored: u64) -> ChunkRef {
        ChunkRef {
            hash: ChunkHash::from_bytes([hash; 32]),
            len: stored,
            pack: PackId::from_bytes([pack; 32]),
            offset,
            stored,
        }
    }

    /// The index's own failure (this machine's disk) is kept apart from the manifest's: the
    /// backup stops on it rather than storing every chunk again onto the same disk.
    #[test]
    fn an_index_that_cannot_be_written_is_kept_as_the_reason() {
        let gone = Path::new("/nonexistent/lifeline");
        let packs = HashMap::from([(PackId::from_bytes([1; 32]), 100)]);
        let mut reusable = Reusable::new(ChunkIndex::new(gone), packs);
        let why = reusable.offer(&chunk(b'a', 1, 0, 10)).expect_err("refused");
        assert!(why.contains("chunk index"), "{why}");
        let failed = reusable.failed.lock().expect("lock").take();
        assert!(
            matches!(failed, Some(ArchiveError::Scratch { .. })),
            "{failed:?}"
        );
    }

    /// Chunks of lost packs are told apart up to a bound, and counted past it.
    #[test]
    fn chunks_of_lost_packs_are_counted_past_the_bound() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut reusable = Reusable::new(ChunkIndex::new(dir.path()), HashMap::new());
        let lost = LOST_KEPT + 10;
        for n in 0..lost {
            let mut c = chunk(0, 9, 0, 1);
            c.hash = ChunkHash::from_bytes(blake3::hash(&n.to_le_bytes()).into());
            reusable.offer(&c).expect("offered");
            reusable.offer(&c).expect("named twice");
        }
        let (_, counted) = reusable.finish().expect("finished");
        assert_eq!(
            counted,
            lost + 10,
            "those past the bound count each reference"
        );
    }

    #[test]
    fn chunks_in_missing_or_short_packs_are_not_reused() {
        let packs = HashMap::from([
            (PackId::from_bytes([1; 32]), 100),
            (PackId::from_bytes([2; 32]), 50),
        ]);
        let gone = 9;
        let chunks = [
            chunk(b'a', 1, 0, 100),
            chunk(b'b', 2, 40, 20),
            chunk(b'c', gone, 0, 10),
            chunk(b'd', 2, u64::MAX, 2),
            chunk(b'e', 2, 0, 50),
            // Named again: the lost chunk counts once; the first whole place is kept, one
            // found after a lost one too.
            chunk(b'c', gone, 0, 10),
            chunk(b'a', 2, 0, 10),
            chunk(b'd', 1, 0, 2),
        ];
        let dir = tempfile::tempdir().expect("temp dir");
        let mut reusable = Reusable::new(ChunkIndex::new(dir.path()), packs);
        for c in &chunks {
            reusable.offer(c).expect("offered");
        }
        let (usable, lost) = reusable.finish().expect("finished");
        let kept: Vec<u8> = chunks[..5]
            .iter()
            .filter(|c| usable.contains(&c.hash).expect("read"))
            .map(|c| c.hash.as_bytes()[0])
            .collect();
        assert_eq!(kept, [b'a', b'd', b'e']);
        assert_eq!(lost, 2, "b and c");
        let a = usable
            .chunk_ref(chunks[0].hash, 100)
            .expect("read")
            .expect("a");
        assert_eq!((a.pack, a.offset), (chunks[0].pack, 0));
        let d = usable
            .chunk_ref(chunks[3].hash, 2)
            .expect("read")
            .expect("d");
        assert_eq!((d.pack, d.offset), (chunks[7].pack, 0));
    }
}
