//! A storage wrapper that misbehaves on purpose.
//!
//! Rules are checked in the order they were added, on every call, after the call is counted:
//! the first failure rule that matches decides the answer and the inner backend is not called
//! (a failed put stores nothing, as a refused request does). Truncation and delays combine with
//! whatever else happens. Puts are `put_stream` and `put_bytes`; gets are `get_stream` and
//! `get_range`; each has its own count, starting at 1.

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use storage::{Durability, ObjectMeta, ObjectReader, PutMode, Storage, StorageError};
use tokio::io::AsyncReadExt;

/// A kind of call, for choosing which calls a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Put,
    Get,
    Head,
    List,
    Delete,
    Sync,
}

impl Op {
    const ALL: [Op; 6] = [Op::Put, Op::Get, Op::Head, Op::List, Op::Delete, Op::Sync];

    fn index(self) -> usize {
        self as usize
    }

    /// The request name the S3 backend uses in its errors.
    fn request(self) -> &'static str {
        match self {
            Op::Put => "PUT",
            Op::Get => "GET",
            Op::Head => "HEAD",
            Op::List => "LIST",
            Op::Delete => "DELETE",
            Op::Sync => "SYNC",
        }
    }
}

/// The error an injected failure returns; built fresh for every call with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `StorageError::Transient`: retryable (a timeout, a 5xx).
    Transient,
    /// `StorageError::Rejected`: permanent (access denied, a bad request).
    Rejected,
    /// `StorageError::Io` of this kind (retryable when the kind is `Interrupted`, `TimedOut` or
    /// `WouldBlock`).
    Io(std::io::ErrorKind),
    /// `StorageError::NotFound`: the object vanished.
    NotFound,
    /// `StorageError::Unavailable`: the repository as a whole is unusable.
    Unavailable,
}

impl Fault {
    /// The error this fault returns for `op` on `key`.
    pub fn error(&self, op: Op, key: &str) -> StorageError {
        let operation = op.request();
        let key = key.to_string();
        match self {
            Fault::Transient => StorageError::Transient {
                operation,
                key,
                reason: "injected transient failure".into(),
            },
            Fault::Rejected => StorageError::Rejected {
                operation,
                key,
                reason: "injected permanent failure".into(),
            },
            Fault::Io(kind) => StorageError::Io {
                path: key.into(),
                source: std::io::Error::new(*kind, "injected I/O failure"),
            },
            Fault::NotFound => StorageError::NotFound { key },
            Fault::Unavailable => StorageError::Unavailable {
                path: key.into(),
                reason: "injected: the repository is unavailable".into(),
            },
        }
    }
}

/// Which calls of an `Op` a rule matches.
#[derive(Debug, Clone)]
enum Which {
    /// The Nth call (1-based).
    Nth(u64),
    /// Every call whose key starts with this (list: whose prefix does).
    Prefix(String),
}

impl Which {
    fn matches(&self, count: u64, key: &str) -> bool {
        match self {
            Which::Nth(n) => count == *n,
            Which::Prefix(prefix) => key.starts_with(prefix.as_str()),
        }
    }
}

#[derive(Debug)]
struct FailRule {
    op: Op,
    which: Which,
    fault: Fault,
}

/// Configures a [`Faulty`].
#[derive(Debug)]
pub struct FaultyBuilder<S> {
    inner: S,
    fails: Vec<FailRule>,
    truncate: Vec<(String, u64)>,
    delay: Vec<(Option<Op>, Duration)>,
    throttle: u64,
}

impl<S: Storage> FaultyBuilder<S> {
    fn fail(mut self, op: Op, which: Which, fault: Fault) -> Self {
        self.fails.push(FailRule { op, which, fault });
        self
    }

    /// Fail the `n`th put (1-based) with `fault`.
    pub fn fail_nth_put(self, n: u64, fault: Fault) -> Self {
        self.fail(Op::Put, Which::Nth(n), fault)
    }

    /// Fail the `n`th get (1-based) with `fault`.
    pub fn fail_nth_get(self, n: u64, fault: Fault) -> Self {
        self.fail(Op::Get, Which::Nth(n), fault)
    }

    /// Fail every put of a key under `prefix` with `fault`.
    pub fn fail_puts_under(self, prefix: &str, fault: Fault) -> Self {
        self.fail(Op::Put, Which::Prefix(prefix.to_string()), fault)
    }

    /// Fail every get of a key under `prefix` with `fault`.
    pub fn fail_gets_under(self, prefix: &str, fault: Fault) -> Self {
        self.fail(Op::Get, Which::Prefix(prefix.to_string()), fault)
    }

    /// Fail the `n`th call of `op` (1-based) with `fault`.
    pub fn fail_nth(self, op: Op, n: u64, fault: Fault) -> Self {
        self.fail(op, Which::Nth(n), fault)
    }

    /// Fail every call of `op` on a key under `prefix` with `fault`.
    pub fn fail_under(self, op: Op, prefix: &str, fault: Fault) -> Self {
        self.fail(op, Which::Prefix(prefix.to_string()), fault)
    }

    /// Objects under `prefix` read as if only their first `keep` bytes were stored (`get_range`
    /// is clamped to them, `get_stream` ends after them); `head` still reports the full size,
    /// as when a transfer is cut short.
    pub fn truncate_gets_under(mut self, prefix: &str, keep: u64) -> Self {
        self.truncate.push((prefix.to_string(), keep));
        self
    }

