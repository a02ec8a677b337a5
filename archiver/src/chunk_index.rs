//! Where each chunk a backup may reference lies, in 48 bytes a chunk: the metadata of a large
//! cluster is most of what a backup keeps in memory (a 1 TiB cluster has four million 256 KiB
//! blocks), so each pack is named once and its chunks carry its number.

use std::collections::HashMap;

use storage::manifest::ChunkRef;
use storage::{ChunkHash, PackId};

/// A chunk's place: which pack (a number into `ChunkIndex::packs`, or [`PENDING`]), where, how
/// many bytes.
#[derive(Debug, Clone, Copy)]
struct Location {
    offset: u64,
    stored: u32,
    pack: u32,
}

/// The pack number of a chunk claimed by the backup being taken, whose pack is not sealed yet.
const PENDING: u32 = u32::MAX;

/// Chunk hash -> where that chunk is stored.
#[derive(Debug, Clone, Default)]
pub(crate) struct ChunkIndex {
    packs: Vec<PackId>,
    numbers: HashMap<PackId, u32>,
    chunks: HashMap<ChunkHash, Location>,
}

impl ChunkIndex {
    pub(crate) fn with_capacity(chunks: usize) -> ChunkIndex {
        ChunkIndex {
            chunks: HashMap::with_capacity(chunks),
            ..ChunkIndex::default()
        }
    }

    /// Record where `hash` lies; false (nothing recorded) when the place cannot be held, which
    /// only a forged manifest would claim: the chunk is then stored again.
    pub(crate) fn insert(
        &mut self,
        hash: ChunkHash,
        pack: PackId,
        offset: u64,
        stored: u64,
    ) -> bool {
        let Ok(stored) = u32::try_from(stored) else {
            return false;
        };
        let number = match self.numbers.get(&pack) {
            Some(&n) => n,
            None => {
                let Some(n) = u32::try_from(self.packs.len())
                    .ok()
                    .filter(|&n| n < PENDING)
                else {
                    return false;
                };
                self.packs.push(pack);
                self.numbers.insert(pack, n);
                n
            }
        };
        let location = Location {
            offset,
            stored,
            pack: number,
        };
        self.chunks.insert(hash, location);
        true
    }

    pub(crate) fn insert_ref(&mut self, c: &ChunkRef) -> bool {
        self.insert(c.hash, c.pack, c.offset, c.stored)
    }

    /// Whether `hash` is here, placed or claimed.
    pub(crate) fn contains(&self, hash: &ChunkHash) -> bool {
        self.chunks.contains_key(hash)
    }

    /// Claim `hash` for the backup being taken, its place to follow ([`ChunkIndex::insert`]):
    /// true when it was neither placed nor claimed before, and is the one copy to store. One
    /// index serves both, rather than a set of new chunks beside it: 32 bytes and more a chunk.
    pub(crate) fn claim(&mut self, hash: ChunkHash) -> bool {
        let mut claimed = false;
        self.chunks.entry(hash).or_insert_with(|| {
            claimed = true;
            Location {
                offset: 0,
                stored: 0,
                pack: PENDING,
            }
        });
        claimed
    }

    /// The manifest's reference to `hash`, a chunk of `len` bytes, when it is placed here.
    pub(crate) fn chunk_ref(&self, hash: ChunkHash, len: u64) -> Option<ChunkRef> {
        let at = self.chunks.get(&hash).filter(|at| at.pack != PENDING)?;
        Some(ChunkRef {
            hash,
            len,
            pack: *self.packs.get(at.pack as usize)?,
            offset: at.offset,
            stored: u64::from(at.stored),
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.chunks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_read_back_as_recorded_with_each_pack_named_once() {
        let mut index = ChunkIndex::default();
        let (a, b) = (PackId::from_bytes([1; 32]), PackId::from_bytes([2; 32]));
        for i in 0..100u8 {
            let pack = if i % 3 == 0 { a } else { b };
            assert!(index.insert(
                ChunkHash::from_bytes([i; 32]),
                pack,
                u64::from(i) << 40,
                7 + u64::from(i)
            ));
        }
        assert_eq!(index.len(), 100);
        assert_eq!(index.packs, [a, b]);
        let c = index
            .chunk_ref(ChunkHash::from_bytes([42; 32]), 262144)
            .expect("recorded");
        assert_eq!(
            (c.pack, c.offset, c.stored, c.len),
            (a, 42 << 40, 49, 262144)
        );
        assert!(
            index
                .chunk_ref(ChunkHash::from_bytes([200; 32]), 1)
                .is_none()
        );
    }

    #[test]
    fn a_place_too_large_to_hold_is_not_recorded() {
        let mut index = ChunkIndex::default();
        let hash = ChunkHash::from_bytes([9; 32]);
        assert!(!index.insert(
            hash,
            PackId::from_bytes([1; 32]),
            0,
            u64::from(u32::MAX) + 1
        ));
        assert!(!index.contains(&hash));
    }

    #[test]
    fn a_claimed_chunk_is_claimed_once_and_has_no_place_until_it_is_packed() {
        let mut index = ChunkIndex::default();
        let hash = ChunkHash::from_bytes([7; 32]);
        assert!(index.claim(hash));
        assert!(!index.claim(hash), "a second copy is not stored");
        assert!(index.contains(&hash));
        assert!(index.chunk_ref(hash, 10).is_none(), "no place yet");
        assert!(index.insert(hash, PackId::from_bytes([3; 32]), 40, 5));
        let c = index.chunk_ref(hash, 10).expect("placed");
        assert_eq!((c.offset, c.stored), (40, 5));
        assert!(!index.claim(hash), "a packed chunk is not stored again");
    }

    #[test]
    fn an_entry_takes_48_bytes() {
        assert_eq!(std::mem::size_of::<(ChunkHash, Location)>(), 48);
    }
}
