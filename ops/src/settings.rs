//! The settings every command works from: the configuration file ([`ConfigFile::load`]),
//! overridden by the environment, overridden by the binary's flags, then checked and resolved
//! once ([`Settings::resolve`]) before any I/O: a typing error is found before the incident,
//! not during it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use storage::retry::RetryPolicy;
use storage::wal::WalFileName;
use storage::{Codec, Compression, LocalStorage, S3Options, S3Storage, StaticCredentials, Storage};

use crate::config_file::{ConfigFile, duration_key, mib_to_bytes, parse_duration, seconds};
use crate::{FailoverConfig, NotifyConfig, OpsError, ServiceConfig, VerifyConfig};

/// What the commands work from. No secret is printed by its `Debug`.
#[derive(Debug)]
pub struct Settings {
    pub config_file: Option<PathBuf>,
    pub backup_dir: Option<PathBuf>,
    pub catalog: Option<PathBuf>,
    pub compression: Compression,
    pub block_size: usize,
    pub parallelism: usize,
    pub wal_wait: Duration,
    pub db: Database,
    pub pgdata: Option<PathBuf>,
    /// The S3 repository, when there is one (the local directory then holds the catalog only).
    pub s3: Option<S3Options>,
    /// Packs uploaded or chunk groups downloaded at once; `None` picks by repository kind.
    pub transfers: Option<usize>,
    /// `direct-io`, `LIFELINE_DIRECT_IO`: a restore writes relation blocks with `O_DIRECT`
    /// (default false).
    pub direct_io: bool,
    /// `restore-plan-window`, `LIFELINE_RESTORE_PLAN_WINDOW`: chunk writes a restore plans at
    /// a time (default [`restore::PLAN_WINDOW`]).
    pub restore_plan_window: usize,
    pub prefetch: Prefetch,
    /// `wal-push-ahead`, `wal-push-ahead-mib`: see [`Settings::start_push_ahead`].
    pub push_ahead: PushAhead,
    pub redis: RedisServer,
    /// The database a `--target staging` dump restore recreates.
    pub staging_db: String,
    /// `pg-bin-dir` / `PG_BIN_DIR` when set; see [`Settings::pg_bin`].
    pg_bin_dir: Option<PathBuf>,
    /// `[pg-bin-dirs]`: the server binaries of each major.
    pg_bin_dirs: BTreeMap<u32, PathBuf>,
    pub retention: catalog::RetentionPolicy,
    /// `backup-standby` and `[standby]`: see [`Settings::backup_standby`].
    standby: StandbySettings,
    /// Unreferenced packs younger than this are left to the backup that may be writing them.
    pub prune_grace: Duration,
    /// Packs with at least this share of dead bytes are rewritten with their live chunks only.
    pub repack_unused_percent: u64,
    pub ops: OpsSettings,
    /// `metrics-textfile`: see [`crate::metrics`].
    pub metrics_textfile: Option<PathBuf>,
    /// `alert-rpo`, `alert-backup-age`: see [`crate::alerts`].
    pub thresholds: crate::alerts::Thresholds,
    /// How long `check` waits for its switched segment to be archived (`check-timeout`).
    pub check_timeout: Duration,
    /// `passphrase-file`, `passphrase-command`, `key-cache`: see [`crate::encryption`].
    pub encryption: crate::encryption::EncryptionSettings,
    /// Whether [`Settings::database`] has said which server it is (once a run).
    said_database: std::sync::atomic::AtomicBool,
}

/// The PostgreSQL server backed up (DB_HOST, DB_PORT, DB_USER, DB_PASSWORD, DB_NAME).
#[derive(Clone)]
pub struct Database {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    /// `db-sslmode`, `db-sslrootcert` (libpq's `PGSSLMODE`, `PGSSLROOTCERT`).
    pub tls: pgtls::TlsSettings,
}

/// The Redis server backed up (REDIS_HOST, REDIS_PORT, REDIS_PASSWORD).
#[derive(Clone)]
pub struct RedisServer {
    pub host: String,
    pub port: u16,
    pub password: Option<String>,
}

