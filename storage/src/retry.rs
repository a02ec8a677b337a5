//! The one retry layer of the remote backends.
//!
//! Every request to object storage goes through [`RetryPolicy::run`]: exponential backoff with
//! jitter, a maximum number of attempts and a total deadline after which no new attempt starts.
//! Only errors that [`StorageError::is_retryable`] calls transient are retried; a refusal
//! (access denied, a precondition, a missing bucket) is returned at once. The SDK's own retries
//! are off, so retries never multiply (PostgreSQL re-runs a failed `archive_command` anyway).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use tracing::warn;

use crate::StorageError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request, the first included.
    pub max_attempts: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// No attempt starts later than this after the first one.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
        }
    }
}

/// What the retry layer did, for tests and for the operator's summary.
#[derive(Debug, Default)]
pub struct RetryStats {
    retries: AtomicU64,
    gave_up: AtomicU64,
}

impl RetryStats {
    /// Attempts that failed transiently and were tried again.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Requests that still failed transiently when attempts or the deadline ran out.
    pub fn gave_up(&self) -> u64 {
        self.gave_up.load(Ordering::Relaxed)
    }
}

impl RetryPolicy {
    /// Run `attempt` until it succeeds, fails permanently, or attempts or time run out.
    pub async fn run<T, F, Fut>(
        &self,
        stats: &RetryStats,
        operation: &'static str,
        key: &str,
        attempt: F,
    ) -> Result<T, StorageError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StorageError>>,
    {
        let started = Instant::now();
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1));
        let deadline = self.deadline;
        let attempts = AtomicU64::new(1);
        let result = attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e: &StorageError| e.is_retryable() && started.elapsed() < deadline)
            .notify(|e: &StorageError, delay: Duration| {
                stats.retries.fetch_add(1, Ordering::Relaxed);
                let attempt = attempts.fetch_add(1, Ordering::Relaxed);
                warn!(
                    "{operation} {key}: attempt {attempt} failed ({e}); retrying in {} ms",
                    delay.as_millis()
                );
            })
            .await;
        match result {
            Err(StorageError::Transient {
                operation,
                key,
                reason,
            }) => {
                stats.gave_up.fetch_add(1, Ordering::Relaxed);
                Err(StorageError::Transient {
                    operation,
                    key,
                    reason: format!(
                        "{reason} (gave up after {} attempts in {:.1} s)",
                        attempts.load(Ordering::Relaxed),
                        started.elapsed().as_secs_f64()
                    ),
                })
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            deadline: Duration::from_secs(10),
        }
    }

    fn transient() -> StorageError {
        StorageError::Transient {
            operation: "GET",
            key: "k".into(),
            reason: "503 SlowDown".into(),
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_and_counted() {
        let stats = RetryStats::default();
        let calls = AtomicU64::new(0);
        let value = quick()
            .run(&stats, "GET", "k", || async {
                if calls.fetch_add(1, Ordering::Relaxed) < 2 {
                    Err(transient())
                } else {
                    Ok(7)
                }
            })
            .await
            .expect("third attempt succeeds");
        assert_eq!(value, 7);
        assert_eq!(stats.retries(), 2);
        assert_eq!(stats.gave_up(), 0);
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let stats = RetryStats::default();
        let calls = AtomicU64::new(0);
        let err = quick()
            .run(&stats, "PUT", "k", || async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err::<(), _>(StorageError::AlreadyExists { key: "k".into() })
            })
            .await
            .expect_err("refused");
        assert!(matches!(err, StorageError::AlreadyExists { .. }));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!(stats.retries(), 0);
    }

    #[tokio::test]
    async fn attempts_run_out_with_a_message_that_says_so() {
        let stats = RetryStats::default();
        let err = quick()
            .run(&stats, "GET", "k", || async { Err::<(), _>(transient()) })
            .await
            .expect_err("never succeeds");
        assert!(
            err.to_string().contains("gave up after 4 attempts"),
            "{err}"
        );
        assert_eq!(stats.retries(), 3);
        assert_eq!(stats.gave_up(), 1);
    }

    #[tokio::test]
    async fn no_attempt_starts_after_the_deadline() {
        let stats = RetryStats::default();
        let policy = RetryPolicy {
            max_attempts: 1000,
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(20),
            deadline: Duration::from_millis(100),
        };
        let calls = AtomicU64::new(0);
        let _ = policy
            .run(&stats, "GET", "k", || async {
                calls.fetch_add(1, Ordering::Relaxed);
                Err::<(), _>(transient())
            })
            .await;
        assert!(calls.load(Ordering::Relaxed) < 20);
    }
}
