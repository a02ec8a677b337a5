//! Where a restore keeps the manifest's block lists: 88 bytes a 256 KiB block, the one part of
//! a manifest that grows with the cluster (370 MB at 1 TiB).
//!
//! The manifest is read twice. First as an outline: every file's blocks are checked, counted
//! and dropped as they stream past, and the packs they lie in gathered. Then, once the target
//! exists, the lists go into an unlinked file inside it (nothing to leave behind, whatever
//! stops the restore), and that read must have the first one's checksum: the manifest cannot
//! change in between. Each window of files then reads its own lists back. Memory is per file.
//!
//! A manifest with no more blocks than one window plans keeps its lists from the first read:
//! that window would hold them all anyway, and there is no second read. A manifest given whole
//! (tests) keeps its lists too: [`BlockLists::whole`].

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use storage::manifest::{BackupManifest, ChunkRef, FileEntry};
use storage::{PackId, Storage};

use tracing::debug;

use crate::RestoreError;
use crate::error::blocking;

/// Bytes of one block in the file.
const RECORD: usize = ChunkRef::RECORD_LEN;

/// A base backup's manifest without its block lists, and what the restore needs of them
/// before they are read again.
#[derive(Debug)]
pub struct Outline {
    /// The manifest, every file's `blocks` empty.
    pub manifest: BackupManifest,
    checksum: blake3::Hash,
    counts: Vec<u32>,
    packs: BTreeSet<PackId>,
    /// The first refusal the checks of the blocks found, reported by the validation.
    refusal: Option<String>,
    /// Every file's blocks, when they were few enough to keep.
    kept: Option<Vec<Vec<ChunkRef>>>,
}

/// Read the outline of `backup_id`'s manifest: the first of its two reads. A manifest of at
/// most `keep_up_to` blocks keeps them.
pub async fn read_outline(
    storage: &dyn Storage,
    backup_id: &str,
    keep_up_to: usize,
) -> Result<Outline, RestoreError> {
    let counting = Counting {
        keep_up_to,
        kept: Some(Vec::new()),
        ..Counting::default()
    };
    let (outline, counted) = BackupManifest::load_outline(storage, backup_id, counting).await?;
    Ok(Outline {
        manifest: outline.manifest,
        checksum: outline.checksum,
        counts: counted.counts,
        packs: counted.packs,
        refusal: counted.refusal,
        kept: counted.kept,
    })
}

/// The first read's sink: counts, checks and gathers the packs, and keeps the blocks while
/// they are at most `keep_up_to`.
#[derive(Default)]
struct Counting {
    counts: Vec<u32>,
    packs: BTreeSet<PackId>,
    refusal: Option<String>,
    keep_up_to: usize,
    blocks: usize,
    kept: Option<Vec<Vec<ChunkRef>>>,
}

impl storage::manifest::BlockSink for Counting {
    fn file(&mut self, _index: usize, entry: &mut FileEntry) -> Result<(), String> {
        let Ok(count) = u32::try_from(entry.blocks.len()) else {
            return Err(format!(
                "{:?} lists more blocks than any file holds",
                entry.path
            ));
        };
        self.counts.push(count);
        self.packs.extend(entry.blocks.iter().map(|c| c.pack));
        if self.refusal.is_none()
            && let Err(reason) = crate::validate::check_blocks(entry)
        {
            self.refusal = Some(reason);
        }
        self.blocks = self.blocks.saturating_add(entry.blocks.len());
        if self.blocks > self.keep_up_to {
            self.kept = None;
        }
        if let Some(kept) = &mut self.kept {
            kept.push(std::mem::take(&mut entry.blocks));
        }
        Ok(())
    }
}

/// The second read's sink: writes each file's blocks to the kept file. What goes wrong is
/// noted and the read goes on, so that the sink comes back to say it.
struct Keeping {
    out: std::io::BufWriter<std::fs::File>,
    counts: std::sync::Arc<Vec<u32>>,
    failed: Option<std::io::Error>,
    /// A file whose count differs from the first read's.
    changed: bool,
}

