//! How the restore opens files in a directory whose owner could swap them meanwhile: never
//! through a link in the last component, and, for a file it did not create, never blocking on
//! a FIFO put in its place.

use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::RestoreError;

/// Open flags that refuse to follow a link in the last component: every file the restore
/// writes is one it created itself.
pub(crate) fn no_follow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// Open flags for a file the directory's owner could have swapped for a FIFO or a link: never
/// followed, never waited on.
pub(crate) fn no_follow_nonblocking() -> i32 {
    no_follow() | rustix::fs::OFlags::NONBLOCK.bits() as i32
}

/// At most `limit` bytes of the regular file `path` (never through a link, never blocking on
/// a FIFO); `None` when it does not exist.
pub(crate) fn read_small(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, RestoreError> {
    let io = |e| RestoreError::io(path, e);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(no_follow_nonblocking())
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(e)),
    };
    if !file.metadata().map_err(io)?.is_file() {
        return Err(RestoreError::Refused(format!(
            "{} is not a regular file: nothing was written",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, limit), &mut bytes).map_err(io)?;
    Ok(Some(bytes))
}
