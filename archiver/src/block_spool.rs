//! A base backup's block lists, kept in an unnamed file rather than in memory until its manifest
//! is written: a cluster of a TiB has four million blocks, and their lists would be most of what
//! the backup holds.
//!
//! As chunks are packed, each one's hash and length is appended in the order it was read
//! ([`BlockSpool`]); once every pack is sealed, the records are read back and written again as
//! the manifest names them, with their pack and place ([`SpooledLists`]), and the chunk index
//! that knew those places is dropped. The manifest is then written one file's list at a time.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use storage::ChunkHash;
use storage::manifest::{BlockSource, ChunkRef};

use crate::ArchiveError;
use crate::chunk_store::Locations;

/// Bytes of a record in the spool: the chunk's hash and length.
const SPOOLED: usize = 32 + 8;
/// Records read at a time: a few hundred KiB.
const BATCH: usize = 4096;

/// One owner's blocks (a file's, or the bundle's): consecutive records.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Run {
    first: u64,
    count: u64,
    /// The plaintext bytes of its blocks.
    pub(crate) bytes: u64,
}

/// The chunks of a backup as they are packed, in the order they were read.
pub(crate) struct BlockSpool {
    out: BufWriter<File>,
    dir: PathBuf,
    records: u64,
    current: Option<(usize, Run)>,
    runs: HashMap<usize, Run>,
}

