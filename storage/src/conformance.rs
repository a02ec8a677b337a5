//! The backend contract of [`crate::Storage`] as executable checks. Every backend's tests run
//! [`check_backend`]; a backend that passes keeps the guarantees the archiver and restore rely on.
//! Also [`MotoServer`], an S3-compatible server on loopback for the tests that need one.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::storage::ObjectReader;
use crate::{Durability, PutMode, Storage, StorageError, StorageExt};

fn reader(bytes: Vec<u8>) -> ObjectReader {
    Box::new(std::io::Cursor::new(bytes))
}

/// Deterministic, incompressible-looking bytes.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut state = u64::from(seed) | 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect()
}

/// Run every check against `store`, which must be empty.
pub async fn check_backend(store: &dyn Storage) {
    create_never_replaces(store).await;
    overwrite_replaces(store).await;
    reads(store).await;
    listing(store).await;
    deletes(store).await;
    streamed_puts(store).await;
    bad_keys(store).await;
}

async fn create_never_replaces(store: &dyn Storage) {
    let (create, immediate) = (PutMode::Create, Durability::Immediate);
    store
        .put_bytes("c/one", b"first".to_vec(), create, immediate)
        .await
        .unwrap();
    let err = store
        .put_bytes("c/one", b"second".to_vec(), create, immediate)
        .await
        .expect_err("a second create must fail");
    assert!(
        matches!(err, StorageError::AlreadyExists { .. }),
        "create over an existing object: {err}"
    );
    assert_eq!(store.get_bytes("c/one").await.unwrap(), b"first");
}

async fn overwrite_replaces(store: &dyn Storage) {
    for (bytes, durability) in [
        (b"old".to_vec(), Durability::Immediate),
        (b"newer".to_vec(), Durability::Deferred),
    ] {
        store
            .put_bytes("o/x", bytes, PutMode::Overwrite, durability)
            .await
            .unwrap();
    }
    store.sync().await.unwrap();
    assert_eq!(store.get_bytes("o/x").await.unwrap(), b"newer");
    assert_eq!(store.head("o/x").await.unwrap().size, 5);
}

async fn reads(store: &dyn Storage) {
    let data = pattern(4096, 1);
    store
        .put_bytes(
            "r/data",
            data.clone(),
            PutMode::Create,
            Durability::Immediate,
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_range("r/data", 10..20).await.unwrap(),
        data[10..20]
    );
    assert_eq!(
        store.get_range("r/data", 4000..9000).await.unwrap(),
        data[4000..],
        "a range past the end is clamped"
    );
    assert!(
        store
            .get_range("r/data", 5000..6000)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.get_range("r/data", 7..7).await.unwrap().is_empty());
    for missing in [
        store.get_bytes("r/none").await.map(|_| ()),
        store.get_range("r/none", 0..1).await.map(|_| ()),
        store.head("r/none").await.map(|_| ()),
    ] {
        assert!(
            missing.as_ref().is_err_and(StorageError::is_not_found),
            "{missing:?}"
        );
    }
    assert!(!store.exists("r/none").await.unwrap());
    assert!(store.exists("r/data").await.unwrap());
}

async fn listing(store: &dyn Storage) {
    for key in ["l/b/2", "l/a/1", "l/b/1", "lx/1"] {
        store
            .put_bytes(
                key,
                key.as_bytes().to_vec(),
                PutMode::Overwrite,
                Durability::Deferred,
            )
            .await
            .unwrap();
    }
    store.sync().await.unwrap();
    let keys = |metas: Vec<crate::ObjectMeta>| metas.into_iter().map(|m| m.key).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list("l/").await.unwrap()),
        ["l/a/1", "l/b/1", "l/b/2"],
        "list is lexical and stays under the prefix"
    );
    assert_eq!(keys(store.list("l/b/").await.unwrap()), ["l/b/1", "l/b/2"]);
    assert!(store.list("nothing/").await.unwrap().is_empty());
    let sizes: Vec<u64> = store
        .list("l/a/")
        .await
        .unwrap()
        .iter()
        .map(|m| m.size)
        .collect();
    assert_eq!(sizes, [5]);
}

async fn deletes(store: &dyn Storage) {
    let keys: Vec<String> = (0..5).map(|i| format!("d/{i}")).collect();
    for key in &keys {
        store
            .put_bytes(key, vec![1], PutMode::Overwrite, Durability::Immediate)
            .await
            .unwrap();
    }
    store.delete("d/0").await.unwrap();
    store
        .delete("d/0")
        .await
        .expect("deleting a missing object is fine");
    store.delete_many(&keys).await.unwrap();
    assert!(store.list("d/").await.unwrap().is_empty());
}