impl Database {
    /// The password from `PGPASSFILE` or `~/.pgpass` when none is set, as libpq finds it (a file
    /// others can read is ignored, as libpq does).
    fn with_pgpass(mut self) -> Database {
        if self.password.is_some() {
            return self;
        }
        let file = env("PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|home| PathBuf::from(home).join(".pgpass")));
        let private = |path: &Path| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.mode() & 0o077 == 0)
        };
        if let Some(text) = file
            .filter(|f| private(f))
            .and_then(|f| std::fs::read_to_string(f).ok())
        {
            self.password =
                crate::pgpass::lookup(&text, &self.host, self.port, &self.dbname, &self.user);
        }
        self
    }

    /// The server as the ops crate reaches it (`check`, `status`, `metrics`).
    pub fn server(&self) -> crate::pg::Server {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.dbname);
        config.application_name("lifeline");
        if let Some(password) = &self.password {
            config.password(password);
        }
        crate::pg::Server {
            host: self.host.clone(),
            port: self.port,
            config,
            tls: self.tls.clone(),
        }
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}:{}/{} sslmode={}",
            self.user, self.host, self.port, self.dbname, self.tls.mode
        )
    }
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Whether base backups read a standby (`backup-standby`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StandbyMode {
    Prefer,
    Require,
}

/// The standby a base backup reads, as configured.
#[derive(Debug, Clone, Default)]
struct StandbySettings {
    mode: Option<StandbyMode>,
    host: Option<String>,
    port: Option<u16>,
    data_dir: Option<PathBuf>,
    max_lag: Duration,
}

/// The standby one base backup reads.
#[derive(Debug, Clone)]
pub struct BackupStandby {
    pub mode: StandbyMode,
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub max_lag: Duration,
}

/// What the operations commands (failover, verify-recovery, drill) and notifications use.
#[derive(Debug, Default)]
pub struct OpsSettings {
    pub notify: NotifyConfig,
    pub verify: VerifyConfig,
    pub failover: FailoverConfig,
    pub services: BTreeMap<String, ServiceConfig>,
    pub drill_dir: Option<PathBuf>,
    /// Redis is part of the platform (REDIS_HOST or redis-host set).
    pub redis_configured: bool,
    /// `SIMULATE_MODE=true`: commands that would change something only say what they would do.
    pub simulate: bool,
}

/// `wal fetch` read-ahead: how many segments past the requested one, and at most how many bytes.
#[derive(Debug, Clone)]
pub struct Prefetch {
    pub segments: usize,
    pub bytes: u64,
    pub spool_dir: Option<PathBuf>,
}

/// `wal push` look-ahead: how many segments PostgreSQL has marked ready a detached worker
/// stores ahead of their own `wal push`, and at most how many bytes.
#[derive(Debug, Clone, Copy)]
pub struct PushAhead {
    pub segments: usize,
    pub bytes: u64,
}

/// This binary with `args`, detached: no stdio, its own process group (signals meant for
/// archive_command or restore_command are not meant for it). A worker that does not start
/// costs nothing but its head start.
fn spawn_detached<S: AsRef<std::ffi::OsStr>>(
    exe: PathBuf,
    repository: Vec<String>,
    args: &[S],
    what: &str,
) {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let spawned = Command::new(exe)
        .args(repository)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        tracing::debug!("{what} not started: {e}");
    }
}

fn setting(message: String) -> OpsError {
    OpsError::Setting(message)
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn absolute(path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        return path;
    }
    std::env::current_dir()
        .map(|d| d.join(&path))
        .unwrap_or(path)
}

/// `slot` from the environment variable `name` when set: the environment wins over the file.
fn from_env<T: std::str::FromStr>(
    slot: &mut Option<T>,
    name: &str,
    what: &str,
) -> Result<(), OpsError> {
    if let Some(v) = env(name) {
        *slot = Some(
            v.parse()
                .map_err(|_| setting(format!("{name}={v:?} is not {what}")))?,
        );
    }
    Ok(())
}

fn bool_env(name: &str) -> Result<Option<bool>, OpsError> {
    let Some(v) = env(name) else {
        return Ok(None);
    };
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(Some(true)),
        "0" | "false" | "no" | "off" => Ok(Some(false)),
        _ => Err(setting(format!("{name}={v:?} is not true or false"))),
    }
}

/// A duration from `NAME` (human text, or a bare number of seconds) or from `NAME_SECONDS`,
/// the name it had before.
fn env_duration(name: &str) -> Result<Option<Duration>, OpsError> {
    let old = format!("{name}_SECONDS");
    let (key, text) = match (env(name), env(&old)) {
        (Some(text), _) => (name.to_string(), text),
        (None, Some(text)) => (old, text),
        (None, None) => return Ok(None),
    };
    if let Ok(secs) = text.trim().parse::<u64>() {
        return Ok(Some(Duration::from_secs(seconds(secs, &key)?)));
    }
    Ok(Some(parse_duration(&text, &key)?))
}

