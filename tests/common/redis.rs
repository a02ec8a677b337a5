//! A redis-server on loopback for the tests, and the dataset they back up.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use archiver::RedisOptions;

use super::free_port;

pub struct Redis {
    pub port: u16,
    pub password: Option<String>,
    child: Child,
}

impl Redis {
    /// A redis-server on loopback whose data directory is `dir` (loading `dump.rdb` if there).
    pub fn start(dir: &Path, password: Option<&str>) -> Redis {
        Redis::start_with(dir, password, &[])
    }

    /// As [`Redis::start`], with more `--name value` settings (later ones win).
    pub fn start_with(dir: &Path, password: Option<&str>, extra: &[&str]) -> Redis {
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
        cmd.args(extra);
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

    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(password) = &self.password {
            cmd.env("REDISCLI_AUTH", password);
        }
        let out = cmd.args(args).output().expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn options(&self) -> RedisOptions {
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

/// 20,000 generated keys plus one of each type, an expiring key and a key in database 3.
pub fn populate(redis: &Redis) {
    redis.cli(&["DEBUG", "POPULATE", "20000", "key", "100"]);
    redis.cli(&["HSET", "session:1", "user", "ada", "ttl", "3600"]);
    redis.cli(&["RPUSH", "queue:mail", "a", "b", "c"]);
    redis.cli(&["SADD", "tags", "x", "y"]);
    redis.cli(&["ZADD", "board", "1", "one", "2", "two"]);
    redis.cli(&["SET", "expiring", "soon", "EX", "3600"]);
    redis.cli(&["-n", "3", "SET", "other-db", "value"]);
}