async fn streamed_puts(store: &dyn Storage) {
    let data = pattern(300_000, 2);
    store
        .put_stream(
            "s/one",
            reader(data.clone()),
            PutMode::Create,
            Durability::Immediate,
        )
        .await
        .unwrap();
    let err = store
        .put_stream(
            "s/one",
            reader(b"other".to_vec()),
            PutMode::Create,
            Durability::Immediate,
        )
        .await
        .expect_err("a second streamed create must fail");
    assert!(matches!(err, StorageError::AlreadyExists { .. }), "{err}");
    assert_eq!(store.get_bytes("s/one").await.unwrap(), data);
    store
        .put_stream(
            "s/empty",
            reader(Vec::new()),
            PutMode::Create,
            Durability::Immediate,
        )
        .await
        .unwrap();
    assert!(store.get_bytes("s/empty").await.unwrap().is_empty());
}

async fn bad_keys(store: &dyn Storage) {
    for key in ["", "/abs", "a/../b", "a//b", "a b", "trailing/"] {
        let err = store
            .put_bytes(key, vec![1], PutMode::Overwrite, Durability::Immediate)
            .await
            .expect_err("invalid key accepted");
        assert!(
            matches!(err, StorageError::InvalidKey { .. }),
            "{key:?}: {err}"
        );
    }
}

/// `moto_server` (PyPI `moto[server]`) on a free loopback port, stopped on drop.
pub struct MotoServer {
    pub port: u16,
    child: Option<Child>,
    /// `--ssl-cert` and `--ssl-key` when it serves HTTPS.
    tls: Option<(String, String)>,
}

impl MotoServer {
    pub fn start() -> MotoServer {
        Self::start_with(None)
    }

    /// Serve HTTPS with this certificate and key (PEM files).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> MotoServer {
        Self::start_with(Some((
            cert.to_string_lossy().into_owned(),
            key.to_string_lossy().into_owned(),
        )))
    }

    fn start_with(tls: Option<(String, String)>) -> MotoServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        let mut server = MotoServer {
            port,
            child: None,
            tls,
        };
        server.restart();
        server
    }

    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Stop the server (its buckets are lost; tests that restart it stop it only briefly and
    /// run against a bucket they recreate).
    // Test support, run from the test's own thread before or after the code under test: waiting
    // for moto_server, curl or openssl here stalls nothing else.
    #[allow(clippy::disallowed_methods)]
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    // Test support, run from the test's own thread before or after the code under test: waiting
    // for moto_server, curl or openssl here stalls nothing else.
    #[allow(clippy::disallowed_methods)]
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new("moto_server");
        command.args(["-H", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some((cert, key)) = &self.tls {
            command.args(["--ssl-cert", cert, "--ssl-key", key]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server (pip install 'moto[server]')");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server never listened");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Create `bucket` (moto takes unsigned requests).
    // Test support, run from the test's own thread before or after the code under test: waiting
    // for moto_server, curl or openssl here stalls nothing else.
    #[allow(clippy::disallowed_methods)]
    pub fn create_bucket(&self, bucket: &str) {
        use std::io::{Read, Write};
        if self.tls.is_some() {
            let out = Command::new("curl")
                .args([
                    "-sfk",
                    "-X",
                    "PUT",
                    &format!("{}/{bucket}", self.endpoint()),
                ])
                .output()
                .expect("curl");
            assert!(out.status.success(), "create bucket over HTTPS failed");
            return;
        }
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            stream,
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "create bucket: {response}"
        );
    }

    /// The keys in `bucket` under `prefix` (at most 1000; moto takes unsigned requests).
    // Test support, run from the test's own thread: waiting for curl stalls nothing else.
    #[allow(clippy::disallowed_methods)]
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let url = format!("{}/{bucket}?list-type=2&prefix={prefix}", self.endpoint());
        let out = Command::new("curl")
            .args(["-sfk", &url])
            .output()
            .expect("curl");
        assert!(out.status.success(), "list {bucket}/{prefix} failed");
        let body = String::from_utf8_lossy(&out.stdout);
        body.split("<Key>")
            .skip(1)
            .filter_map(|s| s.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private certificate authority and a server certificate it signed for 127.0.0.1, made
/// with `openssl` in `dir`: (CA certificate, server certificate, server key), all PEM.
// Test support, run from the test's own thread before or after the code under test: waiting
// for moto_server, curl or openssl here stalls nothing else.
#[allow(clippy::disallowed_methods)]
pub fn make_certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let path = |name: &str| dir.join(name);
    std::fs::write(
        path("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=lifeline test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ]);
    (path("ca.pem"), path("server.pem"), path("server.key"))
}
