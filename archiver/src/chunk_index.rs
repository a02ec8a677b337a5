//! Where each chunk a backup may reference lies, kept in an unnamed file rather than memory: a
//! cluster of a TiB has four million 256 KiB blocks, and their index would be most of what the
//! backup holds (48 bytes and more a chunk in a map). The file is an open-addressed table of
//! 48-byte records, read and written in place; the page cache holds what is hot. Each pack is
//! named once, in memory (one entry per pack of tens of MiB), and its chunks carry its number.
//! A `pwrite` of a record costs about 3 us and a probe's `pread` under 1 us: at the default
//! 256 KiB blocks, a few ms per GiB backed up.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::BuildHasher;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use storage::manifest::ChunkRef;
use storage::{ChunkHash, PackId};

use crate::ArchiveError;

/// Bytes of a record: the chunk's hash, its offset in its pack, its stored length, its pack.
const RECORD: usize = 32 + 8 + 4 + 4;
/// Records read at a time while probing: most lookups end within them.
const WINDOW: u64 = 8;
/// The table's first size, in records (192 KiB).
const FIRST_SLOTS: u64 = 4096;
/// The most records a table may have room for (a file of 3 TiB): past it, a count is a bug.
const MAX_SLOTS: u64 = 1 << 36;

/// The pack field of an empty slot.
const EMPTY: u32 = 0;
/// The pack field of pack number `n` is `n + FIRST_PACK`.
const FIRST_PACK: u32 = 1;

/// Chunk hash -> where that chunk is stored.
pub(crate) struct ChunkIndex {
    dir: PathBuf,
    /// Made at the first insertion: an index never written to touches no disk.
    table: Option<Table>,
    /// Chunks claimed by the backup being taken whose pack is not sealed yet: those in flight
    /// and in the pack being filled (at most a pack's worth of chunks). Kept here so that each
    /// new chunk is written to the table once, with its place.
    claimed: HashSet<ChunkHash>,
    packs: Vec<PackId>,
    numbers: HashMap<PackId, u32>,
    /// Spreads the hashes over the slots with a key of this process's: the hashes come from a
    /// manifest, which someone who can write to the bucket could fill with ones that collide.
    spread: std::collections::hash_map::RandomState,
}

/// One record as read from or written to the table.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Record {
    hash: ChunkHash,
    offset: u64,
    stored: u32,
    pack: u32,
}

impl Record {
    fn to_bytes(self) -> [u8; RECORD] {
        let mut bytes = [0u8; RECORD];
        bytes[..32].copy_from_slice(self.hash.as_bytes());
        bytes[32..40].copy_from_slice(&self.offset.to_le_bytes());
        bytes[40..44].copy_from_slice(&self.stored.to_le_bytes());
        bytes[44..].copy_from_slice(&self.pack.to_le_bytes());
        bytes
    }

    fn from_bytes(bytes: &[u8; RECORD]) -> Record {
        let mut hash = [0u8; 32];
        let mut offset = [0u8; 8];
        let (mut stored, mut pack) = ([0u8; 4], [0u8; 4]);
        hash.copy_from_slice(&bytes[..32]);
        offset.copy_from_slice(&bytes[32..40]);
        stored.copy_from_slice(&bytes[40..44]);
        pack.copy_from_slice(&bytes[44..]);
        Record {
            hash: ChunkHash::from_bytes(hash),
            offset: u64::from_le_bytes(offset),
            stored: u32::from_le_bytes(stored),
            pack: u32::from_le_bytes(pack),
        }
    }
}

/// The file: `slots` records (a power of two), `used` of them not empty.
struct Table {
    file: File,
    slots: u64,
    used: u64,
}

/// Where a probe for a hash ended: the slot that holds it, or the empty slot it would take.
enum Probe {
    Found(Record),
    Vacant(u64),
}