    /// Sleep `delay` before every call.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay.push((None, delay));
        self
    }

    /// Sleep `delay` before every call of `op`.
    pub fn delay_op(mut self, op: Op, delay: Duration) -> Self {
        self.delay.push((Some(op), delay));
        self
    }

    /// Answer the next `times` calls, of any kind, as a throttled S3 does (`503 SlowDown`):
    /// with the retryable `StorageError::Transient` the S3 backend maps throttling to.
    pub fn throttle(mut self, times: u64) -> Self {
        self.throttle += times;
        self
    }

    pub fn build(self) -> Faulty<S> {
        Faulty {
            inner: self.inner,
            fails: self.fails,
            truncate: self.truncate,
            delay: self.delay,
            throttle: Mutex::new(self.throttle),
            calls: Default::default(),
            injected: AtomicU64::new(0),
        }
    }
}

/// A [`Storage`] that passes calls to `S` except where a configured fault applies.
#[derive(Debug)]
pub struct Faulty<S> {
    inner: S,
    fails: Vec<FailRule>,
    truncate: Vec<(String, u64)>,
    delay: Vec<(Option<Op>, Duration)>,
    throttle: Mutex<u64>,
    calls: [AtomicU64; Op::ALL.len()],
    injected: AtomicU64,
}

impl<S: Storage> Faulty<S> {
    pub fn builder(inner: S) -> FaultyBuilder<S> {
        FaultyBuilder {
            inner,
            fails: Vec::new(),
            truncate: Vec::new(),
            delay: Vec::new(),
            throttle: 0,
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Calls of `op` so far, failed ones included.
    pub fn calls(&self, op: Op) -> u64 {
        self.calls[op.index()].load(Ordering::SeqCst)
    }

    /// Calls answered with an injected error (failures and throttling) so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Count the call, sleep if asked, and return the injected error if one applies.
    async fn enter(&self, op: Op, key: &str) -> Result<(), StorageError> {
        let count = self.calls[op.index()].fetch_add(1, Ordering::SeqCst) + 1;
        for (only, delay) in &self.delay {
            if only.is_none_or(|o| o == op) {
                tokio::time::sleep(*delay).await;
            }
        }
        let throttled = {
            let mut left = self
                .throttle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let throttled = *left > 0;
            *left = left.saturating_sub(1);
            throttled
        };
        let error = if throttled {
            Some(slow_down(op, key))
        } else {
            self.fails
                .iter()
                .find(|rule| rule.op == op && rule.which.matches(count, key))
                .map(|rule| rule.fault.error(op, key))
        };
        match error {
            Some(error) => {
                self.injected.fetch_add(1, Ordering::SeqCst);
                Err(error)
            }
            None => Ok(()),
        }
    }

    fn kept(&self, key: &str) -> Option<u64> {
        self.truncate
            .iter()
            .filter(|(prefix, _)| key.starts_with(prefix.as_str()))
            .map(|(_, keep)| *keep)
            .min()
    }
}

/// What the S3 backend returns for `503 SlowDown` (its `classify_service` wording).
fn slow_down(op: Op, key: &str) -> StorageError {
    StorageError::Transient {
        operation: op.request(),
        key: key.to_string(),
        reason: "HTTP 503 SlowDown: Please reduce your request rate.".into(),
    }
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl<S: Storage> Storage for Faulty<S> {
    async fn put_stream(
        &self,
        key: &str,
        payload: ObjectReader,
        mode: PutMode,
        durability: Durability,
    ) -> Result<(), StorageError> {
        self.enter(Op::Put, key).await?;
        self.inner.put_stream(key, payload, mode, durability).await
    }

    async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        mode: PutMode,
        durability: Durability,
    ) -> Result<(), StorageError> {
        self.enter(Op::Put, key).await?;
        self.inner.put_bytes(key, bytes, mode, durability).await
    }

    async fn get_stream(&self, key: &str) -> Result<ObjectReader, StorageError> {
        self.enter(Op::Get, key).await?;
        let reader = self.inner.get_stream(key).await?;
        Ok(match self.kept(key) {
            Some(keep) => Box::new(reader.take(keep)),
            None => reader,
        })
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StorageError> {
        self.enter(Op::Get, key).await?;
        let range = match self.kept(key) {
            Some(keep) => range.start.min(keep)..range.end.min(keep),
            None => range,
        };
        self.inner.get_range(key, range).await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        self.enter(Op::Head, key).await?;
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        self.enter(Op::List, prefix).await?;
        self.inner.list(prefix).await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        self.enter(Op::Delete, key).await?;
        self.inner.delete(key).await
    }

    /// One call, counted once, checked against the first key (the whole batch fails together,
    /// as one request does).
    async fn delete_many(&self, keys: &[String]) -> Result<(), StorageError> {
        let first = keys.first().map_or("", String::as_str);
        self.enter(Op::Delete, first).await?;
        self.inner.delete_many(keys).await
    }

    async fn sync(&self) -> Result<(), StorageError> {
        self.enter(Op::Sync, "").await?;
        self.inner.sync().await
    }

    async fn sync_object(&self, key: &str) -> Result<(), StorageError> {
        self.enter(Op::Sync, key).await?;
        self.inner.sync_object(key).await
    }

    fn describe(&self) -> String {
        format!("faulty({})", self.inner.describe())
    }

    fn chunk_ids(&self) -> storage::ChunkIds {
        self.inner.chunk_ids()
    }
}
