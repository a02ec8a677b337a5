//! The S3 backend against a real S3-compatible server (moto_server on loopback).

use std::time::{Duration, Instant};

use storage::conformance::{MotoServer, check_backend, pattern};
use storage::retry::RetryPolicy;
use storage::{Durability, PutMode, S3Options, S3Storage, Storage, StorageError, StorageExt};
use testing::SlowDownProxy;

fn options(server: &MotoServer, location: &str) -> S3Options {
    let mut opts = S3Options::for_location(location).expect("location");
    opts.endpoint = Some(server.endpoint());
    opts.region = Some("us-east-1".into());
    opts.path_style = true;
    opts.credentials = Some(storage::StaticCredentials {
        access_key_id: "lifeline-test".into(),
        secret_access_key: "lifeline-test-secret".into(),
    });
    opts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_keeps_the_backend_contract_with_and_without_a_prefix() {
    let server = MotoServer::start();
    server.create_bucket("contract");
    for location in ["contract/some/prefix", "contract"] {
        let store = S3Storage::open(options(&server, location))
            .await
            .expect("open");
        check_backend(&store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_stream_as_multipart_uploads() {
    let server = MotoServer::start();
    server.create_bucket("multipart");
    let mut opts = options(&server, "multipart/repo");
    opts.part_size = storage::MIN_PART_SIZE;
    opts.single_put_max = storage::MIN_PART_SIZE;
    opts.parallelism = 2;
    let store = S3Storage::open(opts).await.expect("open");
    // Four full parts and a short last one.
    let data = pattern(4 * storage::MIN_PART_SIZE + 12345, 9);
    let reader: storage::ObjectReader = Box::new(std::io::Cursor::new(data.clone()));
    store
        .put_stream("big/object", reader, PutMode::Create, Durability::Immediate)
        .await
        .expect("multipart put");
    assert_eq!(
        store.head("big/object").await.expect("head").size,
        data.len() as u64
    );
    let back = store.get_bytes("big/object").await.expect("get");
    assert!(
        back == data,
        "multipart object differs from what was uploaded"
    );
    let middle = 2 * storage::MIN_PART_SIZE as u64 - 10;
    assert_eq!(
        store
            .get_range("big/object", middle..middle + 20)
            .await
            .expect("range"),
        data[middle as usize..middle as usize + 20]
    );
    // Bytes already in memory take the same path when they are large.
    store
        .put_bytes(
            "big/bytes",
            data.clone(),
            PutMode::Overwrite,
            Durability::Immediate,
        )
        .await
        .expect("multipart put_bytes");
    assert!(store.get_bytes("big/bytes").await.expect("get") == data);
}

/// Put `data` as `key` into `store` and return the encryption the store reports for it.
async fn put_and_report(store: &S3Storage, key: &str, data: Vec<u8>) -> Option<String> {
    store
        .put_bytes(key, data, PutMode::Create, Durability::Immediate)
        .await
        .expect("put");
    store.reported_encryption(key).await.expect("head")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_encryption_is_asked_for_on_every_put_and_multipart_upload() {
    let server = MotoServer::start();
    server.create_bucket("sse");
    let open = |location: &str, sse: Option<storage::ServerSideEncryption>| {
        let mut opts = options(&server, location);
        opts.part_size = storage::MIN_PART_SIZE;
        opts.single_put_max = storage::MIN_PART_SIZE;
        opts.sse = sse;
        S3Storage::open(opts)
    };
    let store = open("sse/repo", Some(storage::ServerSideEncryption::Aes256))
        .await
        .expect("open");
    let small = put_and_report(&store, "small", b"abc".to_vec()).await;
    assert_eq!(small.as_deref(), Some("AES256"));
    // Above single_put_max: a multipart upload.
    let big = pattern(2 * storage::MIN_PART_SIZE + 1, 3);
    let reported = put_and_report(&store, "big", big.clone()).await;
    assert_eq!(reported.as_deref(), Some("AES256"));
    assert!(store.get_bytes("big").await.expect("get") == big);
    // Without the setting nothing is asked for: the test can tell the difference.
    let plain = open("sse/plain", None).await.expect("open");
    assert_eq!(put_and_report(&plain, "small", b"abc".to_vec()).await, None);
    let kms = storage::ServerSideEncryption::Kms { key_id: None };
    let kms = open("sse/kms", Some(kms)).await.expect("open");
    let reported = put_and_report(&kms, "small", b"abc".to_vec()).await;
    assert_eq!(reported.as_deref(), Some("aws:kms"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_and_counted() {
    let server = MotoServer::start();
    server.create_bucket("throttled");
    // A throttled S3 in front of moto: the SDK parses a real `503 SlowDown` answer and the
    // retry layer sees what it would see from AWS.
    let proxy = SlowDownProxy::start(server.port);
    let mut opts = options(&server, "throttled");
    opts.endpoint = Some(proxy.endpoint());
    opts.retry = RetryPolicy {
        min_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        ..RetryPolicy::default()
    };
    let store = S3Storage::open(opts).await.expect("open");
    proxy.throttle_next(3);
    store
        .put_bytes(
            "k",
            b"value".to_vec(),
            PutMode::Create,
            Durability::Immediate,
        )
        .await
        .expect("the put succeeds once throttling passes");
    assert_eq!(proxy.throttled(), 3);
    assert_eq!(
        store.retry_stats().retries(),
        3,
        "three 503 SlowDown answers, three retries"
    );
    assert_eq!(store.get_bytes("k").await.expect("get"), b"value");
    assert_eq!(
        store.retry_stats().retries(),
        3,
        "no retry without a failure"
    );
    assert_eq!(store.retry_stats().gave_up(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_fails_clearly_within_the_deadline() {
    let mut server = MotoServer::start();
    server.create_bucket("down");
    let mut opts = options(&server, "down");
    opts.retry = RetryPolicy {
        min_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        deadline: Duration::from_secs(2),
        ..RetryPolicy::default()
    };
    let store = S3Storage::open(opts).await.expect("open");
    server.stop();
    let started = Instant::now();
    let err = store
        .put_bytes(
            "k",
            b"value".to_vec(),
            PutMode::Create,
            Durability::Immediate,
        )
        .await
        .expect_err("no server, no put");
    assert!(matches!(err, StorageError::Transient { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("gave up after"), "{message}");
    assert!(!message.contains("lifeline-test-secret"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(store.retry_stats().retries() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_with_a_private_certificate_authority() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = storage::conformance::make_certificates(dir.path());
    let server = MotoServer::start_tls(&cert, &key);
    server.create_bucket("private-ca");

    // Without the CA the certificate is refused, at once: retrying cannot help.
    let store = S3Storage::open(options(&server, "private-ca"))
        .await
        .expect("open");
    let err = store.head("k").await.expect_err("untrusted certificate");
    assert!(matches!(err, StorageError::Rejected { .. }), "{err}");
    assert!(err.to_string().contains("AWS_CA_BUNDLE"), "{err}");
    assert_eq!(store.retry_stats().retries(), 0);

    let mut opts = options(&server, "private-ca");
    opts.ca_bundle = Some(std::fs::read(&ca).expect("ca"));
    let store = S3Storage::open(opts).await.expect("open");
    store
        .put_bytes(
            "k",
            b"over tls".to_vec(),
            PutMode::Create,
            Durability::Immediate,
        )
        .await
        .expect("put over TLS");
    assert_eq!(store.get_bytes("k").await.expect("get"), b"over tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_follows_every_page() {
    let server = MotoServer::start();
    server.create_bucket("many");
    let store = std::sync::Arc::new(
        S3Storage::open(options(&server, "many/p"))
            .await
            .expect("open"),
    );
    // More than one page of 1000 keys.
    let keys: Vec<String> = (0..1100).map(|i| format!("k/{i:05}")).collect();
    let mut puts = tokio::task::JoinSet::new();
    for chunk in keys.chunks(100) {
        let (store, chunk) = (store.clone(), chunk.to_vec());
        puts.spawn(async move {
            for key in chunk {
                store
                    .put_bytes(&key, vec![1], PutMode::Overwrite, Durability::Deferred)
                    .await
                    .expect("put");
            }
        });
    }
    while let Some(done) = puts.join_next().await {
        done.expect("task");
    }
    let listed: Vec<String> = store
        .list("k/")
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(listed, keys);
    store.delete_many(&keys).await.expect("batch delete");
    assert!(store.list("k/").await.expect("list").is_empty());
}

/// Against real S3 when `LIFELINE_TEST_S3_LOCATION` names a scratch BUCKET/PREFIX (credentials
/// and region from the standard AWS sources); skipped otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_s3_keeps_the_backend_contract_when_configured() {
    let Ok(location) = std::env::var("LIFELINE_TEST_S3_LOCATION") else {
        eprintln!("LIFELINE_TEST_S3_LOCATION not set: real S3 not tested");
        return;
    };
    let unique = format!(
        "{}/lifeline-test-{}",
        location.trim_end_matches('/'),
        std::process::id()
    );
    let store = S3Storage::open(S3Options::for_location(&unique).expect("location"))
        .await
        .expect("open");
    check_backend(&store).await;
    let keys: Vec<String> = store
        .list("")
        .await
        .expect("list")
        .into_iter()
        .map(|m| m.key)
        .collect();
    store.delete_many(&keys).await.expect("clean up");
}
