//! The backend contract.
//!
//! Contract every backend keeps:
//! - A put is atomic: a reader sees the whole object or nothing, never a prefix.
//! - [`PutMode::Create`] never replaces an existing object; it fails with
//!   [`StorageError::AlreadyExists`] and leaves the existing object untouched. WAL is written
//!   this way so that nothing archived can be overwritten.
//! - [`Durability::Immediate`] puts are durable when they return. [`Durability::Deferred`] puts
//!   are durable once [`Storage::sync`] returns; until then a crash may lose them (never expose
//!   a torn object under its final key). Chunks are written deferred and synced once before the
//!   manifest that references them, which is what makes a backup of thousands of chunks fast.
//! - `list` returns every key under a prefix that was completely put before the call started.

use std::ops::Range;
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::io::AsyncRead;

use crate::StorageError;

/// Names that local puts use while writing; never a key.
pub(crate) const TEMP_PREFIX: &str = ".tmp.";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there (chunks: same key means same content).
    Overwrite,
    /// Fail with `AlreadyExists` if the key is taken.
    Create,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Immediate,
    Deferred,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
    pub last_modified: SystemTime,
}

pub type ObjectReader = Box<dyn AsyncRead + Send + Unpin>;

#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Store the bytes read from `payload` under `key`, streaming (never the whole object in memory).
    async fn put_stream(
        &self,
        key: &str,
        payload: ObjectReader,
        mode: PutMode,
        durability: Durability,
    ) -> Result<(), StorageError>;

    /// Store `bytes` under `key` (objects already in memory: WAL segments, packs, manifests).
    async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        mode: PutMode,
        durability: Durability,
    ) -> Result<(), StorageError>;

    /// A reader over the whole object.
    async fn get_stream(&self, key: &str) -> Result<ObjectReader, StorageError>;

    /// The bytes of `range` (clamped to the object's end).
    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StorageError>;

    /// The object's metadata, or `NotFound`.
    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError>;

    /// Every key below `prefix`, in lexical order.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError>;

    /// Remove the object; removing a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;

    /// Remove many objects (backends with batch deletes send one request per batch).
    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        for key in keys {
            self.delete(key).await?;
        }
        Ok(())
    }

    /// Make every earlier `Deferred` put durable.
    async fn sync(&self) -> Result<(), StorageError>;

    /// Make the existing object `key` durable, whoever wrote it: another process may have
    /// made it visible and not yet flushed it, and success must not be reported on it before.
    async fn sync_object(&self, key: &str) -> Result<(), StorageError>;

    /// Where the repository is, for messages (never carries credentials).
    fn describe(&self) -> String;

    /// How this repository names chunks and packs (keyed when it is encrypted).
    fn chunk_ids(&self) -> crate::ChunkIds {
        crate::ChunkIds::plain()
    }
}

/// Conveniences over the required core, implemented for every backend.
#[async_trait]
pub trait StorageExt: Storage {
    async fn get_bytes(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        use tokio::io::AsyncReadExt;
        let mut reader = self.get_stream(key).await?;
        let mut bytes = Vec::new();
        reader
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| StorageError::io(key, e))?;
        Ok(bytes)
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl<T: Storage + ?Sized> StorageExt for T {}

/// Keys are relative paths of plain ASCII names, so that every backend can hold them and none
/// can escape the repository. Every backend (and every test double) applies this one rule.
pub fn validate_key(key: &str) -> Result<(), StorageError> {
    let invalid = |reason: &str| StorageError::InvalidKey {
        key: key.to_string(),
        reason: reason.to_string(),
    };
    if key.is_empty() || key.starts_with('/') || key.ends_with('/') {
        return Err(invalid(
            "keys are relative paths with no leading or trailing '/'",
        ));
    }
    for part in key.split('/') {
        if part.is_empty() || part == "." || part == ".." || part.starts_with(TEMP_PREFIX) {
            return Err(invalid("empty, '.', '..' or temporary path component"));
        }
        if !part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(invalid(
                "only ASCII letters, digits, '.', '_' and '-' are allowed",
            ));
        }
    }
    Ok(())
}
