//! Redis as failover and verify-recovery see it: an address for the reports and a count of
//! its keys. The binary supplies the count (the archiver's Redis client), as it does for the
//! restore crate's load check: ops and archiver stay apart.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::OpsError;

/// Keys per database number as the server counts them now, or the client's words why not. It
/// blocks (a TCP exchange): ops calls it off the async threads.
pub type CountKeys = dyn Fn() -> Result<BTreeMap<u32, u64>, String> + Send + Sync;

#[derive(Clone)]
pub struct Redis {
    pub host: String,
    pub port: u16,
    pub count_keys: Arc<CountKeys>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// `Redis host:port`, as the reports name it.
    pub fn node(&self) -> String {
        format!("Redis {}:{}", self.host, self.port)
    }

    /// Keys per database; an error when Redis does not answer or is still loading its data.
    pub async fn keys(&self) -> Result<BTreeMap<u32, u64>, OpsError> {
        let count = self.count_keys.clone();
        tokio::task::spawn_blocking(move || count())
            .await?
            .map_err(OpsError::Redis)
    }

    /// All keys, of every database.
    pub async fn total_keys(&self) -> Result<u64, OpsError> {
        Ok(self.keys().await?.values().sum())
    }
}
