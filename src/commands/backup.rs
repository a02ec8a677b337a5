use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};

use ops::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum BackupCommand {
    /// Back up PostgreSQL: base (physical, default) or dump (logical).
    Postgres {
        #[arg(long, value_parser = storage::BackupKind::parse_postgres, default_value = "base", help = "base (physical) or dump (logical)")]
        kind: storage::BackupKind,
        /// Read the data files from the [standby] (a streaming replica) instead of the primary;
        /// fails when it cannot be read (backup-standby = "prefer" falls back instead).
        #[arg(long)]
        from_standby: bool,
    },
    /// Back up Redis: an RDB snapshot over the replication protocol (REDIS_HOST, REDIS_PORT,
    /// REDIS_PASSWORD).
    Redis {
        #[arg(long, value_parser = storage::BackupKind::parse_redis, default_value = "rdb", help = "rdb (snapshot) or aof (append-only files)")]
        kind: storage::BackupKind,
    },
}

impl BackupCommand {
    /// How `.backup_status` names this backup: `backup postgres base`, `backup redis rdb`.
    pub fn operation(&self) -> String {
        match self {
            BackupCommand::Postgres { kind, .. } => format!("backup postgres {kind}"),
            BackupCommand::Redis { kind } => format!("backup redis {kind}"),
        }
    }
}

pub async fn run(cmd: BackupCommand, settings: &Settings) -> Result<ExitCode> {
    let (kind, from_standby) = match cmd {
        BackupCommand::Postgres { kind, from_standby } => (kind, from_standby),
        BackupCommand::Redis { kind } => return backup_redis(kind, settings).await,
    };
    if kind == storage::BackupKind::Dump {
        return super::dump::backup(settings).await;
    }
    let storage = settings.repository_to_write().await?;
    let opts = archiver::BaseBackupOptions {
        connection: super::platform::connection(settings.database()),
        data_dir: settings.pgdata.clone(),
        compression: settings.compression,
        block_size: settings.block_size,
        parallelism: settings.parallelism,
        transfers: settings.upload_transfers(),
        retention: settings.retention,
        wal_wait: settings.wal_wait,
        catalog_path: settings.catalog_path()?,
        standby: super::platform::standby(settings, from_standby)?,
        progress: ops::progress::for_operation("backup"),
    };
    if settings.ops.simulate {
        let preview = archiver::preview_base_backup(storage.as_ref(), &opts).await;
        println!("{}", preview.context("base backup")?);
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    let manifest = archiver::run_base_backup(storage, &opts)
        .await
        .context("base backup")?;
    println!("{}", manifest.summary(started.elapsed().as_secs_f64()));
    Ok(ExitCode::SUCCESS)
}

async fn backup_redis(kind: storage::BackupKind, settings: &Settings) -> Result<ExitCode> {
    let storage = settings.repository_to_write().await?;
    let opts = archiver::RdbBackupOptions {
        redis: super::platform::redis_client(&settings.redis),
        compression: settings.compression,
        parallelism: settings.parallelism,
        transfers: settings.upload_transfers(),
        retention: settings.retention,
        catalog_path: settings.catalog_path()?,
        progress: ops::progress::for_operation("backup"),
    };
    if settings.ops.simulate {
        let preview = archiver::preview_redis(storage.as_ref(), &opts, kind).await;
        println!("{}", preview.context("Redis backup")?);
        return Ok(ExitCode::SUCCESS);
    }
    let started = Instant::now();
    let manifest = if kind == storage::BackupKind::Aof {
        archiver::run_aof_backup(storage, &opts).await
    } else {
        archiver::run_rdb_backup(storage, &opts).await
    };
    let manifest = manifest.with_context(|| {
        format!(
            "Redis {} backup of {}:{}",
            kind.as_str().to_uppercase(),
            settings.redis.host,
            settings.redis.port
        )
    })?;
    println!("{}", manifest.summary(started.elapsed().as_secs_f64()));
    Ok(ExitCode::SUCCESS)
}
