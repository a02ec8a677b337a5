//! The test doubles do what tests rely on them to do.

use std::time::{Duration, Instant};

use storage::{Durability, PutMode, Storage, StorageError, StorageExt};
use testing::{Fault, Faulty, MemoryStorage, Op};

const IMMEDIATE: Durability = Durability::Immediate;

async fn put(store: &dyn Storage, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
    store
        .put_bytes(key, bytes.to_vec(), PutMode::Create, IMMEDIATE)
        .await
}

#[tokio::test]
async fn the_nth_put_fails_and_stores_nothing() {
    let memory = MemoryStorage::new();
    let store = Faulty::builder(memory.clone())
        .fail_nth_put(2, Fault::Transient)
        .fail_nth_put(3, Fault::Rejected)
        .build();
    put(&store, "a", b"1").await.expect("first put");
    let err = put(&store, "b", b"2").await.expect_err("second put");
    assert!(err.is_retryable(), "{err}");
    let err = put(&store, "c", b"3").await.expect_err("third put");
    assert!(matches!(err, StorageError::Rejected { .. }) && !err.is_retryable());
    put(&store, "d", b"4").await.expect("fourth put");
    assert_eq!(memory.keys(), ["a", "d"]);
    assert_eq!((store.calls(Op::Put), store.injected()), (4, 2));
}

#[tokio::test]
async fn gets_under_a_prefix_fail_and_others_pass() {
    let memory = MemoryStorage::new();
    memory.set_object("packs/p1", b"pack".to_vec());
    memory.set_object("wal/w1", b"wal".to_vec());
    let store = Faulty::builder(memory)
        .fail_gets_under("packs/", Fault::Io(std::io::ErrorKind::TimedOut))
        .fail_nth(Op::Head, 1, Fault::NotFound)
        .build();
    assert!(store.get_bytes("packs/p1").await.is_err());
    assert!(store.get_range("packs/p1", 0..2).await.is_err());
    assert_eq!(store.get_bytes("wal/w1").await.expect("wal"), b"wal");
    assert!(!store.exists("wal/w1").await.expect("first head: injected"));
    assert!(store.exists("wal/w1").await.expect("second head"));
}

#[tokio::test]
async fn truncated_reads_end_early_but_head_tells_the_full_size() {
    let memory = MemoryStorage::new();
    memory.set_object("packs/p1", b"0123456789".to_vec());
    let store = Faulty::builder(memory)
        .truncate_gets_under("packs/", 4)
        .build();
    assert_eq!(store.get_bytes("packs/p1").await.expect("get"), b"0123");
    assert_eq!(
        store.get_range("packs/p1", 2..8).await.expect("range"),
        b"23"
    );
    assert!(
        store
            .get_range("packs/p1", 6..8)
            .await
            .expect("past")
            .is_empty()
    );
    assert_eq!(store.head("packs/p1").await.expect("head").size, 10);
}

#[tokio::test]
async fn throttling_answers_like_a_throttled_s3_then_passes() {
    let store = Faulty::builder(MemoryStorage::new()).throttle(2).build();
    for _ in 0..2 {
        let err = put(&store, "k", b"v").await.expect_err("throttled");
        assert!(err.is_retryable(), "{err}");
        assert!(err.to_string().contains("503 SlowDown"), "{err}");
    }
    put(&store, "k", b"v").await.expect("no longer throttled");
}

#[tokio::test]
async fn delays_apply_to_every_call() {
    let store = Faulty::builder(MemoryStorage::new())
        .delay(Duration::from_millis(30))
        .build();
    let started = Instant::now();
    put(&store, "k", b"v").await.expect("put");
    assert!(started.elapsed() >= Duration::from_millis(30));
}

#[tokio::test]
async fn a_crash_loses_unsynced_deferred_puts_only() {
    let store = MemoryStorage::new();
    put(&store, "kept", b"old").await.expect("put");
    for key in ["kept", "new"] {
        store
            .put_bytes(
                key,
                b"deferred".to_vec(),
                PutMode::Overwrite,
                Durability::Deferred,
            )
            .await
            .expect("deferred put");
    }
    store
        .put_bytes(
            "synced",
            b"s".to_vec(),
            PutMode::Create,
            Durability::Deferred,
        )
        .await
        .expect("deferred put");
    assert_eq!(store.unsynced().len(), 3);
    store.crash();
    assert_eq!(store.keys(), ["kept"]);
    assert_eq!(store.object("kept").expect("kept"), b"old");

    store
        .put_bytes(
            "synced",
            b"s".to_vec(),
            PutMode::Create,
            Durability::Deferred,
        )
        .await
        .expect("deferred put");
    store.sync().await.expect("sync");
    store.crash();
    assert_eq!(store.keys(), ["kept", "synced"]);
}