impl BlockSpool {
    /// A spool in an unnamed file in `dir`, gone with the process however it ends.
    pub(crate) fn create_in(dir: &Path) -> Result<BlockSpool, ArchiveError> {
        let file = tempfile::tempfile_in(dir).map_err(|source| ArchiveError::Scratch {
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(BlockSpool {
            out: BufWriter::with_capacity(64 << 10, file),
            dir: dir.to_path_buf(),
            records: 0,
            current: None,
            runs: HashMap::new(),
        })
    }

    /// Block `index` of `owner`, each owner's blocks given in order and together.
    pub(crate) fn push(
        &mut self,
        owner: usize,
        index: usize,
        hash: ChunkHash,
        len: u64,
    ) -> Result<(), ArchiveError> {
        let run = match &mut self.current {
            Some((o, run)) if *o == owner && run.count == index as u64 => run,
            // A new owner only: one already begun (current or in `runs`) never starts over.
            Some((o, _)) if *o == owner => return Err(out_of_order()),
            _ if index == 0 && !self.runs.contains_key(&owner) => {
                if let Some((o, run)) = self.current.take() {
                    self.runs.insert(o, run);
                }
                let run = Run {
                    first: self.records,
                    ..Run::default()
                };
                &mut self.current.insert((owner, run)).1
            }
            _ => return Err(out_of_order()),
        };
        run.count += 1;
        run.bytes += len;
        let mut record = [0u8; SPOOLED];
        record[..32].copy_from_slice(hash.as_bytes());
        record[32..].copy_from_slice(&len.to_le_bytes());
        self.out
            .write_all(&record)
            .map_err(|source| self.io_error(source))?;
        self.records += 1;
        Ok(())
    }

    /// Every record again as the manifest names it, where `locations` says it lies (blocking
    /// I/O: call off the async threads).
    pub(crate) fn resolve(mut self, locations: &Locations) -> Result<SpooledLists, ArchiveError> {
        if let Some((owner, run)) = self.current.take() {
            self.runs.insert(owner, run);
        }
        let dir = self.dir;
        let spool = self
            .out
            .into_inner()
            .map_err(|e| spool_error(&dir, e.into_error()))?;
        let file = tempfile::tempfile_in(&dir).map_err(|source| ArchiveError::Scratch {
            path: dir.clone(),
            source,
        })?;
        let mut out = BufWriter::with_capacity(64 << 10, file);
        let mut batch = vec![0u8; BATCH * SPOOLED];
        let mut at = 0;
        while at < self.records {
            let n = (self.records - at).min(BATCH as u64) as usize;
            let bytes = &mut batch[..n * SPOOLED];
            spool
                .read_exact_at(bytes, at * SPOOLED as u64)
                .map_err(|source| spool_error(&dir, source))?;
            let (records, _) = bytes.as_chunks::<SPOOLED>();
            for record in records {
                let (hash, len) = record.split_at(32);
                let hash = ChunkHash::from_bytes(hash.try_into().map_err(|_| out_of_order())?);
                let len = u64::from_le_bytes(len.try_into().map_err(|_| out_of_order())?);
                let chunk = locations.chunk_ref(hash, len)?;
                out.write_all(&chunk.to_record())
                    .map_err(|source| spool_error(&dir, source))?;
            }
            at += n as u64;
        }
        let file = out
            .into_inner()
            .map_err(|e| spool_error(&dir, e.into_error()))?;
        Ok(SpooledLists {
            file,
            dir,
            runs: self.runs,
            files: Vec::new(),
            bundle: None,
        })
    }

    fn io_error(&self, source: std::io::Error) -> ArchiveError {
        spool_error(&self.dir, source)
    }
}

fn spool_error(dir: &Path, source: std::io::Error) -> ArchiveError {
    ArchiveError::Scratch {
        path: dir.join("(the backup's block lists, unnamed)"),
        source,
    }
}

fn out_of_order() -> ArchiveError {
    ArchiveError::Internal("a chunk went missing in the copy pipeline".into())
}

/// A backup's block lists as its manifest names them, in an unnamed file, handed to the
/// manifest's writer one file at a time.
pub(crate) struct SpooledLists {
    file: File,
    dir: PathBuf,
    /// Each owner's records, until they are given a place in the manifest.
    runs: HashMap<usize, Run>,
    /// Each of the manifest's files: its records (none for a small file, a directory, a link).
    files: Vec<Run>,
    bundle: Option<Run>,
}

impl SpooledLists {
    /// The manifest's next file is `owner`'s (`None`: it has no blocks of its own); returns its
    /// blocks' bytes.
    pub(crate) fn next_file(&mut self, owner: Option<usize>) -> u64 {
        let run = owner.and_then(|o| self.runs.remove(&o)).unwrap_or_default();
        self.files.push(run);
        run.bytes
    }

    /// The bundle is `owner`'s blocks.
    pub(crate) fn set_bundle(&mut self, owner: usize) {
        self.bundle = self.runs.remove(&owner);
    }

    fn read(&self, run: Run, into: &mut Vec<ChunkRef>) -> Result<(), String> {
        let io = |e: std::io::Error| {
            format!(
                "{}: cannot read the backup's block lists back: {e}",
                self.dir.display()
            )
        };
        into.reserve(usize::try_from(run.count).map_err(|e| e.to_string())?);
        let mut batch = vec![0u8; BATCH.min(run.count as usize) * ChunkRef::RECORD_LEN];
        let mut at = 0;
        while at < run.count {
            let n = (run.count - at).min(BATCH as u64) as usize;
            let bytes = &mut batch[..n * ChunkRef::RECORD_LEN];
            let offset = (run.first + at) * ChunkRef::RECORD_LEN as u64;
            self.file.read_exact_at(bytes, offset).map_err(io)?;
            let (records, _) = bytes.as_chunks::<{ ChunkRef::RECORD_LEN }>();
            into.extend(records.iter().map(ChunkRef::from_record));
            at += n as u64;
        }
        Ok(())
    }
}

impl BlockSource for SpooledLists {
    fn file_blocks(&mut self, index: usize, blocks: &mut Vec<ChunkRef>) -> Result<(), String> {
        let Some(run) = self.files.get(index).copied() else {
            return Err(format!(
                "file {index} of the manifest has no place in the backup's block lists"
            ));
        };
        self.read(run, blocks)
    }

    fn bundle(&mut self, chunks: &mut Vec<ChunkRef>) -> Result<(), String> {
        match self.bundle {
            Some(run) => self.read(run, chunks),
            None => Ok(()),
        }
    }

    fn file_count(&self) -> usize {
        self.files.len()
    }
}

#[cfg(test)]
mod tests {

    use storage::PackId;

    use super::*;
    use crate::chunk_index::ChunkIndex;

    const BUNDLE: usize = usize::MAX;

    fn hash(n: u32) -> ChunkHash {
        let mut bytes = [0u8; 32];
        bytes[..4].copy_from_slice(&n.to_le_bytes());
        ChunkHash::from_bytes(bytes)
    }

    /// Chunks 0..100 stored by this backup in pack 1, 100.. by the one before in pack 2.
    fn locations() -> Locations {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut index = ChunkIndex::new(dir.path());
        for n in 0..200 {
            let pack = PackId::from_bytes([1 + u8::from(n >= 100); 32]);
            let placed = index.insert(hash(n), pack, u64::from(n) << 20, 1000 + u64::from(n));
            assert!(placed.expect("written"));
        }
        Locations::new(index)
    }

    fn read(lists: &mut SpooledLists, file: usize) -> Vec<u32> {
        let mut blocks = Vec::new();
        lists.file_blocks(file, &mut blocks).expect("read back");
        let l = locations();
        for b in &blocks {
            assert_eq!(
                Some(*b),
                l.chunk_ref(b.hash, b.len).ok(),
                "as the index says"
            );
        }
        blocks
            .iter()
            .map(|b| u32::try_from(b.len).expect("small"))
            .collect()
    }

    #[test]
    fn each_file_reads_back_its_own_blocks_in_order_with_their_places() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut spool = BlockSpool::create_in(dir.path()).expect("spool");
        // The bundle first, then files 3 and 7 as the reader sends them; a chunk used twice
        // (150, from the backup before) is listed twice. A block's length stands for its chunk.
        let sent: [(usize, &[u32]); 3] = [
            (BUNDLE, &[5, 6]),
            (3, &[10, 150, 11, 150]),
            (7, &[199, 0, 99]),
        ];
        for (owner, chunks) in sent {
            for (index, &n) in chunks.iter().enumerate() {
                spool
                    .push(owner, index, hash(n), u64::from(n))
                    .expect("in order");
            }
        }
        let mut lists = spool.resolve(&locations()).expect("resolved");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("dir").count(),
            0,
            "the lists leave no name behind"
        );
        // The manifest's files: a directory, file 7, a small file, file 3.
        assert_eq!(lists.next_file(None), 0);
        assert_eq!(lists.next_file(Some(7)), 199 + 99);
        assert_eq!(lists.next_file(None), 0);
        assert_eq!(lists.next_file(Some(3)), 10 + 150 + 11 + 150);
        lists.set_bundle(BUNDLE);
        assert_eq!(read(&mut lists, 0), [0u32; 0]);
        assert_eq!(read(&mut lists, 1), [199, 0, 99]);
        assert_eq!(read(&mut lists, 2), [0u32; 0]);
        assert_eq!(read(&mut lists, 3), [10, 150, 11, 150]);
        // Read twice, as a manifest too large to compress is written twice.
        assert_eq!(read(&mut lists, 1), [199, 0, 99]);
        let mut bundle = Vec::new();
        lists.bundle(&mut bundle).expect("bundle");
        assert_eq!(bundle.iter().map(|c| c.len).collect::<Vec<_>>(), [5, 6]);
        assert!(lists.file_blocks(4, &mut Vec::new()).is_err());
    }

