//! Settings: the TOML file (`--config`, `LIFELINE_CONFIG`), overridden by the environment,
//! overridden by flags (`ops::settings`). Unknown keys are errors: a silently ignored typo can
//! lose data.

use std::path::PathBuf;

use ops::{ConfigFile, Settings};

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
    /// An encrypted repository's passphrase file (mode 600); or LIFELINE_PASSPHRASE.
    #[arg(long, global = true, env = "LIFELINE_PASSPHRASE_FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// A command whose standard output is the passphrase.
    #[arg(long, global = true, hide = true)]
    pub passphrase_command: Option<String>,
    /// Refuse a repository that is not encrypted (written into restore_command).
    #[arg(long, global = true, hide = true)]
    pub require_encryption: bool,
    /// Segments `wal fetch` reads ahead into the spool (0 turns prefetch off).
    #[arg(long, global = true, env = "LIFELINE_WAL_PREFETCH")]
    pub wal_prefetch: Option<usize>,
}

impl GlobalArgs {
    /// The settings: the file's, the environment's over them, then these flags'.
    pub fn resolve(&self) -> Result<Settings, ops::OpsError> {
        let mut file = ConfigFile::load(self.config.as_deref())?;
        let paths = [
            (&mut file.backup_dir, &self.backup_dir),
            (&mut file.catalog, &self.catalog),
            (&mut file.passphrase_file, &self.passphrase_file),
        ];
        for (slot, flag) in paths {
            *slot = flag.clone().or(slot.take());
        }
        let texts = [
            (&mut file.compression, &self.compression),
            (&mut file.s3_bucket, &self.s3_bucket),
            (&mut file.s3_endpoint, &self.s3_endpoint),
            (&mut file.s3_region, &self.s3_region),
            (&mut file.passphrase_command, &self.passphrase_command),
        ];
        for (slot, flag) in texts {
            *slot = flag.clone().or(slot.take());
        }
        let counts = [
            (&mut file.parallelism, self.parallelism),
            (&mut file.transfers, self.transfers),
            (&mut file.wal_prefetch, self.wal_prefetch),
        ];
        for (slot, flag) in counts {
            *slot = flag.or(slot.take());
        }
        file.compression_level = self.compression_level.or(file.compression_level);
        if self.require_encryption {
            file.require_encryption = Some(true);
        }
        Settings::resolve(file, self.config.clone())
    }
}