impl Table {
    fn create_in(dir: &Path, slots: u64) -> Result<Table, std::io::Error> {
        let file = tempfile::tempfile_in(dir)?;
        file.set_len(slots * RECORD as u64)?;
        Ok(Table {
            file,
            slots,
            used: 0,
        })
    }

    fn probe(&self, hash: &ChunkHash, start: u64) -> Result<Probe, std::io::Error> {
        let mask = self.slots - 1;
        let mut buf = [0u8; RECORD * WINDOW as usize];
        let mut at = start & mask;
        // A table is never full (grown at three quarters), so an empty slot ends every probe.
        for _ in 0..self.slots.div_ceil(WINDOW) + 2 {
            let n = WINDOW.min(self.slots - at);
            let bytes = &mut buf[..n as usize * RECORD];
            self.file.read_exact_at(bytes, at * RECORD as u64)?;
            let (records, _) = bytes.as_chunks::<RECORD>();
            for (i, raw) in records.iter().enumerate() {
                let record = Record::from_bytes(raw);
                let slot = at + i as u64;
                if record.pack == EMPTY {
                    return Ok(Probe::Vacant(slot));
                }
                if record.hash == *hash {
                    return Ok(Probe::Found(record));
                }
            }
            at = (at + n) & mask;
        }
        Err(std::io::Error::other("the chunk index has no empty slot"))
    }

    fn write(&self, slot: u64, record: Record) -> Result<(), std::io::Error> {
        self.file
            .write_all_at(&record.to_bytes(), slot * RECORD as u64)
    }

    /// Every record, in the order of the file.
    fn for_each(
        &self,
        mut each: impl FnMut(Record) -> Result<(), std::io::Error>,
    ) -> Result<(), std::io::Error> {
        const BATCH: u64 = 4096;
        let mut buf = vec![0u8; BATCH as usize * RECORD];
        let mut at = 0;
        while at < self.slots {
            let n = BATCH.min(self.slots - at);
            let bytes = &mut buf[..n as usize * RECORD];
            self.file.read_exact_at(bytes, at * RECORD as u64)?;
            let (records, _) = bytes.as_chunks::<RECORD>();
            for raw in records {
                let record = Record::from_bytes(raw);
                if record.pack != EMPTY {
                    each(record)?;
                }
            }
            at += n;
        }
        Ok(())
    }
}

impl ChunkIndex {
    /// An empty index whose file, once needed, is made in `dir`, unnamed (gone with the process
    /// however it ends).
    pub(crate) fn new(dir: &Path) -> ChunkIndex {
        ChunkIndex {
            dir: dir.to_path_buf(),
            table: None,
            claimed: HashSet::new(),
            packs: Vec::new(),
            numbers: HashMap::new(),
            spread: Default::default(),
        }
    }

    fn io_error(&self, source: std::io::Error) -> ArchiveError {
        ArchiveError::Scratch {
            path: self.dir.join("(the backup's chunk index, unnamed)"),
            source,
        }
    }

    fn start(&self, hash: &ChunkHash) -> u64 {
        self.spread.hash_one(hash.as_bytes())
    }

    fn find(&self, hash: &ChunkHash) -> Result<Option<Record>, ArchiveError> {
        let Some(table) = &self.table else {
            return Ok(None);
        };
        match table.probe(hash, self.start(hash)) {
            Ok(Probe::Found(record)) => Ok(Some(record)),
            Ok(Probe::Vacant(_)) => Ok(None),
            Err(e) => Err(self.io_error(e)),
        }
    }

    /// Write `record` in the slot of its hash unless that holds a record already (the first
    /// place is kept). The table grows first when a new record would fill more than three
    /// quarters of it.
    fn put(&mut self, record: Record) -> Result<(), ArchiveError> {
        self.reserve(1)?;
        let start = self.start(&record.hash);
        let Some(table) = &mut self.table else {
            return Err(ArchiveError::Internal(
                "the chunk index has no table".into(),
            ));
        };
        let result = match table.probe(&record.hash, start) {
            Ok(Probe::Found(..)) => Ok(()),
            Ok(Probe::Vacant(slot)) => table.write(slot, record).map(|()| table.used += 1),
            Err(e) => Err(e),
        };
        result.map_err(|e| self.io_error(e))
    }