    #[test]
    fn a_block_out_of_its_place_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut spool = BlockSpool::create_in(dir.path()).expect("spool");
        spool.push(1, 0, hash(1), 1).expect("first");
        assert!(spool.push(1, 2, hash(2), 2).is_err(), "a block skipped");
        assert!(spool.push(2, 1, hash(2), 2).is_err(), "a file begun midway");
        spool.push(2, 0, hash(2), 2).expect("the next file");
        assert!(spool.push(1, 1, hash(1), 1).is_err(), "a file resumed");
        assert!(spool.push(1, 0, hash(1), 1).is_err(), "a file begun twice");
        assert!(
            spool.push(2, 0, hash(2), 2).is_err(),
            "the current file begun again"
        );
    }

    #[test]
    fn a_chunk_no_pack_holds_is_an_error_not_a_list() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut spool = BlockSpool::create_in(dir.path()).expect("spool");
        spool.push(1, 0, hash(500), 500).expect("pushed");
        let err = spool.resolve(&locations()).err().expect("refused");
        assert!(err.to_string().contains("never packed"), "{err}");
    }

    #[test]
    fn a_run_longer_than_a_batch_reads_back_whole() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut spool = BlockSpool::create_in(dir.path()).expect("spool");
        let n = BATCH * 2 + 7;
        for i in 0..n {
            spool.push(4, i, hash(i as u32 % 200), 1).expect("pushed");
        }
        let mut lists = spool.resolve(&locations()).expect("resolved");
        assert_eq!(lists.next_file(Some(4)), n as u64);
        let mut blocks = Vec::new();
        lists.file_blocks(0, &mut blocks).expect("read");
        let hashes: Vec<ChunkHash> = blocks.iter().map(|b| b.hash).collect();
        let expected: Vec<ChunkHash> = (0..n).map(|i| hash(i as u32 % 200)).collect();
        assert_eq!(hashes, expected);
    }
}
