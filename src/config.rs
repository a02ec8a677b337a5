//! Settings: the TOML file (`--config`, `LIFELINE_CONFIG`), overridden by the environment,
//! overridden by flags. Unknown keys are errors: a silently ignored typo can lose data.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ops::config_file::{ConfigFile, duration_key, mib_to_bytes, parse_duration, seconds};
use storage::retry::RetryPolicy;
use storage::{Codec, Compression, LocalStorage, S3Options, S3Storage, StaticCredentials, Storage};

#[derive(Debug)]
pub struct Settings {
    pub config_file: Option<PathBuf>,
    pub backup_dir: Option<PathBuf>,
    pub catalog: Option<PathBuf>,
    pub compression: Compression,
    pub block_size: usize,
    pub parallelism: usize,
    pub wal_wait: Duration,
    pub db: archiver::ConnectionOptions,
    pub pgdata: Option<PathBuf>,
    /// The S3 repository, when there is one (the local directory then holds the catalog only).
    pub s3: Option<S3Options>,
    /// Packs uploaded or chunk groups downloaded at once; `None` picks by repository kind.
    pub transfers: Option<usize>,
    pub prefetch: Prefetch,
    pub redis: archiver::RedisOptions,
    /// The database a `--target staging` dump restore recreates.
    pub staging_db: String,
    /// `pg-bin-dir` / `PG_BIN_DIR` when set; see [`Settings::pg_bin`].
    pg_bin_dir: Option<PathBuf>,
    pub retention: catalog::RetentionPolicy,
    /// Unreferenced packs younger than this are left to the backup that may be writing them.
    pub prune_grace: Duration,
    /// Packs with at least this share of dead bytes are rewritten with their live chunks only.
    pub repack_unused_percent: u64,
    pub ops: OpsSettings,
}

/// What the operations commands (failover, verify-recovery, drill) and notifications use.
#[derive(Debug, Default)]
pub struct OpsSettings {
    pub notify: ops::NotifyConfig,
    pub verify: ops::VerifyConfig,
    pub failover: ops::FailoverConfig,
    pub services: std::collections::BTreeMap<String, ops::ServiceConfig>,
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

#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// TOML configuration file.
    #[arg(long, global = true, env = "LIFELINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// The local repository (and home of the catalog and logs).
    #[arg(long, global = true, env = "BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// The SQLite catalog (default BACKUP_DIR/catalog.db).
    #[arg(long, global = true, env = "LIFELINE_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// zstd (default), gzip or none.
    #[arg(long, global = true, env = "LIFELINE_COMPRESSION")]
    pub compression: Option<String>,
    /// zstd 1-19 (default 3), gzip 0-9 (default 6).
    #[arg(long, global = true, env = "LIFELINE_COMPRESSION_LEVEL")]
    pub compression_level: Option<i32>,
    /// Chunks compressed, uploaded or fetched at once (default: number of CPUs, at least 2).
    #[arg(long, global = true, env = "LIFELINE_PARALLELISM")]
    pub parallelism: Option<usize>,
    /// Packs uploaded or chunk groups downloaded at once (default 2-3 local, 8 on S3).
    #[arg(long, global = true, env = "LIFELINE_TRANSFERS")]
    pub transfers: Option<usize>,
    /// The repository is S3: BUCKET, BUCKET/PREFIX or s3://BUCKET/PREFIX.
    #[arg(long, global = true, env = "S3_BACKUP_BUCKET")]
    pub s3_bucket: Option<String>,
    /// S3-compatible endpoint URL (path-style addressing is then used).
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,
    /// S3 region (default: the AWS profile's, else us-east-1).
    #[arg(long, global = true, env = "AWS_REGION")]
    pub s3_region: Option<String>,
    /// Segments `wal fetch` reads ahead into the spool (0 turns prefetch off).
    #[arg(long, global = true, env = "LIFELINE_WAL_PREFETCH")]
    pub wal_prefetch: Option<usize>,
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
fn from_env<T: std::str::FromStr>(slot: &mut Option<T>, name: &str, what: &str) -> Result<()> {
    if let Some(v) = env(name) {
        let parsed = v
            .parse()
            .map_err(|_| anyhow::anyhow!("{name}={v:?} is not {what}"))?;
        *slot = Some(parsed);
    }
    Ok(())
}

/// The environment's settings over the file's.
fn overlay_environment(file: &mut ConfigFile) -> Result<()> {
    for (slot, name) in [
        (&mut file.db_host, "DB_HOST"),
        (&mut file.db_user, "DB_USER"),
        (&mut file.db_password, "DB_PASSWORD"),
        (&mut file.db_name, "DB_NAME"),
        (&mut file.redis_host, "REDIS_HOST"),
        (&mut file.redis_password, "REDIS_PASSWORD"),
        (&mut file.staging_db_name, "STAGING_DB_NAME"),
    ] {
        from_env(slot, name, "text")?;
    }
    from_env(&mut file.db_port, "DB_PORT", "a port number")?;
    from_env(&mut file.redis_port, "REDIS_PORT", "a port number")?;
    from_env(&mut file.pgdata, "PGDATA", "a path")?;
    from_env(&mut file.pg_bin_dir, "PG_BIN_DIR", "a path")?;
    Ok(())
}

fn bool_env(name: &str) -> Result<Option<bool>> {
    match env(name) {
        None => Ok(None),
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(Some(true)),
            "0" | "false" | "no" | "off" => Ok(Some(false)),
            _ => bail!("{name}={v:?} is not true or false"),
        },
    }
}