impl ConfigFile {
    /// The file at `path` (none: every key unset), with the environment's settings over it.
    pub fn load(path: Option<&Path>) -> Result<ConfigFile, OpsError> {
        let mut file = match path {
            None => ConfigFile::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| OpsError::Io {
                    doing: format!("read the configuration file {}", path.display()),
                    source,
                })?;
                ConfigFile::parse(&text).map_err(|e| {
                    setting(format!(
                        "parse the configuration file {} (fix the key or value it names): {e}",
                        path.display()
                    ))
                })?
            }
        };
        file.overlay_environment()?;
        Ok(file)
    }

    fn overlay_environment(&mut self) -> Result<(), OpsError> {
        for (slot, name) in [
            (&mut self.db_host, "DB_HOST"),
            (&mut self.db_user, "DB_USER"),
            (&mut self.db_password, "DB_PASSWORD"),
            (&mut self.db_name, "DB_NAME"),
            (&mut self.redis_host, "REDIS_HOST"),
            (&mut self.redis_password, "REDIS_PASSWORD"),
            (&mut self.staging_db_name, "STAGING_DB_NAME"),
        ] {
            from_env(slot, name, "text")?;
        }
        from_env(&mut self.db_port, "DB_PORT", "a port number")?;
        from_env(&mut self.db_sslmode, "DB_SSLMODE", "text")?;
        from_env(&mut self.db_sslrootcert, "DB_SSLROOTCERT", "a path")?;
        // libpq's variables, when neither DB_* nor the file names the server.
        for (slot, name) in [
            (&mut self.db_host, "PGHOST"),
            (&mut self.db_user, "PGUSER"),
            (&mut self.db_password, "PGPASSWORD"),
            (&mut self.db_name, "PGDATABASE"),
            (&mut self.db_sslmode, "PGSSLMODE"),
        ] {
            if slot.is_none() {
                from_env(slot, name, "text")?;
            }
        }
        if self.db_port.is_none() {
            from_env(&mut self.db_port, "PGPORT", "a port number")?;
        }
        if self.db_sslrootcert.is_none() {
            from_env(&mut self.db_sslrootcert, "PGSSLROOTCERT", "a path")?;
        }
        from_env(&mut self.redis_port, "REDIS_PORT", "a port number")?;
        from_env(
            &mut self.wal_push_ahead,
            "LIFELINE_WAL_PUSH_AHEAD",
            "a number",
        )?;
        from_env(
            &mut self.restore_plan_window,
            "LIFELINE_RESTORE_PLAN_WINDOW",
            "a number",
        )?;
        from_env(&mut self.pgdata, "PGDATA", "a path")?;
        from_env(&mut self.pg_bin_dir, "PG_BIN_DIR", "a path")?;
        Ok(())
    }

    /// The S3 repository settings, when a bucket is named anywhere.
    fn s3_options(&self) -> Result<Option<S3Options>, OpsError> {
        let Some(location) = &self.s3_bucket else {
            return Ok(None);
        };
        let mut opts = S3Options::for_location(location).map_err(|e| setting(e.to_string()))?;
        opts.endpoint = self.s3_endpoint.clone();
        opts.region = self.s3_region.clone();
        opts.path_style = self.s3_path_style.unwrap_or(opts.endpoint.is_some());
        if let Some(mib) = self.s3_part_size_mib {
            opts.part_size = usize::try_from(mib_to_bytes(mib as u64, "s3-part-size-mib")?)
                .map_err(|_| setting("s3-part-size-mib: too large for this machine".into()))?;
            opts.single_put_max = opts.single_put_max.max(opts.part_size);
        }
        opts.sse = storage::ServerSideEncryption::from_settings(
            self.s3_sse.as_deref(),
            self.s3_sse_kms_key_id.as_deref(),
        )
        .map_err(setting)?;
        let retry = match env_duration("LIFELINE_S3_RETRY")? {
            Some(retry) => Some(retry),
            None => duration_key(
                ("s3-retry", self.s3_retry.as_deref()),
                ("s3-retry-seconds", self.s3_retry_seconds, 1),
            )?,
        };
        if let Some(deadline) = retry {
            opts.retry = RetryPolicy {
                deadline,
                ..RetryPolicy::default()
            };
        }
        let ca_file = env("AWS_CA_BUNDLE").map(PathBuf::from);
        if let Some(path) = ca_file.or(self.s3_ca_file.clone()) {
            opts.ca_bundle = Some(std::fs::read(&path).map_err(|source| OpsError::Io {
                doing: format!(
                    "read the CA bundle {} (AWS_CA_BUNDLE or s3-ca-file)",
                    path.display()
                ),
                source,
            })?);
        }
        // The standard sources (the environment first) win over the file, as for every setting.
        if env("AWS_ACCESS_KEY_ID").is_none()
            && let (Some(id), Some(secret)) = (&self.aws_access_key_id, &self.aws_secret_access_key)
        {
            opts.credentials = Some(StaticCredentials {
                access_key_id: id.clone(),
                secret_access_key: secret.clone(),
            });
        }
        Ok(Some(opts))
    }

    fn compression_settings(&self) -> Result<Compression, OpsError> {
        let codec: Codec = self
            .compression
            .as_deref()
            .unwrap_or("zstd")
            .parse()
            .map_err(setting)?;
        let level = self.compression_level.unwrap_or(match codec {
            Codec::Gzip => 6,
            _ => 3,
        });
        let valid = match codec {
            Codec::Zstd => (1..=19).contains(&level),
            Codec::Gzip => (0..=9).contains(&level),
            Codec::None => true,
        };
        if !valid {
            return Err(setting(format!(
                "compression level {level} is out of range for {codec:?}: zstd takes 1-19, gzip 0-9"
            )));
        }
        Ok(Compression {
            codec,
            level,
            workers: 0,
        })
    }

    fn ops_settings(&self) -> Result<OpsSettings, OpsError> {
        let mut notify = self.notify.clone();
        notify.slack_webhook_url = env("SLACK_WEBHOOK_URL").or(notify.slack_webhook_url);
        notify.email_to = env("NOTIFICATION_EMAIL").or(notify.email_to);
        notify.smtp_password = env("SMTP_PASSWORD").or(notify.smtp_password);
        if let Some(url) = &notify.slack_webhook_url
            && !url.starts_with("https://")
            && !url.starts_with("http://")
        {
            return Err(setting(
                "SLACK_WEBHOOK_URL (or slack-webhook-url) must be an http(s) URL".into(),
            ));
        }
        let mut failover = self.failover.clone();
        failover.replica_host = env("REPLICA_HOST").or(failover.replica_host);
        from_env(&mut failover.replica_port, "REPLICA_PORT", "a port number")?;
        failover.promote_timeout()?;
        for (name, service) in &self.services {
            service.timeout(name)?;
        }
        Ok(OpsSettings {
            notify,
            verify: self.verify.clone(),
            failover,
            services: self.services.clone(),
            drill_dir: self.drill_dir.clone().map(absolute),
            redis_configured: self.redis_host.is_some(),
            simulate: bool_env("SIMULATE_MODE")?.unwrap_or(false),
        })
    }

    fn server_binary_dirs(&self) -> Result<BTreeMap<u32, PathBuf>, OpsError> {
        let major = |key: &String| {
            key.parse::<u32>().map_err(|_| {
                setting(format!(
                    "pg-bin-dirs.{key}: the keys are PostgreSQL majors (13 = \"/usr/lib/postgresql/13/bin\")"
                ))
            })
        };
        let dirs = self.pg_bin_dirs.iter();
        dirs.map(|(key, dir)| Ok((major(key)?, absolute(dir.clone()))))
            .collect()
    }

    fn standby_settings(&self) -> Result<StandbySettings, OpsError> {
        let mode = match self.backup_standby.as_deref() {
            None | Some("off") => None,
            Some("prefer") => Some(StandbyMode::Prefer),
            Some("require") => Some(StandbyMode::Require),
            Some(other) => {
                return Err(setting(format!(
                    "backup-standby = {other:?}: use \"prefer\", \"require\" or \"off\""
                )));
            }
        };
        let max_lag = match &self.standby_max_lag {
            Some(text) => parse_duration(text, "standby-max-lag")?,
            None => Duration::from_secs(300),
        };
        let standby = StandbySettings {
            mode,
            host: self.standby.host.clone(),
            port: self.standby.port,
            data_dir: self.standby.data_dir.clone().map(absolute),
            max_lag,
        };
        // Checked now: a typing error is found before the night's backup, not during it.
        if mode.is_some() {
            standby.complete(mode)?;
        }
        Ok(standby)
    }

    fn prune_grace(&self) -> Result<Duration, OpsError> {
        if let Some(grace) = env_duration("LIFELINE_PRUNE_GRACE")? {
            return Ok(grace);
        }
        let grace = duration_key(
            ("prune-grace", self.prune_grace.as_deref()),
            ("prune-grace-hours", self.prune_grace_hours, 3600),
        )?;
        Ok(grace.unwrap_or(Duration::from_secs(24 * 3600)))
    }
}

