//! Writing restored chunks into the files they belong to.
//!
//! A chunk whose place and length are multiples of [`DIRECT_ALIGN`] (every relation block but a
//! file's last, when that one is short) is written with `O_DIRECT`: straight from the decoded
//! chunk to the disk. Going through the page cache cost about twice the disk's own time on the
//! VMs measured (copying into memory the guest had not touched, then writing it back; see
//! benches/README.md, "Restore with O_DIRECT"). Everything else, and everything on a file
//! system that refuses `O_DIRECT` (found at the first refusal, then not tried again), goes
//! through the page cache with its writeback started as it is written. Either way, durability
//! comes from the fsync of every file before `pg_control` is published.

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tracing::debug;

use crate::RestoreError;
use crate::restore_base::no_follow;

/// Alignment of memory, place and length that every Linux file system taking `O_DIRECT` accepts
/// (the logical block size of nearly every disk is 512 or 4096 bytes).
const DIRECT_ALIGN: usize = 4096;

/// Start writing a file's data to disk every this many bytes, so that writeback runs
/// alongside decoding instead of all at the end.
const FLUSH_EVERY: u64 = 32 << 20;

/// Files one write task keeps open: a chunk of the small-file bundle can hold hundreds of
/// files, and open files must stay bounded whatever the data directory holds.
const OPEN_FILES_PER_TASK: usize = 4;

/// What the write tasks of one restore share.
#[derive(Debug)]
pub(crate) struct SharedWrites {
    /// One lock per file written through the page cache: writers to the same file take turns
    /// in user space instead of spinning on the inode lock in the kernel (which, measured, cost
    /// more than the copy itself). It also keeps what was written since the file's writeback
    /// was last started.
    locks: Mutex<HashMap<Arc<PathBuf>, Arc<Mutex<Unflushed>>>>,
    /// Cleared once the file system refuses `O_DIRECT`.
    direct: AtomicBool,
}

impl SharedWrites {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(SharedWrites {
            locks: Mutex::default(),
            direct: AtomicBool::new(true),
        })
    }

    fn refuse_direct(&self, path: &std::path::Path, err: &std::io::Error) {
        if self.direct.swap(false, Ordering::Relaxed) {
            debug!(
                path = %path.display(),
                error = %err,
                "the file system refuses O_DIRECT: writing through the page cache"
            );
        }
    }
}

/// One write task's open files and its aligned buffer.
pub(crate) struct TaskFiles<'a> {
    shared: &'a SharedWrites,
    /// The most recently used first; a file opened for direct writes is a separate entry.
    open: Vec<OpenFile>,
    aligned: Vec<u8>,
}

struct OpenFile {
    path: Arc<PathBuf>,
    direct: bool,
    file: std::fs::File,
}

impl<'a> TaskFiles<'a> {
    pub(crate) fn new(shared: &'a SharedWrites) -> Self {
        TaskFiles {
            shared,
            open: Vec::with_capacity(OPEN_FILES_PER_TASK),
            aligned: Vec::new(),
        }
    }