fn ops_settings(file: &ConfigFile) -> Result<OpsSettings> {
    let mut notify = file.notify.clone();
    notify.slack_webhook_url = env("SLACK_WEBHOOK_URL").or(notify.slack_webhook_url);
    notify.email_to = env("NOTIFICATION_EMAIL").or(notify.email_to);
    notify.smtp_password = env("SMTP_PASSWORD").or(notify.smtp_password);
    if let Some(url) = &notify.slack_webhook_url
        && !url.starts_with("https://")
        && !url.starts_with("http://")
    {
        bail!("SLACK_WEBHOOK_URL (or slack-webhook-url) must be an http(s) URL");
    }
    let mut failover = file.failover.clone();
    failover.replica_host = env("REPLICA_HOST").or(failover.replica_host);
    if let Some(p) = env("REPLICA_PORT") {
        failover.replica_port = Some(
            p.parse()
                .with_context(|| format!("REPLICA_PORT={p:?} is not a port number"))?,
        );
    }
    // Checked now: a typing error is found before the incident, not during it.
    failover.promote_timeout()?;
    for (name, service) in &file.services {
        service.timeout(name)?;
    }
    Ok(OpsSettings {
        notify,
        verify: file.verify.clone(),
        failover,
        services: file.services.clone(),
        drill_dir: file.drill_dir.clone().map(absolute),
        redis_configured: file.redis_host.is_some(),
        simulate: bool_env("SIMULATE_MODE")?.unwrap_or(false),
    })
}