impl StandbySettings {
    fn complete(&self, mode: Option<StandbyMode>) -> Result<Option<BackupStandby>, OpsError> {
        let Some(mode) = mode else {
            return Ok(None);
        };
        let (Some(host), Some(data_dir)) = (&self.host, &self.data_dir) else {
            return Err(OpsError::NotConfigured(
                "a backup from a standby needs [standby] host and data-dir (and port, default 5432) in the configuration".into(),
            ));
        };
        Ok(Some(BackupStandby {
            mode,
            host: host.clone(),
            port: self.port.unwrap_or(5432),
            data_dir: data_dir.clone(),
            max_lag: self.max_lag,
        }))
    }
}

impl Settings {
    /// The standby a base backup reads: `backup-standby`, or with `--from-standby` the
    /// standby required; none: the primary.
    pub fn backup_standby(&self, from_standby: bool) -> Result<Option<BackupStandby>, OpsError> {
        let mode = match (from_standby, self.standby.mode) {
            (true, _) => Some(StandbyMode::Require),
            (false, mode) => mode,
        };
        self.standby.complete(mode)
    }

    /// Check and resolve `file` (the environment and flags already laid over it); `config_file`
    /// is where it was read from, named again in the commands lifeline writes for PostgreSQL.
    pub fn resolve(file: ConfigFile, config_file: Option<PathBuf>) -> Result<Settings, OpsError> {
        let s3 = file.s3_options()?;
        let prefetch_default = if s3.is_some() { 8 } else { 0 };
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let dbname = file.db_name.clone().unwrap_or_else(|| "postgres".into());
        let wal_wait = duration_key(
            ("wal-wait", file.wal_wait.as_deref()),
            ("wal-wait-seconds", file.wal_wait_seconds, 1),
        )?;
        let mut settings = Settings {
            config_file: config_file.map(absolute),
            backup_dir: file.backup_dir.clone().map(absolute),
            catalog: file.catalog.clone().map(absolute),
            compression: file.compression_settings()?,
            block_size: file
                .block_size
                .unwrap_or(storage::chunking::DEFAULT_BLOCK_SIZE),
            parallelism: file.parallelism.unwrap_or(cpus.max(2)),
            wal_wait: wal_wait.unwrap_or(Duration::from_secs(300)),
            pgdata: file.pgdata.clone(),
            s3,
            transfers: file.transfers,
            direct_io: bool_env("LIFELINE_DIRECT_IO")?
                .or(file.direct_io)
                .unwrap_or(false),
            restore_plan_window: match file.restore_plan_window {
                Some(0) => {
                    return Err(setting(
                        "restore-plan-window (LIFELINE_RESTORE_PLAN_WINDOW) is 0: give the chunk \
                         writes a restore plans at a time, at least 1 (default 262144)"
                            .into(),
                    ));
                }
                Some(window) => window,
                None => restore::PLAN_WINDOW,
            },
            prefetch: Prefetch {
                segments: file.wal_prefetch.unwrap_or(prefetch_default),
                bytes: mib_to_bytes(file.wal_prefetch_mib.unwrap_or(512), "wal-prefetch-mib")?,
                spool_dir: file.wal_spool_dir.clone().map(absolute),
            },
            push_ahead: PushAhead {
                segments: file.wal_push_ahead.unwrap_or(8),
                bytes: mib_to_bytes(file.wal_push_ahead_mib.unwrap_or(256), "wal-push-ahead-mib")?,
            },
            staging_db: file
                .staging_db_name
                .clone()
                .unwrap_or_else(|| format!("{dbname}_staging")),
            pg_bin_dir: file.pg_bin_dir.clone(),
            pg_bin_dirs: file.server_binary_dirs()?,
            standby: file.standby_settings()?,
            retention: catalog::RetentionPolicy {
                daily: file.keep_daily.unwrap_or(7),
                weekly: file.keep_weekly.unwrap_or(4),
                monthly: file.keep_monthly.unwrap_or(12),
                wal_days: file.wal_days.unwrap_or(7),
            },
            prune_grace: file.prune_grace()?,
            repack_unused_percent: match file.repack_unused_percent {
                Some(p @ 1..=100) => p,
                Some(p) => {
                    return Err(setting(format!(
                        "repack-unused-percent = {p}: use 1-100 (100 repacks nothing, only wholly unused packs are deleted)"
                    )));
                }
                None => 30,
            },
            ops: file.ops_settings()?,
            metrics_textfile: file.metrics_textfile.clone().map(absolute),
            thresholds: crate::alerts::Thresholds {
                rpo: match file.alert_rpo.as_deref() {
                    Some(text) => crate::config_file::parse_duration(text, "alert-rpo")?,
                    None => crate::alerts::Thresholds::default().rpo,
                },
                backup_age: match file.alert_backup_age.as_deref() {
                    Some(text) => crate::config_file::parse_duration(text, "alert-backup-age")?,
                    None => crate::alerts::Thresholds::default().backup_age,
                },
            },
            check_timeout: match file.check_timeout.as_deref() {
                Some(text) => crate::config_file::parse_duration(text, "check-timeout")?,
                None => Duration::from_secs(60),
            },
            encryption: crate::encryption::EncryptionSettings {
                passphrase_file: file.passphrase_file.clone().map(absolute),
                passphrase_command: file.passphrase_command.clone(),
                key_cache: file.key_cache.unwrap_or(true),
                kdf: storage::crypto::KdfParams::default(),
                required: file.require_encryption.unwrap_or(false),
            },
            redis: RedisServer {
                host: file.redis_host.unwrap_or_else(|| "127.0.0.1".into()),
                port: file.redis_port.unwrap_or(6379),
                password: file.redis_password,
            },
            db: Database::with_pgpass(Database {
                host: file.db_host.unwrap_or_else(|| "localhost".into()),
                port: file.db_port.unwrap_or(5432),
                user: file.db_user.unwrap_or_else(|| "postgres".into()),
                password: file.db_password,
                dbname,
                tls: pgtls::TlsSettings {
                    mode: match &file.db_sslmode {
                        None => pgtls::SslMode::default(),
                        Some(mode) => mode.parse().map_err(|e| {
                            setting(format!("db-sslmode (DB_SSLMODE, PGSSLMODE): {e}"))
                        })?,
                    },
                    root_cert: file.db_sslrootcert,
                },
            }),
            said_database: std::sync::atomic::AtomicBool::new(false),
        };
        settings.follow_promoted_primary();
        Ok(settings)
    }