    /// Write `data` at `offset` of `path`, a file the restore created.
    pub(crate) fn write(
        &mut self,
        path: &Arc<PathBuf>,
        offset: u64,
        data: &[u8],
    ) -> Result<(), RestoreError> {
        if is_aligned(offset, data.len()) && self.shared.direct.load(Ordering::Relaxed) {
            match self.write_direct(path, offset, data) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                // A refusal after part of it was written is fine: the buffered write below
                // writes all of it again.
                Err(err) if refuses_direct(&err) => self.shared.refuse_direct(path, &err),
                Err(err) => return Err(RestoreError::io(path.as_ref(), err)),
            }
        }
        let shared = self.shared;
        let file = open_in(&mut self.open, path, false)
            .map_err(|err| RestoreError::io(path.as_ref(), err))?;
        write_buffered(shared, path, file, data, offset)
    }

    /// Write through an `O_DIRECT` descriptor from an aligned copy of `data`; false when no
    /// aligned buffer could be had.
    fn write_direct(
        &mut self,
        path: &Arc<PathBuf>,
        offset: u64,
        data: &[u8],
    ) -> std::io::Result<bool> {
        if self.aligned.len() < data.len() + DIRECT_ALIGN {
            self.aligned = vec![0; data.len() + DIRECT_ALIGN];
        }
        // `align_offset` may decline (usize::MAX): then the write goes through the page cache.
        let from = self.aligned.as_ptr().align_offset(DIRECT_ALIGN);
        let Some(buffer) = from
            .checked_add(data.len())
            .and_then(|to| self.aligned.get_mut(from..to))
        else {
            return Ok(false);
        };
        buffer.copy_from_slice(data);
        let file = open_in(&mut self.open, path, true)?;
        file.write_all_at(buffer, offset)?;
        Ok(true)
    }
}

/// The descriptor for `path` among `open`, opened if need be (closing the least recently used
/// beyond [`OPEN_FILES_PER_TASK`]) and moved to the front.
fn open_in<'o>(
    open: &'o mut Vec<OpenFile>,
    path: &Arc<PathBuf>,
    direct: bool,
) -> std::io::Result<&'o std::fs::File> {
    let index = match open
        .iter()
        .position(|o| o.direct == direct && o.path == *path)
    {
        Some(index) => index,
        None => {
            let mut flags = no_follow();
            if direct {
                flags |= rustix::fs::OFlags::DIRECT.bits() as i32;
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(flags)
                .open(path.as_ref())?;
            if open.len() == OPEN_FILES_PER_TASK {
                open.pop();
            }
            open.push(OpenFile {
                path: path.clone(),
                direct,
                file,
            });
            open.len() - 1
        }
    };
    open[..=index].rotate_right(1);
    Ok(&open[0].file)
}

fn is_aligned(offset: u64, len: usize) -> bool {
    len > 0 && offset.is_multiple_of(DIRECT_ALIGN as u64) && len.is_multiple_of(DIRECT_ALIGN)
}

/// How Linux says a file system (or a device's block size) does not take a direct write:
/// tmpfs before 6.6, FUSE, and others refuse the `open`; a disk with larger logical blocks
/// refuses the write.
fn refuses_direct(err: &std::io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(err),
        Some(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP)
    )
}

/// Write under the file's lock, and every `FLUSH_EVERY` bytes start the writeback of what was
/// just written. Starting is enough: the restore fsyncs every file before `pg_control` is
/// published, and waiting here (fdatasync) held the write task idle while the disk worked.
fn write_buffered(
    shared: &SharedWrites,
    path: &Arc<PathBuf>,
    file: &std::fs::File,
    data: &[u8],
    offset: u64,
) -> Result<(), RestoreError> {
    let lock = shared
        .locks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(path.clone())
        .or_default()
        .clone();
    let mut unflushed = lock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    file.write_all_at(data, offset)
        .map_err(|e| RestoreError::io(path.as_ref(), e))?;
    let flush = unflushed.add(offset, data.len() as u64);
    drop(unflushed);
    if let Some((start, end)) = flush {
        start_writeback(file, start, end);
    }
    Ok(())
}

/// The run of contiguous bytes written to a file since its writeback was last started.
#[derive(Debug, Default)]
struct Unflushed {
    start: u64,
    end: u64,
}

impl Unflushed {
    /// Count a write; a run that is long enough, or that this write does not continue, is
    /// returned to be written back. Even short runs are: the write tasks interleave their
    /// writes to a file, and leaving short runs to the final fsync (tried) made a scale 200
    /// restore 30-50 % slower.
    fn add(&mut self, offset: u64, len: u64) -> Option<(u64, u64)> {
        let mut ready = None;
        if offset != self.end {
            if self.end > self.start {
                ready = Some((self.start, self.end));
            }
            self.start = offset;
        }
        self.end = offset + len;
        if ready.is_none() && self.end - self.start >= FLUSH_EVERY {
            ready = Some((self.start, self.end));
            self.start = self.end;
        }
        ready
    }
}

