//! How far a long operation is, as the libraries report it: byte counts from the backup and
//! restore pipelines, shown by whoever runs them (the CLI draws a bar on a terminal and logs a
//! line otherwise, `ops::progress`). Libraries never print; they only count.
//!
//! The trait lives here, below `archiver` and `restore`, so that both can report to it without
//! depending on each other.

use std::sync::Arc;

/// Where a long operation reports its bytes.
///
/// Called from the hot paths (once per block or chunk, from many threads at once): an
/// implementation must be cheap (atomics, no locks held across I/O) and must never block or
/// fail. The counts are for display only; nothing may depend on them.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// The bytes the operation expects to handle, once it knows; never called when it cannot
    /// know (a dump, a diskless RDB). Bytes done may end above or below it: files change while
    /// a base backup reads them.
    fn set_total(&self, bytes: u64);

    /// `bytes` more were handled (read and stored, or written).
    fn advance(&self, bytes: u64);

    /// What the operation is doing now, in a few words ("waiting for WAL", a drill's step).
    fn set_phase(&self, phase: &str);

    /// The operation is over: whatever was drawn is cleared before its result is printed. The
    /// library function given the reporter calls it as it succeeds; a reporter must also
    /// finish when dropped unfinished (a failure, whose error its caller prints), and a second
    /// call does nothing.
    fn finish(&self) {}
}

/// Reports nowhere: `wal push`, `wal fetch`, tests, and every caller that shows no progress.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn set_total(&self, _bytes: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn set_phase(&self, _phase: &str) {}
}

/// The default of every options struct that carries a reporter.
pub fn none() -> Arc<dyn Progress> {
    Arc::new(NoProgress)
}