    /// DB_HOST/DB_PORT give way to the server a failover promoted while they still name the
    /// primary it replaced (see [`crate::promoted`]); user, password and database stay.
    fn follow_promoted_primary(&mut self) {
        let Some(dir) = &self.backup_dir else {
            return;
        };
        let failover = &self.ops.failover;
        let replica = failover
            .replica_host
            .as_deref()
            .map(|host| (host, failover.replica_port.unwrap_or(5432)));
        let found = crate::promoted::resolve(dir, &self.db.host, self.db.port, replica);
        if let Some(record) = found.as_ref().and_then(crate::promoted::Resolution::in_use) {
            self.db.host.clone_from(&record.host);
            self.db.port = record.port;
        }
        self.ops.failover.promoted = found;
    }

    /// The PostgreSQL server the commands reach. The first call of a run says so when that is
    /// the primary a failover promoted (or why a recorded one is not used): the configuration
    /// names another server, and the operator must know which one a command touched.
    pub fn database(&self) -> &Database {
        use std::sync::atomic::Ordering;
        if let Some(found) = &self.ops.failover.promoted
            && !self.said_database.swap(true, Ordering::Relaxed)
        {
            match found.in_use() {
                Some(_) => tracing::info!("{}", found.note()),
                None => tracing::warn!("{}", found.note()),
            }
        }
        &self.db
    }

    pub fn backup_dir(&self) -> Result<&Path, OpsError> {
        self.backup_dir.as_deref().ok_or_else(|| {
            OpsError::NotConfigured(if self.s3.is_some() {
                "no local directory for the catalog, logs and WAL spool: set BACKUP_DIR (the \
                 repository itself is in S3)"
                    .into()
            } else {
                "no repository configured: set BACKUP_DIR (or --backup-dir, or backup-dir in the \
                 config file), or S3_BACKUP_BUCKET for an S3 repository"
                    .into()
            })
        })
    }

    pub fn catalog_path(&self) -> Result<PathBuf, OpsError> {
        match &self.catalog {
            Some(path) => Ok(path.clone()),
            None => Ok(self.backup_dir()?.join("catalog.db")),
        }
    }

    pub fn open_catalog(&self) -> Result<catalog::Catalog, OpsError> {
        if !self.ops.simulate {
            return crate::Repository::open_catalog(self);
        }
        // A simulated run creates nothing: without a catalog it sees an empty one.
        let path = self.catalog_path()?;
        catalog::Catalog::open_existing_or_empty(&path)
            .map_err(|source| OpsError::OpenCatalog { path, source })
    }