/// Ask the kernel to write the dirty pages of `start..end` to disk now, without waiting for
/// them: `POSIX_FADV_DONTNEED` starts writeback of a dirty range (as PostgreSQL's
/// `pg_flush_data` does where `sync_file_range` is missing). It drops the pages of the range
/// that are already clean, so the range is only what was just written. Only a hint:
/// durability comes from the fsync at the end, and a writeback error stays recorded for it to
/// report.
fn start_writeback(file: &std::fs::File, start: u64, end: u64) {
    let _ = rustix::fs::fadvise(
        file,
        start,
        std::num::NonZeroU64::new(end - start),
        rustix::fs::Advice::DontNeed,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writeback_ranges_hold_only_what_was_just_written() {
        let mut run = Unflushed::default();
        let block = 256 << 10;
        let mut ready = Vec::new();
        // Contiguous writes: one range per FLUSH_EVERY bytes, back to back.
        for n in 0..(2 * FLUSH_EVERY / block) {
            ready.extend(run.add(n * block, block));
        }
        assert_eq!(
            ready,
            vec![(0, FLUSH_EVERY), (FLUSH_EVERY, 2 * FLUSH_EVERY)]
        );
        // A jump hands over the run so far, never the gap.
        let at = 10 * FLUSH_EVERY;
        assert_eq!(run.add(at, block), None);
        assert_eq!(run.add(at + block, block), None);
        assert_eq!(run.add(0, block), Some((at, at + 2 * block)));
        assert_eq!(run.add(5 * block, block), Some((0, block)));
    }

    #[test]
    fn only_whole_aligned_blocks_go_direct() {
        assert!(is_aligned(0, 8192));
        assert!(is_aligned(256 << 10, 256 << 10));
        assert!(!is_aligned(0, 0));
        assert!(!is_aligned(0, 8191));
        assert!(!is_aligned(512, 4096));
        let invalid = std::io::Error::from_raw_os_error(rustix::io::Errno::INVAL.raw_os_error());
        assert!(refuses_direct(&invalid));
        let full = std::io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error());
        assert!(!refuses_direct(&full));
    }

    /// Aligned and unaligned pieces, in any order and from several tasks, some on a file system
    /// that refused `O_DIRECT`, make the same file as one plain write.
    #[test]
    fn direct_and_buffered_writes_make_the_same_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let len = 3 * (256 << 10) + 8192 + 100;
        let expected: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        // Pieces: 256 KiB blocks, an 8 KiB one, a short tail; written last to first.
        let mut pieces = vec![];
        let mut at = 0;
        for size in [256 << 10, 256 << 10, 256 << 10, 8192, 100] {
            pieces.push((at, size));
            at += size;
        }
        pieces.reverse();
        for direct in [true, false] {
            let path = Arc::new(dir.path().join(format!("file {direct}")));
            let file = std::fs::File::create(path.as_ref()).expect("create");
            file.set_len(len as u64).expect("size");
            let shared = SharedWrites::new();
            shared.direct.store(direct, Ordering::Relaxed);
            std::thread::scope(|scope| {
                for half in pieces.chunks(3) {
                    let (shared, path, expected) = (&shared, &path, &expected);
                    scope.spawn(move || {
                        let mut files = TaskFiles::new(shared);
                        for &(at, size) in half {
                            files
                                .write(path, at as u64, &expected[at..at + size])
                                .expect("write");
                        }
                    });
                }
            });
            assert_eq!(std::fs::read(path.as_ref()).expect("read"), expected);
            // The temporary directory's file system takes O_DIRECT (ext4, xfs, tmpfs since
            // Linux 6.6): the direct round did write directly.
            assert_eq!(shared.direct.load(Ordering::Relaxed), direct);
        }
    }
}