impl storage::manifest::BlockSink for Keeping {
    fn file(&mut self, index: usize, entry: &mut FileEntry) -> Result<(), String> {
        if self.counts.get(index).map(|c| *c as usize) != Some(entry.blocks.len()) {
            self.changed = true;
        }
        if self.failed.is_some() || self.changed {
            return Ok(());
        }
        for chunk in &entry.blocks {
            if let Err(e) = self.out.write_all(&chunk.to_record()) {
                self.failed = Some(e);
                break;
            }
        }
        Ok(())
    }
}

/// The block lists of the manifest a restore puts back.
#[derive(Debug)]
pub(crate) struct BlockLists {
    /// `None`: the manifest holds them.
    outline: Option<Lists>,
}

#[derive(Debug)]
struct Lists {
    backup_id: String,
    checksum: blake3::Hash,
    counts: std::sync::Arc<Vec<u32>>,
    /// Per file, the number of its first block among all.
    first: Vec<u64>,
    packs: BTreeSet<PackId>,
    refusal: Option<String>,
    /// The unlinked file holding them, and the directory it is in, once read again.
    kept: Option<(std::fs::File, PathBuf)>,
}

impl BlockLists {
    /// The lists of a manifest that holds them.
    pub(crate) fn whole() -> BlockLists {
        BlockLists { outline: None }
    }

    /// The lists of `outline`'s manifest (its first read), to read again with [`Self::keep_in`]
    /// unless the first read kept them.
    pub(crate) fn of(outline: Outline) -> (BackupManifest, BlockLists) {
        if let Some(kept) = outline.kept {
            let mut manifest = outline.manifest;
            for (entry, blocks) in manifest.files.iter_mut().zip(kept) {
                entry.blocks = blocks;
            }
            return (manifest, BlockLists::whole());
        }
        let mut first = Vec::with_capacity(outline.counts.len());
        let mut next = 0u64;
        for count in &outline.counts {
            first.push(next);
            next += u64::from(*count);
        }
        let lists = Lists {
            backup_id: outline.manifest.backup_id.clone(),
            checksum: outline.checksum,
            counts: std::sync::Arc::new(outline.counts),
            first,
            packs: outline.packs,
            refusal: outline.refusal,
            kept: None,
        };
        (
            outline.manifest,
            BlockLists {
                outline: Some(lists),
            },
        )
    }

    /// The first refusal the blocks' own checks found in the first read.
    pub(crate) fn refusal(&self) -> Option<&str> {
        self.outline.as_ref()?.refusal.as_deref()
    }

    /// How many blocks file number `index` has.
    pub(crate) fn count(&self, manifest: &BackupManifest, index: usize) -> usize {
        match &self.outline {
            None => manifest.files.get(index).map_or(0, |f| f.blocks.len()),
            Some(lists) => lists.counts.get(index).map_or(0, |c| *c as usize),
        }
    }

    /// The packs the backup's chunks lie in.
    pub(crate) fn packs(&self, manifest: &BackupManifest) -> BTreeSet<PackId> {
        match &self.outline {
            None => manifest.packs(),
            Some(lists) => {
                let mut packs = lists.packs.clone();
                packs.extend(manifest.bundle.iter().map(|c| c.pack));
                packs
            }
        }
    }

