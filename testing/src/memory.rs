//! A repository in memory.
//!
//! Every object is kept whole in a map behind one lock, so a put is atomic by construction: a
//! reader sees the previous object or the new one. Deferred puts are also remembered as
//! unsynced until [`Storage::sync`]; [`MemoryStorage::crash`] drops them, which is what a crash
//! of a real backend may do, so tests can check that nothing depends on an unsynced object.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;
use storage::{Durability, ObjectMeta, ObjectReader, PutMode, Storage, StorageError, validate_key};
use tokio::io::AsyncReadExt;

#[derive(Debug, Clone)]
struct Object {
    bytes: Arc<Vec<u8>>,
    last_modified: SystemTime,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Object>,
    /// Keys whose latest put was `Deferred` and not yet synced, with what they replaced.
    unsynced: BTreeMap<String, Option<Object>>,
}

/// An in-memory [`Storage`]. Clones share the same objects.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    state: Arc<Mutex<State>>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already; its data is whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every key stored, in lexical order.
    pub fn keys(&self) -> Vec<String> {
        self.state().objects.keys().cloned().collect()
    }

    /// The stored bytes of `key`, read without going through the trait (no faults apply).
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        self.state()
            .objects
            .get(key)
            .map(|o| o.bytes.as_ref().clone())
    }

    /// Replace the stored bytes of `key` behind the trait's back, as bit rot or an operator
    /// would (the key need not exist).
    pub fn set_object(&self, key: &str, bytes: Vec<u8>) {
        self.state().objects.insert(
            key.to_string(),
            Object {
                bytes: Arc::new(bytes),
                last_modified: SystemTime::now(),
            },
        );
    }

    /// Make the objects under `prefix` look `age` older, as a test cannot wait for them to age.
    pub fn backdate(&self, prefix: &str, age: std::time::Duration) {
        for (_, object) in self
            .state()
            .objects
            .iter_mut()
            .filter(|(key, _)| key.starts_with(prefix))
        {
            object.last_modified -= age;
        }
    }

    /// Keys put with `Durability::Deferred` and not synced since.
    pub fn unsynced(&self) -> BTreeSet<String> {
        self.state().unsynced.keys().cloned().collect()
    }

    /// Lose every deferred put not yet synced, as a crash may: each such key goes back to
    /// what it held before (or to nothing).
    pub fn crash(&self) {
        let mut state = self.state();
        let unsynced = std::mem::take(&mut state.unsynced);
        for (key, before) in unsynced {
            match before {
                Some(object) => state.objects.insert(key, object),
                None => state.objects.remove(&key),
            };
        }
    }

    fn store(
        &self,
        key: &str,
        bytes: Vec<u8>,
        mode: PutMode,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let object = Object {
            bytes: Arc::new(bytes),
            last_modified: SystemTime::now(),
        };
        let mut state = self.state();
        if mode == PutMode::Create && state.objects.contains_key(key) {
            return Err(StorageError::AlreadyExists {
                key: key.to_string(),
            });
        }
        let before = state.objects.insert(key.to_string(), object);
        match durability {
            Durability::Immediate => {
                state.unsynced.remove(key);
            }
            Durability::Deferred => {
                // A second deferred put of the same key still rolls back to the durable one.
                state.unsynced.entry(key.to_string()).or_insert(before);
            }
        }
        Ok(())
    }

    fn read(&self, key: &str) -> Result<Arc<Vec<u8>>, StorageError> {
        validate_key(key)?;
        self.state()
            .objects
            .get(key)
            .map(|o| Arc::clone(&o.bytes))
            .ok_or_else(|| StorageError::NotFound {
                key: key.to_string(),
            })
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl Storage for MemoryStorage {
    async fn put_stream(
        &self,
        key: &str,
        mut payload: ObjectReader,
        mode: PutMode,
        durability: Durability,
    ) -> Result<(), StorageError> {
        validate_key(key)?;
        let mut bytes = Vec::new();
        payload
            .read_to_end(&mut bytes)
            .await
            .map_err(|source| StorageError::Io {
                path: key.into(),
                source,
            })?;
        self.store(key, bytes, mode, durability)
    }

    async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        mode: PutMode,
        durability: Durability,
    ) -> Result<(), StorageError> {
        validate_key(key)?;
        self.store(key, bytes, mode, durability)
    }

    async fn get_stream(&self, key: &str) -> Result<ObjectReader, StorageError> {
        let bytes = self.read(key)?;
        Ok(Box::new(std::io::Cursor::new(bytes.as_ref().clone())))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StorageError> {
        let bytes = self.read(key)?;
        let len = bytes.len();
        let clamp = |at: u64| usize::try_from(at).unwrap_or(usize::MAX).min(len);
        let (start, end) = (clamp(range.start), clamp(range.end));
        Ok(bytes.get(start..end).unwrap_or_default().to_vec())
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        validate_key(key)?;
        let state = self.state();
        let object = state
            .objects
            .get(key)
            .ok_or_else(|| StorageError::NotFound {
                key: key.to_string(),
            })?;
        Ok(meta(key, object))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let state = self.state();
        Ok(state
            .objects
            .range(prefix.to_string()..)
            .take_while(|(key, _)| key.starts_with(prefix))
            .map(|(key, object)| meta(key, object))
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        let mut state = self.state();
        state.objects.remove(key);
        state.unsynced.remove(key);
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        for key in keys {
            validate_key(key)?;
        }
        let mut state = self.state();
        for key in keys {
            state.objects.remove(key);
            state.unsynced.remove(key);
        }
        Ok(())
    }

    async fn sync(&self) -> Result<(), StorageError> {
        self.state().unsynced.clear();
        Ok(())
    }

    async fn sync_object(&self, key: &str) -> Result<(), StorageError> {
        self.state().unsynced.remove(key);
        Ok(())
    }

    fn describe(&self) -> String {
        "memory://".to_string()
    }

    fn chunk_ids(&self) -> storage::ChunkIds {
        storage::ChunkIds::plain()
    }
}

fn meta(key: &str, object: &Object) -> ObjectMeta {
    ObjectMeta {
        key: key.to_string(),
        size: object.bytes.len() as u64,
        last_modified: object.last_modified,
    }
}
