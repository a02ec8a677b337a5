//! An archived WAL file read back, and handed to PostgreSQL: what `wal fetch` and its
//! read-ahead spool both do.

use std::path::{Path, PathBuf};

use storage::atomic::{self, WriteOptions};
use storage::wal::WalFileName;
use storage::{Durability, Storage, StorageExt, layout, object};

use crate::RestoreError;

/// The plain contents of an archived WAL file, verified against its checksum (decoded on a
/// blocking thread). A file not archived is the storage's `NotFound`.
pub(crate) async fn read_archived(
    storage: &dyn Storage,
    system_identifier: u64,
    name: &WalFileName,
) -> Result<Vec<u8>, RestoreError> {
    let key = layout::wal_key(system_identifier, name);
    let stored = storage.get_bytes(&key).await?;
    tokio::task::spawn_blocking(move || object::decode(&key, &stored))
        .await
        .map_err(RestoreError::task("decompression task"))?
        .map_err(RestoreError::from)
}

/// How a file for PostgreSQL is written: whole (PostgreSQL never sees a prefix), under the
/// umask like the server's own files, and without fsync: PostgreSQL reads it at once, and
/// after a crash it asks for it again.
fn options() -> WriteOptions {
    WriteOptions::umask().durability(Durability::Deferred)
}

/// Write `bytes` to `dest`, where PostgreSQL asked for the file.
pub(crate) async fn hand_over(dest: &Path, bytes: Vec<u8>) -> Result<(), RestoreError> {
    atomic::write_async(dest.to_path_buf(), bytes, options())
        .await
        .map_err(|e| RestoreError::io(dest, e.source))
}

/// [`hand_over`], from a blocking thread.
pub(crate) fn hand_over_blocking(dest: &Path, bytes: &[u8]) -> Result<(), RestoreError> {
    atomic::write(dest, bytes, options())
        .map_err(|e| RestoreError::io(PathBuf::from(dest), e.source))
}