    /// The blocks of file number `index`.
    pub(crate) fn blocks<'m>(
        &self,
        manifest: &'m BackupManifest,
        index: usize,
    ) -> Result<Cow<'m, [ChunkRef]>, RestoreError> {
        let Some(lists) = &self.outline else {
            let blocks = manifest.files.get(index).map_or(&[][..], |f| &f.blocks);
            return Ok(Cow::Borrowed(blocks));
        };
        let count = lists.counts.get(index).map_or(0, |c| *c as usize);
        if count == 0 {
            return Ok(Cow::Borrowed(&[]));
        }
        let Some((file, dir)) = &lists.kept else {
            return Err(RestoreError::Failed(
                "internal error: the block lists were used before they were read".into(),
            ));
        };
        let mut bytes = vec![0u8; count * RECORD];
        let at = lists.first.get(index).copied().unwrap_or(0) * RECORD as u64;
        file.read_exact_at(&mut bytes, at)
            .map_err(|e| RestoreError::io(dir, e))?;
        let (records, _) = bytes.as_chunks::<RECORD>();
        Ok(Cow::Owned(
            records.iter().map(ChunkRef::from_record).collect(),
        ))
    }

    /// Files `files` of the manifest, each with its blocks.
    pub(crate) fn entries<'m>(
        &self,
        manifest: &'m BackupManifest,
        files: Range<usize>,
    ) -> Result<Cow<'m, [FileEntry]>, RestoreError> {
        let entries = manifest.files.get(files.clone()).unwrap_or_default();
        if self.outline.is_none() {
            return Ok(Cow::Borrowed(entries));
        }
        let mut filled = Vec::with_capacity(entries.len());
        for (index, entry) in files.zip(entries) {
            let blocks = self.blocks(manifest, index)?.into_owned();
            filled.push(FileEntry {
                blocks,
                ..entry.clone()
            });
        }
        Ok(Cow::Owned(filled))
    }

    /// Read the manifest again, its block lists into an unlinked file in `dir` (inside the
    /// target, which the restore made or claimed); refused if it is not the manifest first
    /// read.
    pub(crate) async fn keep_in(
        &mut self,
        storage: &dyn Storage,
        dir: &Path,
    ) -> Result<(), RestoreError> {
        let Some(lists) = &mut self.outline else {
            return Ok(());
        };
        if lists.kept.is_some() {
            return Ok(());
        }
        let file = {
            let dir = dir.to_path_buf();
            blocking("block list file", move || unlinked_file(&dir)).await?
        };
        let writer = file.try_clone().map_err(|e| RestoreError::io(dir, e))?;
        let keeping = Keeping {
            out: std::io::BufWriter::with_capacity(1 << 20, writer),
            counts: lists.counts.clone(),
            failed: None,
            changed: false,
        };
        let (outline, keeping) =
            BackupManifest::load_outline(storage, &lists.backup_id, keeping).await?;
        if let Some(e) = keeping.failed {
            return Err(RestoreError::io(dir, e));
        }
        let files = keeping.counts.len();
        if keeping.changed
            || outline.checksum != lists.checksum
            || outline.manifest.files.len() != files
        {
            return Err(RestoreError::Refused(format!(
                "the manifest of backup {} changed between its two reads (someone wrote to the \
                 repository during the restore); nothing the second read holds was used: run \
                 the restore again",
                lists.backup_id
            )));
        }
        keeping
            .out
            .into_inner()
            .map_err(|e| RestoreError::io(dir, e.into_error()))?;
        let blocks: u64 = lists.counts.iter().map(|c| u64::from(*c)).sum();
        debug!(
            blocks,
            files, "the manifest read again, its block lists kept on disk"
        );
        lists.kept = Some((file, dir.to_path_buf()));
        Ok(())
    }
}

/// A file in `dir` with no name: nothing is left behind however the restore ends. Where the
/// file system has no such files, one made under a fresh name and unlinked at once.
fn unlinked_file(dir: &Path) -> Result<std::fs::File, RestoreError> {
    let open = |path: &Path, flags| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(flags)
            .open(path)
    };
    let unsupported =
        [rustix::io::Errno::OPNOTSUPP, rustix::io::Errno::ISDIR].map(|e| Some(e.raw_os_error()));
    // O_EXCL: never linked into the directory later (through /proc/<pid>/fd).
    let flags = rustix::fs::OFlags::TMPFILE | rustix::fs::OFlags::EXCL;
    match open(dir, flags.bits() as i32) {
        Ok(file) => return Ok(file),
        Err(e) if !unsupported.contains(&e.raw_os_error()) => {
            return Err(RestoreError::io(dir, e));
        }
        Err(_) => {}
    }
    named_then_unlinked(dir)
}