    /// The repository for commands that write (a local one must exist and belong to this user).
    /// An empty one becomes encrypted when a passphrase is configured.
    pub async fn repository_for_writing(&self) -> Result<Arc<dyn Storage>, OpsError> {
        let raw = self.unsealed_repository(true).await?;
        crate::encryption::open(&self.encryption, raw, crate::encryption::Access::Write).await
    }

    /// The repository for a command that writes and says what it would do under
    /// `SIMULATE_MODE`: then it is opened as the write would find it, with the same refusals,
    /// and nothing is created (not even the keys of an empty repository a passphrase would make
    /// encrypted).
    pub async fn repository_to_write(&self) -> Result<Arc<dyn Storage>, OpsError> {
        if !self.ops.simulate {
            return self.repository_for_writing().await;
        }
        let raw = self.unsealed_repository(false).await?;
        let access = crate::encryption::Access::WouldWrite;
        crate::encryption::open(&self.encryption, raw, access).await
    }

    /// The repository for commands that read: a local one must exist.
    pub async fn repository(&self) -> Result<Arc<dyn Storage>, OpsError> {
        let raw = self.unsealed_repository(false).await?;
        crate::encryption::open(&self.encryption, raw, crate::encryption::Access::Read).await
    }

    /// The repository's backend as it is, sealed objects and all: for `repo init` and the key
    /// operations.
    pub async fn unsealed_repository(&self, create: bool) -> Result<Arc<dyn Storage>, OpsError> {
        if let Some(opts) = &self.s3 {
            return open_s3(opts).await;
        }
        let dir = self.backup_dir()?;
        let local = if create {
            LocalStorage::open(dir)
        } else {
            LocalStorage::open_existing(dir)
        };
        Ok(Arc::new(local.map_err(OpsError::OpenRepository)?))
    }

    /// Uploads in flight during a backup.
    pub fn upload_transfers(&self) -> usize {
        self.transfers
            .unwrap_or(if self.s3.is_some() { 8 } else { 2 })
            .max(1)
    }

    /// Reads in flight during a restore.
    pub fn download_transfers(&self) -> usize {
        let local = self.parallelism + 1;
        self.transfers
            .unwrap_or(if self.s3.is_some() { 8 } else { local })
            .max(1)
    }

    /// The arguments that find this repository again (paths and locations, never secrets).
    pub fn repository_args(&self) -> Result<Vec<String>, OpsError> {
        let mut args = Vec::new();
        let mut push = |flag: &str, value: &Path| {
            args.push(flag.to_string());
            args.push(value.to_string_lossy().into_owned());
        };
        if let Some(config) = &self.config_file {
            push("--config", config);
        }
        push("--backup-dir", self.backup_dir()?);
        if let Some(catalog) = &self.catalog {
            push("--catalog", catalog);
        }
        // The passphrase's source, never the passphrase (LIFELINE_PASSPHRASE must then be in
        // the environment of whoever runs the command).
        if let Some(file) = &self.encryption.passphrase_file {
            push("--passphrase-file", file);
        }
        // A command is named only when no configuration file carries it: command lines are
        // visible to every local user.
        if let (Some(command), None) = (&self.encryption.passphrase_command, &self.config_file) {
            push("--passphrase-command", Path::new(command));
        }
        if let Some(s3) = &self.s3 {
            let location = match s3.prefix.as_str() {
                "" => s3.bucket.clone(),
                prefix => format!("{}/{prefix}", s3.bucket),
            };
            push("--s3-bucket", Path::new(&location));
            let optional = [("--s3-endpoint", &s3.endpoint), ("--s3-region", &s3.region)];
            for (flag, value) in optional {
                if let Some(value) = value {
                    push(flag, Path::new(value));
                }
            }
        }
        if self.encryption.expected() {
            args.push("--require-encryption".into());
        }
        Ok(args)
    }

    /// The command line that runs this binary's `wal fetch` against this repository, for
    /// `restore_command` (`--cluster` follows).
    pub fn wal_fetch_command(&self) -> Result<String, OpsError> {
        let exe = std::env::current_exe().map_err(|source| OpsError::Io {
            doing: "find the lifeline binary for restore_command".into(),
            source,
        })?;
        let Some(exe) = exe.to_str() else {
            return Err(OpsError::RestoreCommand(format!(
                "the lifeline binary's path {} is not UTF-8 and cannot be written into restore_command: install it under a UTF-8 path",
                exe.display()
            )));
        };
        let mut command = shell_quote(exe);
        for arg in self.repository_args()? {
            command.push(' ');
            command.push_str(&shell_quote(&arg));
        }
        Ok(command + " wal fetch")
    }

    /// Temporary files that killed writers left in the local repository and the `wal fetch`
    /// spool. An S3 repository has none to count (interrupted uploads are the bucket's to
    /// expire); its local spool still does.
    pub async fn leftovers(&self) -> Result<Vec<storage::leftovers::Leftover>, OpsError> {
        let (repository, spool) = (self.local_repository(), self.spool_dir());
        // A walk of the whole local repository: on a blocking thread.
        let found = tokio::task::spawn_blocking(move || {
            let now = std::time::SystemTime::now();
            storage::leftovers::find_all(repository.as_deref(), spool.as_deref(), now)
        })
        .await?;
        Ok(found?)
    }