impl Settings {
    pub fn resolve(args: &GlobalArgs) -> Result<Settings> {
        let mut file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("read the configuration file {}", path.display()))?;
                ConfigFile::parse(&text).with_context(|| {
                    format!(
                        "parse the configuration file {} (fix the key or value named above)",
                        path.display()
                    )
                })?
            }
            None => ConfigFile::default(),
        };
        overlay_environment(&mut file)?;
        let s3 = s3_options(args, &file)?;
        let ops = ops_settings(&file)?;
        let is_s3 = s3.is_some();
        let codec: Codec = args
            .compression
            .clone()
            .or(file.compression)
            .unwrap_or_else(|| "zstd".into())
            .parse()
            .map_err(anyhow::Error::msg)?;
        let level = args
            .compression_level
            .or(file.compression_level)
            .unwrap_or(match codec {
                Codec::Gzip => 6,
                _ => 3,
            });
        let valid = match codec {
            Codec::Zstd => (1..=19).contains(&level),
            Codec::Gzip => (0..=9).contains(&level),
            Codec::None => true,
        };
        if !valid {
            bail!(
                "compression level {level} is out of range for {codec:?}: zstd takes 1-19, gzip 0-9"
            );
        }
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let dbname = file.db_name.unwrap_or_else(|| "postgres".into());
        Ok(Settings {
            config_file: args.config.clone().map(absolute),
            backup_dir: args.backup_dir.clone().or(file.backup_dir).map(absolute),
            catalog: args.catalog.clone().or(file.catalog).map(absolute),
            compression: Compression {
                codec,
                level,
                workers: 0,
            },
            block_size: file
                .block_size
                .unwrap_or(storage::chunking::DEFAULT_BLOCK_SIZE),
            parallelism: args.parallelism.or(file.parallelism).unwrap_or(cpus.max(2)),
            wal_wait: duration_key(
                ("wal-wait", file.wal_wait.as_deref()),
                ("wal-wait-seconds", file.wal_wait_seconds, 1),
            )?
            .unwrap_or(Duration::from_secs(300)),
            db: archiver::ConnectionOptions {
                host: file.db_host.unwrap_or_else(|| "localhost".into()),
                port: file.db_port.unwrap_or(5432),
                user: file.db_user.unwrap_or_else(|| "postgres".into()),
                password: file.db_password,
                dbname: dbname.clone(),
            },
            pgdata: file.pgdata,
            s3,
            transfers: args.transfers.or(file.transfers),
            prefetch: Prefetch {
                segments: args.wal_prefetch.or(file.wal_prefetch).unwrap_or(if is_s3 {
                    8
                } else {
                    0
                }),
                bytes: mib_to_bytes(file.wal_prefetch_mib.unwrap_or(512), "wal-prefetch-mib")?,
                spool_dir: file.wal_spool_dir.map(absolute),
            },
            staging_db: file
                .staging_db_name
                .unwrap_or_else(|| format!("{dbname}_staging")),
            pg_bin_dir: file.pg_bin_dir,
            retention: catalog::RetentionPolicy {
                daily: file.keep_daily.unwrap_or(7),
                weekly: file.keep_weekly.unwrap_or(4),
                monthly: file.keep_monthly.unwrap_or(12),
                wal_days: file.wal_days.unwrap_or(7),
            },
            prune_grace: match env_duration("LIFELINE_PRUNE_GRACE")? {
                Some(grace) => grace,
                None => duration_key(
                    ("prune-grace", file.prune_grace.as_deref()),
                    ("prune-grace-hours", file.prune_grace_hours, 3600),
                )?
                .unwrap_or(Duration::from_secs(24 * 3600)),
            },
            repack_unused_percent: match file.repack_unused_percent {
                Some(p @ 1..=100) => p,
                Some(p) => bail!(
                    "repack-unused-percent = {p}: use 1-100 (100 repacks nothing, only wholly unused packs are deleted)"
                ),
                None => 30,
            },
            redis: archiver::RedisOptions {
                host: file.redis_host.unwrap_or_else(|| "127.0.0.1".into()),
                port: file.redis_port.unwrap_or(6379),
                password: file.redis_password,
            },
            ops,
        })
    }

    pub fn backup_dir(&self) -> Result<&Path> {
        self.backup_dir.as_deref().context(if self.s3.is_some() {
            "no local directory for the catalog, logs and WAL spool: set BACKUP_DIR (the \
             repository itself is in S3)"
        } else {
            "no repository configured: set BACKUP_DIR (or --backup-dir, or backup-dir in the \
             config file), or S3_BACKUP_BUCKET for an S3 repository"
        })
    }

    pub fn catalog_path(&self) -> Result<PathBuf> {
        match &self.catalog {
            Some(path) => Ok(path.clone()),
            None => Ok(self.backup_dir()?.join("catalog.db")),
        }
    }

    /// The repository for commands that write (a local one must exist and belong to this user).
    pub async fn repository_for_writing(&self) -> Result<Arc<dyn Storage>> {
        if let Some(opts) = &self.s3 {
            return open_s3(opts).await;
        }
        let dir = self.backup_dir()?;
        Ok(Arc::new(
            LocalStorage::open(dir).context("open the repository")?,
        ))
    }

    /// The repository for commands that read: a local one must exist.
    pub async fn repository(&self) -> Result<Arc<dyn Storage>> {
        if let Some(opts) = &self.s3 {
            return open_s3(opts).await;
        }
        let dir = self.backup_dir()?;
        Ok(Arc::new(
            LocalStorage::open_existing(dir).context("open the repository")?,
        ))
    }

    /// Uploads in flight during a backup.
    pub fn upload_transfers(&self) -> usize {
        self.transfers
            .unwrap_or(if self.s3.is_some() { 8 } else { 2 })
            .max(1)
    }

    /// Reads in flight during a restore.
    pub fn download_transfers(&self) -> usize {
        self.transfers
            .unwrap_or(if self.s3.is_some() {
                8
            } else {
                self.parallelism + 1
            })
            .max(1)
    }

    pub fn open_catalog(&self) -> Result<catalog::Catalog> {
        let path = self.catalog_path()?;
        catalog::Catalog::open(&path)
            .with_context(|| format!("open the catalog {}", path.display()))
    }

    /// The arguments that find this repository again (paths and locations, never secrets).
    pub fn repository_args(&self) -> Result<Vec<String>> {
        let mut args = Vec::new();
        let mut push = |flag: &str, value: String| {
            args.push(flag.to_string());
            args.push(value);
        };
        if let Some(config) = &self.config_file {
            push("--config", config.to_string_lossy().into_owned());
        }
        push(
            "--backup-dir",
            self.backup_dir()?.to_string_lossy().into_owned(),
        );
        if let Some(catalog) = &self.catalog {
            push("--catalog", catalog.to_string_lossy().into_owned());
        }
        if let Some(s3) = &self.s3 {
            let location = if s3.prefix.is_empty() {
                s3.bucket.clone()
            } else {
                format!("{}/{}", s3.bucket, s3.prefix)
            };
            push("--s3-bucket", location);
            if let Some(endpoint) = &s3.endpoint {
                push("--s3-endpoint", endpoint.clone());
            }
            if let Some(region) = &s3.region {
                push("--s3-region", region.clone());
            }
        }
        Ok(args)
    }

    /// [`Settings::repository_args`] quoted for a shell command line (`restore_command`).
    pub fn repository_flags(&self) -> Result<String> {
        Ok(self
            .repository_args()?
            .iter()
            .map(|a| format!(" {}", shell_quote(a)))
            .collect())
    }

    /// Where pg_dump, pg_restore, psql, createdb and dropdb are ("" for PATH). Looked up only
    /// by the dump commands, not by every `wal push`.
    pub fn pg_bin(&self) -> PathBuf {
        self.pg_bin_dir.clone().unwrap_or_else(newest_pg_bin)
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
        let root = self.spool_dir()?;
        Some(restore::Spool::new(
            root,
            self.prefetch.segments,
            self.prefetch.bytes,
        ))
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

async fn open_s3(opts: &S3Options) -> Result<Arc<dyn Storage>> {
    let storage = S3Storage::open(opts.clone())
        .await
        .context("open the S3 repository")?;
    Ok(Arc::new(storage))
}

/// A duration from `NAME` (human text, or a bare number of seconds) or from `NAME_SECONDS`,
/// the name it had before.
fn env_duration(name: &str) -> Result<Option<Duration>> {
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

/// The S3 repository settings, when a bucket is named anywhere.
fn s3_options(args: &GlobalArgs, file: &ConfigFile) -> Result<Option<S3Options>> {
    let Some(location) = args.s3_bucket.clone().or(file.s3_bucket.clone()) else {
        return Ok(None);
    };
    let mut opts = S3Options::for_location(&location).map_err(anyhow::Error::msg)?;
    opts.endpoint = args.s3_endpoint.clone().or(file.s3_endpoint.clone());
    opts.region = args.s3_region.clone().or(file.s3_region.clone());
    opts.path_style = file.s3_path_style.unwrap_or(opts.endpoint.is_some());
    if let Some(mib) = file.s3_part_size_mib {
        opts.part_size = usize::try_from(mib_to_bytes(mib as u64, "s3-part-size-mib")?)
            .context("s3-part-size-mib: too large for this machine")?;
        opts.single_put_max = opts.single_put_max.max(opts.part_size);
    }
    let retry = match env_duration("LIFELINE_S3_RETRY")? {
        Some(retry) => Some(retry),
        None => duration_key(
            ("s3-retry", file.s3_retry.as_deref()),
            ("s3-retry-seconds", file.s3_retry_seconds, 1),
        )?,
    };
    if let Some(deadline) = retry {
        opts.retry = RetryPolicy {
            deadline,
            ..RetryPolicy::default()
        };
    }
    if let Some(path) = env("AWS_CA_BUNDLE")
        .map(PathBuf::from)
        .or(file.s3_ca_file.clone())
    {
        opts.ca_bundle = Some(std::fs::read(&path).with_context(|| {
            format!(
                "read the CA bundle {} (AWS_CA_BUNDLE or s3-ca-file)",
                path.display()
            )
        })?);
    }
    // The standard sources (the environment first) win over the file, as for every setting.
    if env("AWS_ACCESS_KEY_ID").is_none()
        && let (Some(id), Some(secret)) = (&file.aws_access_key_id, &file.aws_secret_access_key)
    {
        opts.credentials = Some(StaticCredentials {
            access_key_id: id.clone(),
            secret_access_key: secret.clone(),
        });
    }
    Ok(Some(opts))
}

pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=,".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}
