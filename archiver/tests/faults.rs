//! `wal push` against a repository that fails the upload (an in-memory repository behind a
//! `Faulty` wrapper): the push fails with the repository's error, transient or permanent, so
//! that PostgreSQL keeps the segment and tries again; nothing is half-stored, and the next
//! attempt archives the segment.

use std::path::{Path, PathBuf};

use archiver::{ArchiveError, PushOutcome, push_wal};
use storage::wal::WalFileName;
use storage::{Compression, StorageError, layout};
use testing::{Fault, Faulty, MemoryStorage};

const SYSTEM_IDENTIFIER: u64 = 7_312_000_000_000_000_001;
const SEGMENT_SIZE: u32 = 1 << 20;
const NAME: &str = "000000010000000000000001";

/// A 1 MiB segment (the smallest PostgreSQL allows) whose first page header matches `NAME`.
fn write_segment(dir: &Path) -> PathBuf {
    let mut segment: Vec<u8> = (0..SEGMENT_SIZE).map(|i| (i % 241) as u8).collect();
    segment[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    segment[2..4].copy_from_slice(&2u16.to_le_bytes()); // XLP_LONG_HEADER
    segment[4..8].copy_from_slice(&1u32.to_le_bytes()); // timeline
    segment[8..16].copy_from_slice(&u64::from(SEGMENT_SIZE).to_le_bytes()); // segment 1
    segment[24..32].copy_from_slice(&SYSTEM_IDENTIFIER.to_le_bytes());
    segment[32..36].copy_from_slice(&SEGMENT_SIZE.to_le_bytes());
    let path = dir.join(NAME);
    std::fs::write(&path, segment).expect("write segment");
    path
}

fn wal_key() -> String {
    let name: WalFileName = NAME.parse().expect("name");
    layout::wal_key(SYSTEM_IDENTIFIER, &name)
}

/// A push whose upload of the segment fails with `fault`: the error reaches the caller and
/// the repository holds no part of the segment.
async fn failed_upload(fault: Fault) -> (ArchiveError, MemoryStorage, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = write_segment(dir.path());
    let memory = MemoryStorage::new();
    let store = Faulty::builder(memory.clone())
        .fail_puts_under(&wal_key(), fault)
        .build();
    let err = push_wal(
        &store,
        &dir.path().join("catalog.db"),
        &segment,
        Compression::default(),
    )
    .await
    .expect_err("a failed upload fails the push");
    assert_eq!(store.injected(), 1, "the segment's upload was attempted");
    assert!(
        memory.keys().iter().all(|k| !k.starts_with("wal/")),
        "something of the segment was stored: {:?}",
        memory.keys()
    );
    assert!(memory.unsynced().is_empty());
    (err, memory, dir)
}

async fn push_again(memory: &MemoryStorage, dir: &Path) -> PushOutcome {
    push_wal(
        memory,
        &dir.join("catalog.db"),
        &dir.join(NAME),
        Compression::default(),
    )
    .await
    .expect("the next attempt archives the segment")
}

#[tokio::test]
async fn a_transient_upload_failure_fails_the_push_and_the_next_attempt_archives() {
    let (err, memory, dir) = failed_upload(Fault::Transient).await;
    assert!(
        matches!(&err, ArchiveError::Storage(e @ StorageError::Transient { .. }) if e.is_retryable()),
        "{err:?}"
    );
    assert!(
        matches!(
            push_again(&memory, dir.path()).await,
            PushOutcome::Archived { .. }
        ),
        "the retry archives the segment"
    );
    assert!(memory.object(&wal_key()).is_some());
}

#[tokio::test]
async fn a_permanent_upload_failure_fails_the_push_with_the_refusal() {
    let (err, memory, dir) = failed_upload(Fault::Rejected).await;
    match &err {
        ArchiveError::Storage(e @ StorageError::Rejected { key, .. }) => {
            assert!(!e.is_retryable());
            assert_eq!(key, &wal_key());
        }
        other => panic!("expected the repository's refusal, got {other:?}"),
    }
    assert!(matches!(
        push_again(&memory, dir.path()).await,
        PushOutcome::Archived { .. }
    ));
}

#[tokio::test]
async fn a_throttled_repository_fails_the_push_as_retryable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = write_segment(dir.path());
    let memory = MemoryStorage::new();
    // More throttling than a push makes calls: nothing gets through.
    let store = Faulty::builder(memory.clone()).throttle(100).build();
    let err = push_wal(
        &store,
        &dir.path().join("catalog.db"),
        &segment,
        Compression::default(),
    )
    .await
    .expect_err("throttled");
    assert!(
        matches!(&err, ArchiveError::Storage(e) if e.is_retryable()),
        "{err:?}"
    );
    assert!(memory.keys().is_empty(), "{:?}", memory.keys());
}
