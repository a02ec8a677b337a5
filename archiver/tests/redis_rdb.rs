//! RDB snapshots from a real redis-server, in both framings, loaded back into another one.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use archiver::{RedisOptions, open_rdb};

struct Redis {
    port: u16,
    password: Option<String>,
    child: Child,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Redis {
    /// A redis-server on loopback whose data directory is `dir` (loading `dump.rdb` if there).
    fn start(dir: &Path, password: Option<&str>) -> Redis {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(dir)
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--enable-debug-command",
                "yes",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some(password) = password {
            cmd.args(["--requirepass", password]);
        }
        let redis = Redis {
            port,
            password: password.map(str::to_string),
            child: cmd
                .spawn()
                .expect("start redis-server (apt-get install redis-server)"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while redis.cli(&["PING"]) != "PONG" {
            assert!(Instant::now() < deadline, "redis-server never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
        redis
    }

    fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(password) = &self.password {
            cmd.env("REDISCLI_AUTH", password);
        }
        let out = cmd.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn options(&self) -> RedisOptions {
        RedisOptions {
            host: "127.0.0.1".into(),
            port: self.port,
            password: self.password.clone(),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn populate(redis: &Redis) {
    redis.cli(&["DEBUG", "POPULATE", "20000", "key", "100"]);
    redis.cli(&["HSET", "session:1", "user", "ada", "ttl", "3600"]);
    redis.cli(&["RPUSH", "queue:mail", "a", "b", "c"]);
    redis.cli(&["SADD", "tags", "x", "y"]);
    redis.cli(&["ZADD", "board", "1", "one", "2", "two"]);
    redis.cli(&["SET", "expiring", "soon", "EX", "3600"]);
    redis.cli(&["-n", "3", "SET", "other-db", "value"]);
}

fn round_trip(diskless: bool, password: Option<&str>) {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let source = Redis::start(source_dir.path(), password);
    populate(&source);
    source.cli(&[
        "CONFIG",
        "SET",
        "repl-diskless-sync",
        if diskless { "yes" } else { "no" },
    ]);
    source.cli(&["CONFIG", "SET", "repl-diskless-sync-delay", "0"]);

    let (mut reader, facts) = open_rdb(&source.options()).expect("snapshot");
    assert_eq!(facts.diskless, diskless);
    assert_eq!(facts.keys.get(&0), Some(&20005));
    assert_eq!(facts.keys.get(&3), Some(&1));
    let copy_dir = tempfile::tempdir().expect("tempdir");
    let mut file = std::fs::File::create(copy_dir.path().join("dump.rdb")).expect("create");
    std::io::copy(&mut reader, &mut file).expect("copy the snapshot");
    drop(file);

    let copy = Redis::start(copy_dir.path(), None);
    for db in ["0", "3"] {
        assert_eq!(
            copy.cli(&["-n", db, "DBSIZE"]),
            source.cli(&["-n", db, "DBSIZE"]),
            "db {db}"
        );
    }
    // DEBUG DIGEST covers every key, value and expiry of every database.
    assert_eq!(
        copy.cli(&["DEBUG", "DIGEST"]),
        source.cli(&["DEBUG", "DIGEST"])
    );
    assert_eq!(copy.cli(&["HGET", "session:1", "user"]), "ada");
}

#[test]
fn disk_based_snapshot_loads_into_another_server() {
    round_trip(false, None);
}

#[test]
fn diskless_snapshot_loads_into_another_server() {
    round_trip(true, None);
}

#[test]
fn a_password_protected_server() {
    round_trip(true, Some("s3cret-redis-pass"));
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = Redis::start(dir.path(), Some("s3cret-redis-pass"));
    let mut wrong = redis.options();
    wrong.password = Some("wrong".into());
    let err = open_rdb(&wrong).err().expect("wrong password refused");
    assert!(err.to_string().contains("REDIS_PASSWORD"), "{err}");
    assert!(!err.to_string().contains("wrong"), "{err}");
    wrong.password = None;
    let err = open_rdb(&wrong).err().expect("no password refused");
    assert!(err.to_string().contains("REDIS_PASSWORD"), "{err}");
}
