//! Test harness: real PostgreSQL 15 clusters on loopback, run as the `postgres` user, and the
//! lifeline binary copied where that user can run it.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub mod listeners;
pub mod redis;

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id postgres");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// `cp -a FROM TO`: a copy keeping modes, owners and links.
pub fn copy_tree(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .args(["-a", "--"])
        .args([from, to])
        .status()
        .expect("cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

pub fn chown_postgres(path: &Path) {
    let status = Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success());
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A child another test thread forked while the copy was open for writing holds that
/// descriptor until it execs, and running the copy meanwhile fails with "Text file busy":
/// wait until it runs once (after that, nothing can hold it open for writing).
fn wait_executable(bin: &Path) {
    for _ in 0..200 {
        match Command::new(bin).arg("--version").output() {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("run {}: {e}", bin.display()),
            Ok(_) => return,
        }
    }
    panic!("{} stayed busy", bin.display());
}

/// A scratch directory owned by postgres, holding the binary, the repository and clusters.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    /// The local repository, or with S3 the local directory for the catalog and spool.
    pub repo: PathBuf,
    /// With S3: the configuration file every command is given (it holds the keys).
    pub config: Option<PathBuf>,
}

/// The access key secret the S3 tests use; it must never appear in output or written files.
pub const TEST_SECRET: &str = "lifeline-test-secret-7d1f0c";

impl Scratch {
    pub fn new() -> Scratch {
        let dir = tempfile::Builder::new()
            .prefix("lifeline-test-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let bin = dir.path().join("lifeline");
        std::fs::copy(env!("CARGO_BIN_EXE_lifeline"), &bin).expect("copy binary");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        wait_executable(&bin);
        let repo = dir.path().join("repo");
        std::fs::create_dir(&repo).expect("repo dir");
        chown_postgres(dir.path());
        Scratch {
            dir,
            bin,
            repo,
            config: None,
        }
    }

    /// A scratch whose repository is `location` (BUCKET/PREFIX) on the S3 server at `endpoint`.
    pub fn with_s3(endpoint: &str, location: &str) -> Scratch {
        let mut scratch = Scratch::new();
        let config = scratch.path("lifeline.toml");
        scratch.write_s3_config(&config, &scratch.repo.clone(), endpoint, location);
        scratch.config = Some(config);
        scratch
    }

    /// Make this scratch's repository encrypted from its first write: a passphrase file (mode
    /// 600, owned by postgres) named in the configuration every command is given.
    pub fn encrypted(mut self, passphrase: &str) -> Scratch {
        let file = self.path("passphrase");
        std::fs::write(&file, format!("{passphrase}\n")).expect("write passphrase");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        chown_postgres(&file);
        let config = self
            .config
            .clone()
            .unwrap_or_else(|| self.path("lifeline.toml"));
        let mut text = std::fs::read_to_string(&config)
            .unwrap_or_else(|_| format!("backup-dir = \"{}\"\n", self.repo.display()));
        text.push_str(&format!("passphrase-file = \"{}\"\n", file.display()));
        std::fs::write(&config, text).expect("write config");
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        chown_postgres(&config);
        self.config = Some(config);
        self
    }

    /// Write a configuration naming the S3 repository, with `state` as the local directory.
    pub fn write_s3_config(&self, path: &Path, state: &Path, endpoint: &str, location: &str) {
        std::fs::create_dir_all(state).expect("state dir");
        let text = format!(
            "backup-dir = \"{}\"\ns3-bucket = \"{location}\"\ns3-endpoint = \"{endpoint}\"\n\
             s3-region = \"us-east-1\"\ns3-retry-seconds = 3\naws-access-key-id = \"lifeline-test\"\n\
             aws-secret-access-key = \"{TEST_SECRET}\"\n",
            state.display()
        );
        std::fs::write(path, text).expect("write config");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        chown_postgres(path);
        chown_postgres(state);
    }

    /// The flags naming the repository in `archive_command`.
    pub fn repository_args(&self) -> String {
        match &self.config {
            Some(config) => format!("--config {}", config.display()),
            None => format!("--backup-dir {}", self.repo.display()),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `lifeline restore postgres ARGS --data-dir DIR`.
    pub fn restore(&self, args: &[&str], dir: &Path) -> Output {
        self.restore_service("postgres", args, dir)
    }

    /// `lifeline restore redis ARGS --data-dir DIR`.
    pub fn restore_redis(&self, args: &[&str], dir: &Path) -> Output {
        self.restore_service("redis", args, dir)
    }

    /// `lifeline restore postgres ARGS --data-dir DIR` with `env` added.
    pub fn restore_with(&self, args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
        self.restore_service_with("postgres", args, dir, env)
    }

    fn restore_service(&self, service: &str, args: &[&str], dir: &Path) -> Output {
        self.restore_service_with(service, args, dir, &[])
    }

    fn restore_service_with(
        &self,
        service: &str,
        args: &[&str],
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Output {
        let dir = dir.to_string_lossy().into_owned();
        let mut all = vec!["restore", service];
        all.extend_from_slice(args);
        all.extend(["--data-dir", dir.as_str()]);
        self.lifeline(&all, env)
    }

    /// `lifeline restore postgres ARGS` into a new directory `name`, which must succeed (`what`
    /// names it in the failure), then the server started on it and recovered.
    pub fn restore_and_recover(&self, args: &[&str], name: &str, what: &str) -> Pg {
        let dir = self.path(name);
        let out = self.restore(args, &dir);
        succeeded(&out, what);
        Pg::recover(self, dir)
    }

    /// Run lifeline as postgres with BACKUP_DIR set; `env` adds or overrides variables.
    pub fn lifeline(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let repo = self.repo.to_string_lossy().into_owned();
        let config = self
            .config
            .as_ref()
            .map(|c| c.to_string_lossy().into_owned());
        let mut all = vec![("BACKUP_DIR", repo.as_str())];
        if let Some(config) = &config {
            all.push(("LIFELINE_CONFIG", config.as_str()));
        }
        all.extend_from_slice(env);
        lifeline_as_postgres(&self.bin, args, &all)
    }
}

/// Run the binary at `bin` as postgres in a clean environment plus `env`.
pub fn lifeline_as_postgres(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let (uid, gid) = postgres_ids();
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TZ", "UTC")
        .current_dir(bin.parent().unwrap_or(Path::new("/tmp")))
        .uid(uid)
        .gid(gid);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run lifeline")
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The output of a command that must have succeeded; `what` names it in the failure.
pub fn succeeded(out: &Output, what: &str) -> String {
    assert!(out.status.success(), "{what} failed: {}", text(out));
    text(out)
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn run_as_postgres(program: &str, args: &[&str]) -> Output {
    let (uid, gid) = postgres_ids();
    // Not root's HOME: libpq would try to read ~/.postgresql/ there, and fail on TLS servers.
    Command::new(program)
        .args(args)
        .current_dir("/tmp")
        .env("HOME", "/tmp")
        .uid(uid)
        .gid(gid)
        .output()
        .expect("run as postgres")
}

pub struct Pg {
    pub data: PathBuf,
    pub port: u16,
    pub socket_dir: PathBuf,
}

impl Pg {
    /// initdb a new cluster archiving into `scratch`'s repository.
    pub fn init(scratch: &Scratch, name: &str) -> Pg {
        Pg::init_with(scratch, name, &[])
    }

    /// As `init`, with more initdb arguments (e.g. `--waldir DIR`).
    pub fn init_with(scratch: &Scratch, name: &str, initdb_args: &[&str]) -> Pg {
        let data = scratch.path(name);
        let mut args = vec![
            "-D",
            data.to_str().expect("utf8"),
            "--auth=trust",
            "--no-sync",
            "-U",
            "postgres",
        ];
        args.extend_from_slice(initdb_args);
        let out = run_as_postgres(&format!("{PG_BIN}/initdb"), &args);
        assert!(out.status.success(), "initdb: {}", text(&out));
        let pg = Pg {
            data,
            port: free_port(),
            socket_dir: scratch.dir.path().to_path_buf(),
        };
        let conf = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             archive_mode = on\narchive_command = '{} {} wal push %p'\n\
             wal_level = replica\nfsync = off\nmax_wal_size = 256MB\nlog_min_messages = info\n",
            pg.port,
            pg.socket_dir.display(),
            scratch.bin.display(),
            scratch.repository_args()
        );
        let path = pg.data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path).expect("read conf");
        text.push_str(&conf);
        std::fs::write(&path, text).expect("write conf");
        pg
    }

    /// A new cluster, started.
    pub fn running(scratch: &Scratch, name: &str) -> Pg {
        let pg = Pg::init(scratch, name);
        pg.start();
        pg
    }

    /// A cluster restored into `data`: same settings, a new port.
    pub fn restored(scratch: &Scratch, data: PathBuf) -> Pg {
        let port = free_port();
        let path = data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&path).expect("read auto conf");
        text.push_str(&format!("port = {port}\n"));
        std::fs::write(&path, text).expect("write auto conf");
        Pg {
            data,
            port,
            socket_dir: scratch.dir.path().to_path_buf(),
        }
    }

    /// Start a restored data directory and wait until recovery has promoted it.
    pub fn recover(scratch: &Scratch, data: PathBuf) -> Pg {
        let pg = Pg::restored(scratch, data);
        pg.start();
        pg.wait_promoted();
        pg
    }

    pub fn start(&self) {
        let log = self.data.with_extension("log");
        let out = run_as_postgres(
            &format!("{PG_BIN}/pg_ctl"),
            &[
                "-D",
                self.data.to_str().expect("utf8"),
                "-l",
                log.to_str().expect("utf8"),
                "-w",
                "-t",
                "120",
                "start",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            text(&out),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    pub fn stop(&self) {
        let _ = run_as_postgres(
            &format!("{PG_BIN}/pg_ctl"),
            &[
                "-D",
                self.data.to_str().expect("utf8"),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    /// Stop the server the way a crash would: no checkpoint, no final WAL archived.
    pub fn crash(&self) {
        let out = run_as_postgres(
            &format!("{PG_BIN}/pg_ctl"),
            &[
                "-D",
                self.data.to_str().expect("utf8"),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
        assert!(
            out.status.success(),
            "pg_ctl stop -m immediate: {}",
            text(&out)
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    pub fn try_psql(&self, sql: &str) -> Output {
        self.try_psql_in("postgres", sql)
    }

    pub fn try_psql_in(&self, db: &str, sql: &str) -> Output {
        run_as_postgres(
            &format!("{PG_BIN}/psql"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
                "-AtX",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ],
        )
    }

    pub fn psql(&self, sql: &str) -> String {
        self.psql_in("postgres", sql)
    }

    pub fn psql_in(&self, db: &str, sql: &str) -> String {
        let out = self.try_psql_in(db, sql);
        assert!(out.status.success(), "psql {sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Wait until recovery has finished and the server accepts writes.
    pub fn wait_promoted(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self.try_psql("SELECT pg_is_in_recovery()");
            if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "f" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server never left recovery; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Switch WAL and wait until the segment is archived.
    pub fn switch_and_archive(&self) {
        // The segment that holds everything written so far: a count of archived files that
        // moves may be an older segment still waiting, so wait for this one by name. (With no
        // WAL since the last switch, pg_switch_wal returns the start of the current segment,
        // and the one before it is the one to wait for.)
        let segment = self.psql("SELECT pg_walfile_name(pg_switch_wal() - 1)");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let last = self.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
            if last.len() >= 24 && last[..24] >= *segment.as_str() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "WAL {segment} never archived (last archived {last:?}); log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every row of every user table, as text, table by table.
    pub fn snapshot(&self) -> Vec<(String, String)> {
        self.snapshot_in("postgres")
    }

    /// Every row of every user table of database `db`, as text, table by table.
    pub fn snapshot_in(&self, db: &str) -> Vec<(String, String)> {
        let tables = self.psql_in(
            db,
            "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'",
        );
        tables
            .split(',')
            .filter(|t| !t.is_empty())
            .map(|t| {
                (
                    t.to_string(),
                    self.psql_in(
                        db,
                        &format!("SELECT string_agg(x::text, ';' ORDER BY x::text) FROM {t} x"),
                    ),
                )
            })
            .collect()
    }

    pub fn db_env(&self) -> Vec<(String, String)> {
        vec![
            ("DB_HOST".into(), "127.0.0.1".into()),
            ("DB_PORT".into(), self.port.to_string()),
            ("DB_USER".into(), "postgres".into()),
            ("DB_NAME".into(), "postgres".into()),
        ]
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A streaming replica of `primary` (pg_basebackup -R), started, in the scratch's `name`.
pub fn streaming_replica(scratch: &Scratch, primary: &Pg, name: &str) -> Pg {
    let dir = scratch.path(name);
    let out = run_as_postgres(
        &format!("{PG_BIN}/pg_basebackup"),
        &[
            "-h",
            "127.0.0.1",
            "-p",
            &primary.port.to_string(),
            "-U",
            "postgres",
            "-D",
            dir.to_str().expect("utf8"),
            "-R",
            "-X",
            "stream",
            "--no-sync",
        ],
    );
    succeeded(&out, "pg_basebackup");
    let replica = Pg::restored(scratch, dir);
    replica.start();
    replica
}

pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The database's clock, truncated to the second, as a UTC time with an explicit offset.
pub fn server_second(pg: &Pg) -> String {
    pg.psql(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00:00'",
    )
}

/// Take a base backup of `pg` into the scratch repository; it must succeed.
pub fn backup(scratch: &Scratch, pg: &Pg) -> String {
    let out = scratch.lifeline(&["backup", "postgres"], &env_refs(&pg.db_env()));
    assert!(out.status.success(), "backup failed: {}", text(&out));
    text(&out)
}

/// A TCP forwarder to `target` that can refuse connections for a while, as a server that is
/// down would, without losing the server's state.
pub struct Outage {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Outage {
    pub fn forward_to(target: u16) -> Outage {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = up.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !flag.load(Ordering::SeqCst) {
                    // Down: close the connection before a byte is answered.
                    drop(client);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                for (mut from, mut to) in [
                    (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    ),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                }
            }
        });
        Outage { port, up }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_up(&self, up: bool) {
        self.up.store(up, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Two related tables with a few thousand rows: accounts and their orders.
pub fn seed(pg: &Pg) {
    pg.psql("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance numeric)");
    pg.psql("CREATE TABLE orders (id serial PRIMARY KEY, account int, amount numeric)");
    pg.psql("INSERT INTO accounts SELECT g, 'owner ' || g, g * 10 FROM generate_series(1, 5000) g");
    pg.psql("INSERT INTO orders (account, amount) SELECT g % 5000 + 1, g FROM generate_series(1, 20000) g");
}

/// Every file under `dir` (none when it does not exist), recursively, sorted.
#[allow(dead_code)]
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}
