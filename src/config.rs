//! Settings: the TOML file (`--config`, `LIFELINE_CONFIG`), overridden by the environment,
//! overridden by flags. Unknown keys are errors: a silently ignored typo can lose data.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use storage::{Codec, Compression, LocalStorage, Storage};

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct FileConfig {
    pub backup_dir: Option<PathBuf>,
    pub catalog: Option<PathBuf>,
    pub compression: Option<String>,
    pub compression_level: Option<i32>,
    pub block_size: Option<usize>,
    pub parallelism: Option<usize>,
    pub wal_wait_seconds: Option<u64>,
    pub db_host: Option<String>,
    pub db_port: Option<u16>,
    pub db_user: Option<String>,
    pub db_password: Option<String>,
    pub db_name: Option<String>,
    pub pgdata: Option<PathBuf>,
}

/// What every command works from, resolved once before any I/O.
#[derive(Debug)]
pub struct Settings {
    pub config_file: Option<PathBuf>,
    pub backup_dir: Option<PathBuf>,
    pub catalog: Option<PathBuf>,
    pub compression: Compression,
    pub block_size: usize,
    pub parallelism: usize,
    pub wal_wait_seconds: u64,
    pub db: archiver::ConnectionOptions,
    pub pgdata: Option<PathBuf>,
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

impl Settings {
    pub fn resolve(args: &GlobalArgs) -> Result<Settings> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("read the configuration file {}", path.display()))?;
                toml::from_str::<FileConfig>(&text).with_context(|| {
                    format!(
                        "parse the configuration file {} (fix the key or value named above)",
                        path.display()
                    )
                })?
            }
            None => FileConfig::default(),
        };
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
        let port = match env("DB_PORT") {
            Some(p) => Some(
                p.parse::<u16>()
                    .with_context(|| format!("DB_PORT={p:?} is not a port number"))?,
            ),
            None => file.db_port,
        };
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
            wal_wait_seconds: file.wal_wait_seconds.unwrap_or(300),
            db: archiver::ConnectionOptions {
                host: env("DB_HOST")
                    .or(file.db_host)
                    .unwrap_or_else(|| "localhost".into()),
                port: port.unwrap_or(5432),
                user: env("DB_USER")
                    .or(file.db_user)
                    .unwrap_or_else(|| "postgres".into()),
                password: env("DB_PASSWORD").or(file.db_password),
                dbname: env("DB_NAME")
                    .or(file.db_name)
                    .unwrap_or_else(|| "postgres".into()),
            },
            pgdata: env("PGDATA").map(PathBuf::from).or(file.pgdata),
        })
    }

    pub fn backup_dir(&self) -> Result<&Path> {
        self.backup_dir.as_deref().context(
            "no repository configured: set BACKUP_DIR (or --backup-dir, or backup-dir in the config file)",
        )
    }

    pub fn catalog_path(&self) -> Result<PathBuf> {
        match &self.catalog {
            Some(path) => Ok(path.clone()),
            None => Ok(self.backup_dir()?.join("catalog.db")),
        }
    }

    /// The repository for commands that write (created on first use).
    pub fn repository_for_writing(&self) -> Result<Arc<dyn Storage>> {
        let dir = self.backup_dir()?;
        Ok(Arc::new(
            LocalStorage::open(dir).context("open the repository")?,
        ))
    }

    /// The repository for commands that read: it must exist.
    pub fn repository(&self) -> Result<Arc<dyn Storage>> {
        let dir = self.backup_dir()?;
        Ok(Arc::new(
            LocalStorage::open_existing(dir).context("open the repository")?,
        ))
    }

    pub fn open_catalog(&self) -> Result<catalog::Catalog> {
        let path = self.catalog_path()?;
        catalog::Catalog::open(&path)
            .with_context(|| format!("open the catalog {}", path.display()))
    }

    /// The flags a `restore_command` needs to find this repository again (paths only, never secrets).
    pub fn repository_flags(&self) -> Result<String> {
        let mut flags = String::new();
        if let Some(config) = &self.config_file {
            flags.push_str(&format!(
                " --config {}",
                shell_quote(&config.to_string_lossy())
            ));
        }
        flags.push_str(&format!(
            " --backup-dir {}",
            shell_quote(&self.backup_dir()?.to_string_lossy())
        ));
        if let Some(catalog) = &self.catalog {
            flags.push_str(&format!(
                " --catalog {}",
                shell_quote(&catalog.to_string_lossy())
            ));
        }
        Ok(flags)
    }
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
