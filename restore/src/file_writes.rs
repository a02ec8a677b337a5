//! Writing restored chunks into the files they belong to.
//!
//! Through the page cache by default, with the writeback of what was written started as it is
//! written, so that the restored files stay cached for the server that starts on them. When the
//! operator asks for direct writes (`direct-io = true`), a piece of at least [`DIRECT_MIN`]
//! bytes whose place and length are multiples of [`DIRECT_ALIGN`] (every relation block but a
//! file's last, when that one is short) is written with `O_DIRECT`, from an aligned copy of the
//! decoded chunk straight to the disk. On a freshly booted VM whose free memory the host has
//! taken back, that halved a full restore (every page cached is memory the guest must first get
//! back); on a machine whose memory is in use it was slower (benches/README.md, "Restore with
//! O_DIRECT"). Short pieces and small files go through the page cache either way, and so does
//! everything once a file system refuses `O_DIRECT`, or says (statx) that it would only pretend
//! to honour it or needs a larger alignment (ext4 with `data=journal`, tmpfs, some FUSE and
//! network file systems). Durability comes from the fsync of every file before `pg_control` is
//! published.

use std::collections::HashMap;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tracing::info;

use crate::RestoreError;
use crate::opening::no_follow_nonblocking;

/// Alignment of memory, place and length that every Linux file system taking `O_DIRECT` accepts
/// (the logical block size of nearly every disk is 512 or 4096 bytes).
const DIRECT_ALIGN: usize = 4096;

/// Pieces shorter than this go through the page cache: a small file's own `O_DIRECT` open and
/// synchronous write would cost more than they save.
const DIRECT_MIN: usize = 64 << 10;

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
    /// Whether pieces may still go direct: cleared once a file system refuses `O_DIRECT`.
    direct: AtomicBool,
}

impl SharedWrites {
    /// `direct`: whether the operator allows `O_DIRECT` writes.
    pub(crate) fn new(direct: bool) -> Arc<Self> {
        Arc::new(SharedWrites {
            locks: Mutex::default(),
            direct: AtomicBool::new(direct),
        })
    }

    fn refuse_direct(&self, path: &std::path::Path, err: &std::io::Error) {
        if self.direct.swap(false, Ordering::Relaxed) {
            info!(
                path = %path.display(),
                error = %err,
                "no O_DIRECT writes on this file system: the rest of the restore writes through \
                 the page cache"
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
        if goes_direct(offset, data.len()) && self.shared.direct.load(Ordering::Relaxed) {
            match self.write_direct(path, offset, data) {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                // A refusal after part of it was written is fine: the buffered write below
                // writes all of it again.
                Err(err) if refuses_direct(&err) => {
                    self.shared.refuse_direct(path, &err);
                    self.open.retain(|o| !o.direct);
                }
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

/// The descriptor for `path` among `open`, opened if need be (after closing the least recently
/// used, so that a task never holds more than [`OPEN_FILES_PER_TASK`]) and moved to the front.
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
            if open.len() == OPEN_FILES_PER_TASK {
                open.pop();
            }
            // Non-blocking: a FIFO put in a file's place fails the open instead of hanging it.
            let mut flags = no_follow_nonblocking();
            if direct {
                flags |= rustix::fs::OFlags::DIRECT.bits() as i32;
            }
            let file = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(flags)
                .open(path.as_ref())?;
            if direct && !honours_direct(&file) {
                return Err(rustix::io::Errno::OPNOTSUPP.into());
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

fn goes_direct(offset: u64, len: usize) -> bool {
    len >= DIRECT_MIN
        && offset.is_multiple_of(DIRECT_ALIGN as u64)
        && len.is_multiple_of(DIRECT_ALIGN)
}

/// Whether the file system of `file` writes it directly with [`DIRECT_ALIGN`]: it says so
/// through `statx` since Linux 6.1. Zero means it takes `O_DIRECT` but writes through the page
/// cache all the same (ext4 with `data=journal`); a larger alignment would refuse our writes.
/// An older kernel says nothing, and the first write finds out.
fn honours_direct(file: &std::fs::File) -> bool {
    use rustix::fs::{AtFlags, StatxFlags};
    let Ok(stat) = rustix::fs::statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN) else {
        return true;
    };
    if stat.stx_mask & StatxFlags::DIOALIGN.bits() == 0 {
        return true;
    }
    let (memory, offset) = (stat.stx_dio_mem_align, stat.stx_dio_offset_align);
    offset != 0 && offset as usize <= DIRECT_ALIGN && memory as usize <= DIRECT_ALIGN
}

/// How Linux says a file system (or a device's block size) does not take a direct write: some
/// (tmpfs before 6.6, network and FUSE file systems without it) refuse the `open`, a disk with
/// larger logical blocks refuses the write; [`honours_direct`] says `OPNOTSUPP` for the others.
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
        assert!(goes_direct(0, DIRECT_MIN));
        assert!(goes_direct(256 << 10, 256 << 10));
        assert!(!goes_direct(0, 0));
        assert!(!goes_direct(0, 8192));
        assert!(!goes_direct(0, DIRECT_MIN + 1));
        assert!(!goes_direct(512, DIRECT_MIN));
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
            let shared = SharedWrites::new(direct);
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
            // Where the temporary directory's file system writes directly (ext4, XFS), the
            // direct round did.
            let probe = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                .open(path.as_ref());
            let honoured = probe.is_ok_and(|file| honours_direct(&file));
            assert_eq!(shared.direct.load(Ordering::Relaxed), direct && honoured);
        }
    }
}