    /// Room for `more` records without growing: the table is made, or grown, once to that size
    /// (each growth reads and writes every record again).
    pub(crate) fn reserve(&mut self, more: u64) -> Result<(), ArchiveError> {
        let used = self.table.as_ref().map_or(0, |t| t.used);
        let wanted = used.saturating_add(more).saturating_mul(4).div_ceil(3);
        let slots = wanted
            .max(FIRST_SLOTS)
            .checked_next_power_of_two()
            .filter(|&slots| slots <= MAX_SLOTS)
            .ok_or_else(|| ArchiveError::Internal(format!("{more} chunks cannot be indexed")))?;
        let made = match &self.table {
            Some(table) if table.slots >= slots => return Ok(()),
            Some(old) => self.grown(old, slots),
            None => Table::create_in(&self.dir, slots),
        };
        // The old table stays in place until the grown one holds all it held.
        self.table = Some(made.map_err(|e| self.io_error(e))?);
        Ok(())
    }

    /// `old`'s records in a table of `slots`.
    fn grown(&self, old: &Table, slots: u64) -> Result<Table, std::io::Error> {
        let mut grown = Table::create_in(&self.dir, slots)?;
        old.for_each(
            |record| match grown.probe(&record.hash, self.start(&record.hash))? {
                Probe::Vacant(slot) => {
                    grown.used += 1;
                    grown.write(slot, record)
                }
                Probe::Found(..) => Err(std::io::Error::other("a chunk is in the index twice")),
            },
        )?;
        Ok(grown)
    }

    /// Record where `hash` lies, unless it has a place already (the first one is kept); false
    /// (nothing recorded) when the place cannot be held, which only a forged manifest would
    /// claim: the chunk is then stored again.
    pub(crate) fn insert(
        &mut self,
        hash: ChunkHash,
        pack: PackId,
        offset: u64,
        stored: u64,
    ) -> Result<bool, ArchiveError> {
        let Ok(stored) = u32::try_from(stored) else {
            return Ok(false);
        };
        let number = match self.numbers.get(&pack) {
            Some(&n) => n,
            None => {
                let Some(n) = u32::try_from(self.packs.len())
                    .ok()
                    .filter(|&n| n < u32::MAX - FIRST_PACK)
                else {
                    return Ok(false);
                };
                self.packs.push(pack);
                self.numbers.insert(pack, n);
                n
            }
        };
        let record = Record {
            hash,
            offset,
            stored,
            pack: number + FIRST_PACK,
        };
        self.put(record)?;
        self.claimed.remove(&hash);
        Ok(true)
    }

    pub(crate) fn insert_ref(&mut self, c: &ChunkRef) -> Result<bool, ArchiveError> {
        self.insert(c.hash, c.pack, c.offset, c.stored)
    }

    /// Whether `hash` is here, placed or claimed.
    pub(crate) fn contains(&self, hash: &ChunkHash) -> Result<bool, ArchiveError> {
        Ok(self.claimed.contains(hash) || self.find(hash)?.is_some())
    }

    /// Claim `hash` for the backup being taken, its place to follow ([`ChunkIndex::insert`]):
    /// true when it was neither placed nor claimed before, and is the one copy to store.
    pub(crate) fn claim(&mut self, hash: ChunkHash) -> Result<bool, ArchiveError> {
        if self.contains(&hash)? {
            return Ok(false);
        }
        Ok(self.claimed.insert(hash))
    }