/// [`unlinked_file`] where the file system has no `O_TMPFILE`.
fn named_then_unlinked(dir: &Path) -> Result<std::fs::File, RestoreError> {
    // A name no backup holds, nor another restore picks.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let path = dir.join(format!(
        ".lifeline-block-lists.{}.{nanos}",
        std::process::id()
    ));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(crate::opening::no_follow())
        .open(&path)
        .map_err(|e| RestoreError::io(&path, e))?;
    std::fs::remove_file(&path).map_err(|e| RestoreError::io(&path, e))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::manifest::{EntryKind, put_manifest};
    use storage::{ChunkHash, LocalStorage, PutMode, layout};
    use testing::fixtures::file_entry;

    fn chunk(n: u32, len: u64) -> ChunkRef {
        let mut hash = [0u8; 32];
        hash[..4].copy_from_slice(&n.to_le_bytes());
        ChunkRef {
            hash: ChunkHash::from_bytes(hash),
            len,
            pack: PackId::from_bytes([(n % 3) as u8 + 1; 32]),
            offset: u64::from(n) * 1000 + 7,
            stored: u64::from(n) + 1,
        }
    }

    fn relation(path: &str, first: u32, blocks: u32) -> FileEntry {
        FileEntry {
            size: u64::from(blocks) * 8192,
            blocks: (first..first + blocks).map(|n| chunk(n, 8192)).collect(),
            ..file_entry(path, EntryKind::File, 0o600)
        }
    }

    /// A manifest of two relation files around a small one and an empty one.
    fn manifest() -> BackupManifest {
        let mut m = testing::fixtures::base_manifest();
        m.files = vec![
            file_entry("base", EntryKind::Dir, 0o700),
            relation("base/1259", 0, 40),
            FileEntry {
                size: 3,
                bundle_offset: Some(0),
                ..file_entry("PG_VERSION", EntryKind::File, 0o600)
            },
            file_entry("base/empty", EntryKind::File, 0o600),
            relation("base/16384", 40, 3),
        ];
        m.bundle = vec![chunk(99, 3)];
        m
    }

    fn temp_dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("temp dir")
    }

    async fn stored(dir: &Path, m: &BackupManifest) -> LocalStorage {
        let store = LocalStorage::open(dir).expect("open");
        let key = layout::manifest_key(&m.backup_id);
        put_manifest(&store, &key, m, PutMode::Overwrite)
            .await
            .expect("put");
        store
    }

    #[test]
    fn the_file_has_no_name_either_way_even_in_an_odd_directory() {
        let top = temp_dir();
        let dir = top.path().join("old primary it's 100% a\\b c");
        std::fs::create_dir(&dir).expect("mkdir");
        for make in [unlinked_file, named_then_unlinked] {
            let file = make(&dir).expect("made");
            file.write_all_at(b"record", 88).expect("write");
            let mut back = [0u8; 6];
            file.read_exact_at(&mut back, 88).expect("read");
            assert_eq!(&back, b"record");
            assert_eq!(std::fs::read_dir(&dir).expect("read").count(), 0);
        }
    }

    #[test]
    fn a_record_reads_back_as_the_chunk_it_was() {
        let c = ChunkRef {
            hash: ChunkHash::from_bytes([0xab; 32]),
            len: u64::MAX - 1,
            pack: PackId::from_bytes([0xcd; 32]),
            offset: 1 << 40,
            stored: 3,
        };
        assert_eq!(ChunkRef::from_record(&c.to_record()), c);
    }

    #[tokio::test]
    async fn the_lists_kept_on_disk_are_the_manifests_own_and_leave_no_name() {
        let (repo, target) = (temp_dir(), temp_dir());
        let m = manifest();
        let store = stored(repo.path(), &m).await;
        let outline = read_outline(&store, &m.backup_id, 0)
            .await
            .expect("outline");
        assert!(outline.manifest.files.iter().all(|f| f.blocks.is_empty()));
        let (outlined, mut lists) = BlockLists::of(outline);
        crate::validate::validate_with(&outlined, &lists).expect("valid");
        assert_eq!(lists.packs(&outlined), m.packs());
        let counts: Vec<_> = (0..5).map(|i| lists.count(&outlined, i)).collect();
        assert_eq!(counts, [0, 40, 0, 0, 3]);
        // Not read again yet: refused rather than taken for a file with no blocks.
        assert!(lists.blocks(&outlined, 1).is_err());

        lists.keep_in(&store, target.path()).await.expect("kept");
        for (i, entry) in m.files.iter().enumerate() {
            assert_eq!(*lists.blocks(&outlined, i).expect("read"), entry.blocks[..]);
        }
        assert_eq!(
            *lists.entries(&outlined, 1..5).expect("read"),
            m.files[1..5]
        );
        assert_eq!(std::fs::read_dir(target.path()).expect("read").count(), 0);
    }

    #[tokio::test]
    async fn a_manifest_of_at_most_one_window_keeps_its_lists_from_the_first_read() {
        let (repo, target) = (temp_dir(), temp_dir());
        let m = manifest();
        let store = stored(repo.path(), &m).await;
        for (keep_up_to, kept) in [(43, true), (42, false), (usize::MAX, true)] {
            let outline = read_outline(&store, &m.backup_id, keep_up_to)
                .await
                .expect("outline");
            let (outlined, mut lists) = BlockLists::of(outline);
            assert_eq!(outlined == m, kept, "up to {keep_up_to}");
            assert_eq!(lists.count(&outlined, 1), 40);
            if kept {
                // Nothing to read again: no second read, no file.
                lists.keep_in(&store, target.path()).await.expect("kept");
                assert_eq!(
                    *lists.blocks(&outlined, 4).expect("read"),
                    m.files[4].blocks[..]
                );
            } else {
                assert!(lists.blocks(&outlined, 4).is_err());
            }
        }
    }

    #[tokio::test]
    async fn a_manifest_changed_between_its_two_reads_is_refused() {
        let (repo, target) = (temp_dir(), temp_dir());
        let m = manifest();
        // A block moved to another pack: the same counts, other contents.
        let mut moved = m.clone();
        moved.files[1].blocks[5].pack = PackId::from_bytes([9; 32]);
        // A block more.
        let mut longer = m.clone();
        longer.files[4].blocks.push(chunk(77, 8192));
        longer.files[4].size += 8192;
        for changed in [moved, longer] {
            let store = stored(repo.path(), &m).await;
            let outline = read_outline(&store, &m.backup_id, 0)
                .await
                .expect("outline");
            let (outlined, mut lists) = BlockLists::of(outline);
            let store = stored(repo.path(), &changed).await;
            let err = lists
                .keep_in(&store, target.path())
                .await
                .expect_err("changed");
            assert!(
                err.to_string().contains("changed between its two reads"),
                "{err}"
            );
            assert!(lists.blocks(&outlined, 1).is_err());
        }
    }

    #[tokio::test]
    async fn blocks_that_do_not_make_their_file_are_refused_from_the_outline() {
        let repo = temp_dir();
        let mut m = manifest();
        m.files[4].size += 1;
        let store = stored(repo.path(), &m).await;
        let (outlined, lists) = BlockLists::of(
            read_outline(&store, &m.backup_id, 0)
                .await
                .expect("outline"),
        );
        let err = crate::validate::validate_with(&outlined, &lists).expect_err("refused");
        assert!(err.to_string().contains("base/16384"), "{err}");
        assert_eq!(
            err.to_string(),
            crate::validate::validate_base(&m)
                .expect_err("refused")
                .to_string()
        );
    }
}