    /// Tell Slack and email (when configured) how `operation` ended. Delivery failures are
    /// warnings: the operation's own outcome stands.
    pub async fn notify(&self, operation: &str, ok: bool, summary: &str, details: &str) {
        let notifier = crate::Notifier::new(self.ops.notify.clone(), storage::lease::host_name());
        if !notifier.is_configured() {
            return;
        }
        let event = crate::Event {
            operation: operation.to_string(),
            ok,
            summary: summary.to_string(),
            details: details.to_string(),
        };
        notifier.send(&event).await;
    }

    /// What a restore of `backup` needs from the settings; `restore_command` runs this binary's
    /// `wal fetch` against the same repository.
    pub fn postgres_restore_options(
        &self,
        backup: &catalog::BackupRecord,
        verify_first: bool,
        choices: restore::RestoreChoices,
    ) -> Result<restore::PostgresRestoreOptions, OpsError> {
        let fetch = self.wal_fetch_command()?;
        Ok(restore::PostgresRestoreOptions {
            restore_program: format!("{fetch} --cluster {}", backup.system_identifier),
            spool: self.spool(),
            parallelism: self.parallelism,
            transfers: self.download_transfers(),
            direct_io: self.direct_io,
            plan_window: self.restore_plan_window,
            verify_first,
            choices,
            owner: storage::private::Owner::KEEP,
            progress: storage::progress::none(),
        })
    }

    /// Start this binary's `wal prefetch` detached: recovery gets its answer now, and the
    /// segments after `name` are fetched while it replays this one. A prefetch that fails
    /// costs nothing: the next fetch reads the repository.
    pub fn start_prefetcher(&self, system_identifier: u64, name: &str) {
        let (Ok(exe), Ok(repository)) = (std::env::current_exe(), self.repository_args()) else {
            return;
        };
        let cluster = system_identifier.to_string();
        let segments = self.prefetch.segments.to_string();
        spawn_detached(
            exe,
            repository,
            &[
                "--wal-prefetch",
                &segments,
                "wal",
                "prefetch",
                "--cluster",
                &cluster,
                name,
            ],
            "prefetch",
        );
    }

    /// `wal prefetch`: read the segments after `name` into the spool (a detached worker of
    /// `wal fetch`; without a spool there is nothing to do).
    pub async fn prefetch(&self, name: &str, cluster: u64) -> Result<(), OpsError> {
        name.parse::<storage::wal::WalFileName>()
            .map_err(|e| setting(format!("wal prefetch {name}: {e}")))?;
        let Some(spool) = self.spool() else {
            return Ok(());
        };
        let storage = self.repository().await?;
        let report = spool
            .prefetch_after(storage.as_ref(), cluster, name, self.download_transfers())
            .await?;
        tracing::debug!(
            segments = report.fetched,
            bytes = report.bytes,
            "prefetched"
        );
        Ok(())
    }

    /// After `wal push PATH` stored its segment: start this binary's `wal push --ahead PATH`
    /// detached, to store the segments PostgreSQL has already marked ready (see
    /// `archiver::push_ahead`). It must not delay the answer PostgreSQL waits for, nor
    /// receive the signals meant for archive_command.
    pub fn start_push_ahead(&self, path: &Path) {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let segment = matches!(name.parse(), Ok(WalFileName::Segment { .. }));
        // No backlog, no worker (the next segment alone is its own push's): the common case
        // costs one small directory listing.
        let waiting = |pg_wal: &Path| storage::wal::ready_segments_after(pg_wal, name).len() > 1;
        if self.push_ahead.segments == 0 || !segment || !path.parent().is_some_and(waiting) {
            return;
        }
        let (Ok(exe), Ok(repository)) = (std::env::current_exe(), self.repository_args()) else {
            return;
        };
        // The compression as resolved here, flags included: the worker stores each object as
        // this `wal push` would have, and the segment's own push only confirms it.
        let codec = match self.compression.codec {
            Codec::None => "none",
            Codec::Zstd => "zstd",
            Codec::Gzip => "gzip",
        };
        let level = self.compression.level.to_string();
        let args: [&std::ffi::OsStr; 8] = [
            "--compression".as_ref(),
            codec.as_ref(),
            "--compression-level".as_ref(),
            level.as_ref(),
            "wal".as_ref(),
            "push".as_ref(),
            "--ahead".as_ref(),
            path.as_os_str(),
        ];
        spawn_detached(exe, repository, &args, "look-ahead");
    }

    /// `wal push`'s compression: two workers, the archiver's one segment at a time.
    pub fn push_compression(&self) -> Compression {
        Compression {
            workers: 2,
            ..self.compression
        }
    }

    /// Where pg_dump, pg_restore, psql, createdb and dropdb are ("" for PATH). Looked up only
    /// by the dump commands, not by every `wal push`.
    pub fn pg_bin(&self) -> PathBuf {
        self.pg_bin_dir.clone().unwrap_or_else(newest_pg_bin)
    }

    /// Where the server binaries of each major are (`[pg-bin-dirs]`, `pg-bin-dir`, installed).
    pub fn server_binaries(&self) -> crate::binaries::ServerBinaries {
        crate::binaries::ServerBinaries::new(self.pg_bin_dirs.clone(), self.pg_bin_dir.clone())
    }

