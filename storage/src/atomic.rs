//! Writing a local file whole: whoever opens its name finds the old file or the new one, never
//! a prefix. The new contents go to a temporary name in the same directory (a rename never
//! crosses filesystems), which is then renamed into place, or hard-linked when a file already
//! there must not be replaced. A durable write fsyncs the file before the rename and the
//! directory after, so that after a crash the name holds either file whole. The temporary file
//! is removed on every error, and when a [`StagedFile`] is dropped without being committed.
//!
//! Every local file lifeline replaces goes through here: repository objects ([`crate::LocalStorage`]),
//! the `wal fetch` spool and the files `restore_command` hands to PostgreSQL.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::private::{self, Owner};
use crate::storage::TEMP_PREFIX;
use crate::{Durability, StorageError};

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// How a file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    /// `Some`: private (0600, see [`private`]) and given to this owner; `None`: created as any
    /// file is, under the process's umask (a file another program owns the format of, such as
    /// the WAL `restore_command` writes into `pg_wal`).
    pub private: Option<Owner>,
    /// `Immediate`: durable when the write returns. `Deferred`: no fsync at all, for files that
    /// are checked or asked for again after a crash; a crash may then leave the name empty.
    pub durability: Durability,
    pub temp: TempName,
}

/// The temporary name a write uses beside its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TempName {
    /// `.tmp.<name>.<pid>.<n>`, created exclusively (a link planted there is never followed):
    /// what [`crate::leftovers::is_repository_temp`] finds after a writer was killed.
    Hidden,
    /// `<name><mark><pid>`, replaced if it is there: for a directory with one writer at a time
    /// (under a lock), whose leftovers are found by that mark (the spool's `.partial.`).
    Marked(&'static str),
}

impl WriteOptions {
    /// Private to `owner`, durable when written, under a hidden temporary name.
    pub fn private(owner: Owner) -> WriteOptions {
        WriteOptions {
            private: Some(owner),
            durability: Durability::Immediate,
            temp: TempName::Hidden,
        }
    }

    /// Under the process's umask, durable when written, under a hidden temporary name.
    pub fn umask() -> WriteOptions {
        WriteOptions {
            private: None,
            durability: Durability::Immediate,
            temp: TempName::Hidden,
        }
    }

    pub fn durability(self, durability: Durability) -> WriteOptions {
        WriteOptions { durability, ..self }
    }

    pub fn temp(self, temp: TempName) -> WriteOptions {
        WriteOptions { temp, ..self }
    }
}