    /// The manifest's reference to `hash`, a chunk of `len` bytes, when it is placed here.
    pub(crate) fn chunk_ref(
        &self,
        hash: ChunkHash,
        len: u64,
    ) -> Result<Option<ChunkRef>, ArchiveError> {
        let Some(at) = self.find(&hash)? else {
            return Ok(None);
        };
        Ok(self
            .packs
            .get((at.pack - FIRST_PACK) as usize)
            .map(|&pack| ChunkRef {
                hash,
                len,
                pack,
                offset: at.offset,
                stored: u64::from(at.stored),
            }))
    }

    pub(crate) fn len(&self) -> u64 {
        self.table.as_ref().map_or(0, |t| t.used) + self.claimed.len() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u32) -> ChunkHash {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        ChunkHash::from_bytes(bytes)
    }

    #[test]
    fn chunks_read_back_as_recorded_with_each_pack_named_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut index = ChunkIndex::new(dir.path());
        let (a, b) = (PackId::from_bytes([1; 32]), PackId::from_bytes([2; 32]));
        for i in 0..100u8 {
            let pack = if i % 3 == 0 { a } else { b };
            let placed = index
                .insert(
                    ChunkHash::from_bytes([i; 32]),
                    pack,
                    u64::from(i) << 40,
                    7 + u64::from(i),
                )
                .expect("written");
            assert!(placed);
        }
        assert_eq!(index.len(), 100);
        assert_eq!(index.packs, [a, b]);
        let c = index
            .chunk_ref(ChunkHash::from_bytes([42; 32]), 262144)
            .expect("read")
            .expect("recorded");
        assert_eq!(
            (c.pack, c.offset, c.stored, c.len),
            (a, 42 << 40, 49, 262144)
        );
        let absent = index.chunk_ref(ChunkHash::from_bytes([200; 32]), 1);
        assert!(absent.expect("read").is_none());
    }

    /// Past its first size the table grows, several times over, and keeps every record.
    #[test]
    fn every_chunk_is_found_after_the_table_grows() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dir = dir.path().join("it's 100% \\ here");
        std::fs::create_dir(&dir).expect("dir");
        let mut index = ChunkIndex::new(&dir);
        let pack = PackId::from_bytes([5; 32]);
        let n = (FIRST_SLOTS * 5) as u32;
        for i in 0..n {
            match i % 2 {
                0 => assert!(
                    index
                        .insert(hash(i), pack, u64::from(i), 3)
                        .expect("insert")
                ),
                _ => assert!(index.claim(hash(i)).expect("claim")),
            }
        }
        assert_eq!(index.len(), u64::from(n));
        let table = index.table.as_ref().expect("made");
        assert!(table.slots >= FIRST_SLOTS * 4, "{} slots", table.slots);
        for i in 0..n {
            let found = index.chunk_ref(hash(i), 1).expect("read");
            match i % 2 {
                0 => assert_eq!(found.map(|c| c.offset), Some(u64::from(i)), "{i}"),
                _ => {
                    assert!(found.is_none(), "{i}: claimed, not placed");
                    assert!(index.contains(&hash(i)).expect("read"), "{i}");
                }
            }
        }
        assert!(!index.contains(&hash(n)).expect("read"));
        assert_eq!(
            std::fs::read_dir(&dir).expect("list").count(),
            0,
            "the index has no name"
        );
    }

    /// Room made once for what is expected: the table is not grown (read and written again) as
    /// it fills, and keeps what it held when it is.
    #[test]
    fn a_reserved_table_fills_without_growing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut index = ChunkIndex::new(dir.path());
        let pack = PackId::from_bytes([5; 32]);
        assert!(index.insert(hash(0), pack, 7, 3).expect("insert"));
        index.reserve(3 * FIRST_SLOTS).expect("reserved");
        let slots = index.table.as_ref().map(|t| t.slots);
        for i in 1..3 * FIRST_SLOTS as u32 {
            assert!(
                index
                    .insert(hash(i), pack, u64::from(i), 3)
                    .expect("insert")
            );
        }
        assert_eq!(index.table.as_ref().map(|t| t.slots), slots, "grown");
        let first = index.chunk_ref(hash(0), 1).expect("read").expect("kept");
        assert_eq!(first.offset, 7);
        assert!(index.reserve(u64::MAX).is_err(), "more than can be indexed");
    }

    /// Probes that begin at the last slots go on at the first ones.
    #[test]
    fn a_probe_wraps_around_the_end_of_the_table() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut table = Table::create_in(dir.path(), FIRST_SLOTS).expect("table");
        let record = |n: u32| Record {
            hash: hash(n),
            offset: u64::from(n),
            stored: 1,
            pack: FIRST_PACK,
        };
        let start = FIRST_SLOTS - 3;
        for n in 0..20 {
            match table.probe(&hash(n), start).expect("probe") {
                Probe::Vacant(slot) => {
                    assert_eq!(slot, (start + u64::from(n)) % FIRST_SLOTS, "{n}");
                    table.write(slot, record(n)).expect("write");
                    table.used += 1;
                }
                Probe::Found(_) => panic!("{n} found before it was written"),
            }
        }
        for n in 0..20 {
            match table.probe(&hash(n), start).expect("probe") {
                Probe::Found(found) => assert_eq!(found, record(n)),
                Probe::Vacant(slot) => panic!("{n} not found (slot {slot})"),
            }
        }
        // 20 records from three before the end: the next empty slot is the 18th.
        assert!(matches!(
            table.probe(&hash(99), start),
            Ok(Probe::Vacant(17))
        ));
    }

    /// Threads claiming the same chunks: each chunk is claimed by one of them only.
    #[test]
    fn each_chunk_is_claimed_once_among_threads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let index = std::sync::Mutex::new(ChunkIndex::new(dir.path()));
        let claims = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for n in 0..2000 {
                        let mut index = index.lock().expect("lock");
                        if index.claim(hash(n)).expect("claim") {
                            claims.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(claims.into_inner(), 2000);
    }

    #[test]
    fn a_place_too_large_to_hold_is_not_recorded() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut index = ChunkIndex::new(dir.path());
        let placed = index
            .insert(
                hash(9),
                PackId::from_bytes([1; 32]),
                0,
                u64::from(u32::MAX) + 1,
            )
            .expect("nothing written");
        assert!(!placed);
        assert!(!index.contains(&hash(9)).expect("read"));
    }

    #[test]
    fn a_claimed_chunk_is_claimed_once_and_has_no_place_until_it_is_packed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut index = ChunkIndex::new(dir.path());
        let hash = hash(7);
        assert!(index.claim(hash).expect("claim"));
        assert!(
            !index.claim(hash).expect("claim"),
            "a second copy is not stored"
        );
        assert!(index.contains(&hash).expect("read"));
        assert!(
            index.chunk_ref(hash, 10).expect("read").is_none(),
            "no place yet"
        );
        assert!(
            index
                .insert(hash, PackId::from_bytes([3; 32]), 40, 5)
                .expect("insert")
        );
        let c = index.chunk_ref(hash, 10).expect("read").expect("placed");
        assert_eq!((c.offset, c.stored), (40, 5));
        assert!(
            !index.claim(hash).expect("claim"),
            "a packed chunk is not stored again"
        );
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn an_index_never_written_to_makes_no_file() {
        let gone = std::path::Path::new("/nonexistent/lifeline");
        let index = ChunkIndex::new(gone);
        assert!(!index.contains(&hash(1)).expect("nothing to read"));
        let mut index = index;
        assert!(index.claim(hash(1)).expect("a claim is kept in memory"));
        let err = index
            .insert(hash(1), PackId::from_bytes([1; 32]), 0, 1)
            .expect_err("no directory");
        assert!(err.to_string().contains("chunk index"), "{err}");
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let record = Record {
            hash: hash(0xfeed_beef),
            offset: u64::MAX - 1,
            stored: u32::MAX,
            pack: FIRST_PACK + 12,
        };
        assert_eq!(Record::from_bytes(&record.to_bytes()), record);
    }
}