    /// The local repository, when the repository is not in S3 (where BACKUP_DIR only holds the
    /// catalog, logs and spool).
    pub fn local_repository(&self) -> Option<PathBuf> {
        self.backup_dir.clone().filter(|_| self.s3.is_none())
    }

    /// Where `wal fetch` spools, whether or not prefetch is on now (an earlier run may have
    /// left files there).
    pub fn spool_dir(&self) -> Option<PathBuf> {
        self.prefetch
            .spool_dir
            .clone()
            .or_else(|| self.backup_dir.as_ref().map(|d| d.join("spool")))
    }

    /// The `wal fetch` read-ahead spool, when prefetch is on and there is a place for it.
    pub fn spool(&self) -> Option<restore::Spool> {
        if self.prefetch.segments == 0 {
            return None;
        }
        // Spooled segments are plaintext and served by their own checksum: never inside an
        // encrypted local repository, where whoever can write the directory could plant them.
        if let (true, Some(repo), Some(spool)) = (
            self.encryption.expected(),
            self.local_repository(),
            self.spool_dir(),
        ) && spool.starts_with(&repo)
        {
            tracing::debug!("no read-ahead: the spool would be inside the encrypted repository");
            return None;
        }
        let (segments, bytes) = (self.prefetch.segments, self.prefetch.bytes);
        Some(restore::Spool::new(self.spool_dir()?, segments, bytes))
    }
}

impl crate::Repository for Settings {
    async fn open(&self) -> Result<Arc<dyn Storage>, OpsError> {
        self.repository().await
    }

    fn catalog_path(&self) -> Result<PathBuf, OpsError> {
        Settings::catalog_path(self)
    }

    fn backup_dir(&self) -> Option<&Path> {
        self.backup_dir.as_deref()
    }
}

/// The newest `/usr/lib/postgresql/<major>/bin` (Debian's layout), else PATH.
fn newest_pg_bin() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .max();
    newest.map_or_else(PathBuf::new, |major| {
        PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"))
    })
}

async fn open_s3(opts: &S3Options) -> Result<Arc<dyn Storage>, OpsError> {
    let storage = S3Storage::open(opts.clone())
        .await
        .map_err(OpsError::OpenS3Repository)?;
    Ok(Arc::new(storage))
}

/// `s` as one word of a shell command line (`restore_command`, `archive_command`).
pub fn shell_quote(s: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b"/._-+:=,".contains(&b);
    if !s.is_empty() && s.bytes().all(plain) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_survive_quotes_and_spaces() {
        assert_eq!(shell_quote("/srv/backups"), "/srv/backups");
        assert_eq!(shell_quote("it's here"), r"'it'\''s here'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("100%\\x"), "'100%\\x'");
    }

    #[test]
    fn defaults_resolve_and_bad_values_name_their_key() {
        let settings = Settings::resolve(ConfigFile::default(), None).expect("defaults resolve");
        assert_eq!(settings.wal_wait, Duration::from_secs(300));
        assert_eq!(settings.repack_unused_percent, 30);
        assert!(settings.backup_dir().is_err());
        let file = ConfigFile {
            compression_level: Some(40),
            ..ConfigFile::default()
        };
        let err = Settings::resolve(file, None).expect_err("level 40 is refused");
        assert!(err.to_string().contains("out of range"), "{err}");
        let file = ConfigFile {
            repack_unused_percent: Some(0),
            ..ConfigFile::default()
        };
        let err = Settings::resolve(file, None).expect_err("0 % is refused");
        assert!(
            err.to_string().starts_with("repack-unused-percent = 0"),
            "{err}"
        );
    }

    #[test]
    fn server_side_encryption_is_one_of_s3s_and_checked_with_its_key() {
        let with = |sse: Option<&str>, key: Option<&str>| {
            let file = ConfigFile {
                s3_bucket: Some("bucket".into()),
                s3_sse: sse.map(str::to_string),
                s3_sse_kms_key_id: key.map(str::to_string),
                ..ConfigFile::default()
            };
            Settings::resolve(file, None).map(|s| s.s3.and_then(|o| o.sse))
        };
        assert_eq!(
            with(Some("AES256"), None).expect("AES256"),
            Some(storage::ServerSideEncryption::Aes256)
        );
        assert_eq!(
            with(Some("aws:kms"), Some("alias/backups")).expect("kms"),
            Some(storage::ServerSideEncryption::Kms {
                key_id: Some("alias/backups".into())
            })
        );
        assert_eq!(with(None, None).expect("none"), None);
        let err = with(Some("aes256"), None).expect_err("case matters to S3");
        assert!(err.to_string().contains("AES256"), "{err}");
        let err = with(Some("AES256"), Some("k")).expect_err("a key without kms");
        assert!(err.to_string().contains("aws:kms"), "{err}");
    }

    #[test]
    fn repository_arguments_name_the_repository_and_no_secret() {
        let file = ConfigFile {
            backup_dir: Some("/srv/it's here".into()),
            s3_bucket: Some("s3://bucket/prefix".into()),
            aws_secret_access_key: Some("SECRET".into()),
            aws_access_key_id: Some("ID".into()),
            ..ConfigFile::default()
        };
        let settings = Settings::resolve(file, None).expect("resolves");
        let args = settings.repository_args().expect("has a backup dir");
        assert_eq!(
            args,
            [
                "--backup-dir",
                "/srv/it's here",
                "--s3-bucket",
                "bucket/prefix"
            ]
        );
        assert!(!format!("{settings:?}").contains("SECRET"));
    }
}