/// A local write that failed, with the path it failed on (the temporary file, the target or
/// its directory).
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl WriteError {
    fn at(path: &Path, source: io::Error) -> WriteError {
        WriteError {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<WriteError> for StorageError {
    fn from(e: WriteError) -> StorageError {
        StorageError::io(e.path, e.source)
    }
}

/// Write `bytes` to `path` whole (blocking: from async code, through
/// `tokio::task::spawn_blocking` or [`write_async`]).
pub fn write(path: &Path, bytes: &[u8], options: WriteOptions) -> Result<(), WriteError> {
    let mut staged = StagedFile::create(path, options)?;
    staged.write_all(bytes)?;
    staged.commit()
}

/// [`write()`] on a blocking thread.
pub async fn write_async(
    path: PathBuf,
    bytes: Vec<u8>,
    options: WriteOptions,
) -> Result<(), WriteError> {
    let target = path.clone();
    tokio::task::spawn_blocking(move || write(&path, &bytes, options))
        .await
        .map_err(|e| WriteError::at(&target, io::Error::other(e)))?
}

/// New contents under a temporary name beside `path`, not yet in place.
#[derive(Debug)]
pub struct StagedFile {
    path: PathBuf,
    temp: PathBuf,
    file: File,
    durability: Durability,
    /// The temporary name is gone (moved into place or removed).
    done: bool,
}

impl StagedFile {
    /// Create the temporary file beside `path` (whose directory must exist).
    pub fn create(path: &Path, options: WriteOptions) -> Result<StagedFile, WriteError> {
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pid = std::process::id();
        let temp = match options.temp {
            TempName::Hidden => path.with_file_name(format!(
                "{TEMP_PREFIX}{file_name}.{pid}.{}",
                TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            )),
            TempName::Marked(mark) => path.with_file_name(format!("{file_name}{mark}{pid}")),
        };
        let file = match (options.private, options.temp) {
            (Some(owner), TempName::Hidden) => private::create_new_file(&temp, owner),
            (Some(owner), TempName::Marked(_)) => private::create_file(&temp, owner),
            (None, TempName::Hidden) => OpenOptions::new().write(true).create_new(true).open(&temp),
            (None, TempName::Marked(_)) => File::create(&temp),
        };
        let file = match file {
            Ok(file) => file,
            Err(e) => {
                // A file created but not made private or given away is not left behind.
                let _ = std::fs::remove_file(&temp);
                return Err(WriteError::at(&temp, e));
            }
        };
        Ok(StagedFile {
            path: path.to_path_buf(),
            temp,
            file,
            durability: options.durability,
            done: false,
        })
    }

    /// The temporary file, to write the contents into.
    pub fn as_file(&self) -> &File {
        &self.file
    }

    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        self.file
            .write_all(bytes)
            .map_err(|e| WriteError::at(&self.temp, e))
    }

    /// Put the new contents in place, replacing what is there.
    pub fn commit(mut self) -> Result<(), WriteError> {
        self.sync_file()?;
        std::fs::rename(&self.temp, &self.path).map_err(|e| WriteError::at(&self.path, e))?;
        self.done = true;
        self.sync_dir()
    }

    /// Put the new contents in place only if nothing is there: an error of kind
    /// `AlreadyExists` otherwise, and the file there is untouched.
    pub fn commit_new(mut self) -> Result<(), WriteError> {
        self.sync_file()?;
        let linked = std::fs::hard_link(&self.temp, &self.path);
        let _ = std::fs::remove_file(&self.temp);
        self.done = true;
        linked.map_err(|e| WriteError::at(&self.path, e))?;
        self.sync_dir()
    }

    fn sync_file(&self) -> Result<(), WriteError> {
        if self.durability != Durability::Immediate {
            return Ok(());
        }
        // The data and what reading it back needs (its size); a new file's times need not
        // survive a crash.
        self.file
            .sync_data()
            .map_err(|e| WriteError::at(&self.temp, e))
    }

    fn sync_dir(&self) -> Result<(), WriteError> {
        if self.durability != Durability::Immediate {
            return Ok(());
        }
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| WriteError::at(dir, e))
    }
}

impl Drop for StagedFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn a_write_replaces_the_file_whole_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("status");
        write(&path, b"old", WriteOptions::private(Owner::KEEP)).expect("first");
        write(&path, b"new", WriteOptions::private(Owner::KEEP)).expect("second");
        assert_eq!(std::fs::read(&path).expect("read"), b"new");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(names(dir.path()), ["status"]);
    }

    #[test]
    fn commit_new_never_replaces_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("object");
        std::fs::write(&path, b"first").expect("write");
        let mut staged =
            StagedFile::create(&path, WriteOptions::private(Owner::KEEP)).expect("staged");
        staged.write_all(b"second").expect("write");
        let err = staged.commit_new().expect_err("already there");
        assert_eq!(err.source.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(err.path, path);
        assert_eq!(std::fs::read(&path).expect("read"), b"first");
        assert_eq!(names(dir.path()), ["object"]);
    }

    #[test]
    fn an_abandoned_write_removes_its_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("segment");
        let options = WriteOptions::private(Owner::KEEP)
            .durability(Durability::Deferred)
            .temp(TempName::Marked(".partial."));
        let mut staged = StagedFile::create(&path, options).expect("staged");
        assert_eq!(
            staged.temp_path(),
            dir.path()
                .join(format!("segment.partial.{}", std::process::id()))
        );
        staged.write_all(b"half").expect("write");
        drop(staged);
        assert!(names(dir.path()).is_empty());
        let err = write(&dir.path().join("gone/x"), b"x", WriteOptions::umask())
            .expect_err("no directory");
        assert!(err.path.starts_with(dir.path().join("gone")));
    }

    #[test]
    fn a_umask_write_is_not_made_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("000000010000000000000001");
        write(&path, b"wal", WriteOptions::umask()).expect("write");
        // Read, not set: setting it would race the other tests' file creations.
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let umask = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
            .expect("umask");
        assert_eq!(mode(&path), 0o666 & !umask);
    }
}
