use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use jiff::tz::TimeZone;
use restore::{BackupSelector, RedisSource};

use ops::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum RestoreCommand {
    /// Restore PostgreSQL: a full backup, or to a point in time (--type pitr --until ...).
    Postgres(PostgresArgs),
    /// Restore Redis files into a data directory (--type rdb).
    Redis(RedisArgs),
}

#[derive(Debug, clap::Args)]
pub struct RedisArgs {
    #[arg(long = "type", value_parser = storage::BackupKind::parse_redis, default_value = "rdb", help = "rdb (snapshot) or aof (append-only files)")]
    kind: storage::BackupKind,
    /// latest, daily, weekly, monthly, YYYYMMDD or a backup id.
    #[arg(long, default_value = "latest")]
    from: String,
    /// Restore from a file instead of the repository.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Redis's data directory (its `dir`); created if missing. No redis-server may run there.
    #[arg(long)]
    data_dir: PathBuf,
    /// Load the restored files into a scratch redis-server and compare its key counts with the
    /// backup's (skipped when redis-server is not installed): --verify false or --skip-verify
    /// turns it off.
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new(), default_value = "true")]
    verify: bool,
    /// Do not load the restored files into a scratch redis-server (the same as --verify false).
    #[arg(long, env = "SKIP_VERIFICATION", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    skip_verify: bool,
}

#[derive(Debug, clap::Args)]
pub struct PostgresArgs {
    #[arg(long = "type", value_enum, help = "full, or pitr (with --until)")]
    restore_type: restore::RestoreType,
    /// latest, daily, weekly, monthly, YYYYMMDD or a backup id.
    #[arg(long, default_value = "latest")]
    from: String,
    /// Target time for --type pitr: "YYYY-MM-DD HH:MM:SS", local time unless it carries an
    /// offset; `latest` replays everything archived.
    #[arg(long)]
    until: Option<String>,
    /// Restore a pg_dump custom-format file instead of a backup (`.dump` or `.dump.gz`).
    #[arg(long)]
    file: Option<PathBuf>,
    /// base (physical) or dump (logical).
    #[arg(long, value_parser = storage::BackupKind::parse_postgres, default_value = "base")]
    kind: storage::BackupKind,
    /// The data directory to restore into: empty or new (with --delta, a stopped data directory
    /// of the backup's cluster).
    #[arg(long, env = "PGDATA")]
    data_dir: Option<PathBuf>,
    /// For a dump: production (DB_NAME) or staging (STAGING_DB_NAME).
    #[arg(long, value_enum, default_value_t)]
    target: restore::Target,
    /// Skip checking that every chunk exists before writing (chunks are still verified as read).
    #[arg(long, env = "SKIP_VERIFICATION", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    skip_verify: bool,
    /// Put tablespace NAME (its name or oid) into DIR, which must be empty or new (with --delta,
    /// also the directory the data directory's pg_tblspc/<oid> leads to). Repeatable.
    #[arg(long = "tablespace-map", value_name = "NAME=DIR", value_parser = restore::TablespaceMapping::parse_entry)]
    tablespace_map: Vec<(String, PathBuf)>,
    /// Put every tablespace not named by --tablespace-map into DIR/<name>.
    #[arg(long = "tablespace-map-all", value_name = "DIR")]
    tablespace_map_all: Option<PathBuf>,
    /// Put pg_wal in DIR (empty or new; with --delta, also the directory the data directory's
    /// pg_wal leads to), linked from the data directory (default: inside it).
    #[arg(long, value_name = "DIR")]
    waldir: Option<PathBuf>,
    /// off: the restored server archives nothing (archive_mode = off); preserve: keep the
    /// backed-up server's archive settings (only for the server that becomes the primary).
    #[arg(long, value_name = "off|preserve", default_value = "off")]
    archive_mode: restore::ArchiveMode,
    /// The timeline recovery follows: latest (the newest archived), current (the backup's) or a
    /// number (--type pitr; default latest).
    #[arg(long, value_name = "latest|current|N")]
    target_timeline: Option<restore::TargetTimeline>,
    /// Reuse the existing data directory of the backup's cluster (server stopped): keep what
    /// already matches the backup, rewrite what differs, remove what it does not hold.
    #[arg(long)]
    delta: bool,
    /// With --delta: reuse the directory even though its pg_wal may hold WAL never archived
    /// (the server crashed, or segments are still marked .ready), giving that WAL up, as after
    /// a failover to another server.
    #[arg(long, requires = "delta")]
    discard_unarchived_wal: bool,
}

pub async fn run(cmd: RestoreCommand, settings: &Settings) -> Result<ExitCode> {
    let args = match cmd {
        RestoreCommand::Postgres(args) => args,
        RestoreCommand::Redis(args) => return restore_redis(args, settings).await,
    };
    if args.kind == storage::BackupKind::Dump || args.file.is_some() {
        if args.delta {
            bail!("--delta applies to base backups only: a dump is restored whole with pg_restore");
        }
        if args.restore_type != restore::RestoreType::Full {
            bail!("a dump restores whole: use --type full with --kind dump");
        }
        return super::dump::restore(&args.from, args.file, args.target, settings).await;
    }
    args.target.refuse_for_base()?;
    let Some(data_dir) = args.data_dir.clone() else {
        bail!("name the directory to restore into with --data-dir DIR (or PGDATA)");
    };
    let request = restore::RestoreRequest::new(
        args.restore_type,
        args.until.as_deref(),
        &args.from,
        args.target_timeline,
        TimeZone::system(),
    )?;
    let storage = settings.repository().await?;
    let catalog = settings.open_catalog()?;
    let mut said = Vec::new();
    let planned = restore::plan_restore(storage.as_ref(), &catalog, &request, &mut said).await;
    said.iter().for_each(|line| println!("{line}"));
    let plan = planned?;
    let choices = restore::RestoreChoices {
        tablespaces: restore::TablespaceMapping {
            each: args.tablespace_map.clone(),
            all: args.tablespace_map_all.clone(),
        },
        waldir: args.waldir.clone(),
        archive_mode: args.archive_mode,
        timeline: plan.timeline,
        delta: args.delta,
        discard_unarchived_wal: args.discard_unarchived_wal,
    };
    let mut options =
        settings.postgres_restore_options(&plan.backup, !args.skip_verify, choices)?;
    // Run as root and still root (a repository of root's, or none on this machine): what it
    // restores goes to the owner of the data directory or of the directory it is made in, as
    // in a failover, or PostgreSQL would refuse to start on it.
    options.owner =
        storage::private::Owner::of(&std::path::absolute(&data_dir).unwrap_or(data_dir.clone()));
    let binaries = settings.server_binaries();
    let needs = binaries.for_backup(storage.as_ref(), &plan.backup).await?;
    println!("{needs}");
    if settings.ops.simulate {
        let preview = restore::preview_restore(
            storage.as_ref(),
            &plan.backup,
            &plan.recovery,
            &data_dir,
            &options,
        );
        println!("{}", preview.await?);
        return Ok(ExitCode::SUCCESS);
    }
    let (id, into) = (&plan.backup.backup_id, data_dir.display());
    options.progress = ops::progress::for_operation("restore");
    options.progress.set_phase(&format!("{id} into {into}"));
    let restored =
        restore::restore_backup(storage, &plan.backup, &plan.recovery, &data_dir, &options).await?;
    println!("{restored}");
    if let Some(dir) = &settings.backup_dir {
        ops::status_file::record_restore(dir, id, &data_dir);
    }
    let bin_dir = needs.dir.ok();
    let advice = restored.start_advice(&plan.recovery, args.archive_mode, bin_dir.as_deref());
    println!("{advice}");
    Ok(ExitCode::SUCCESS)
}

async fn restore_redis(args: RedisArgs, settings: &Settings) -> Result<ExitCode> {
    let redis = super::platform::redis_client(&settings.redis);
    let served = tokio::task::spawn_blocking(move || archiver::redis_data_dir(&redis))
        .await
        .ok()
        .flatten();
    let address = format!("{}:{}", settings.redis.host, settings.redis.port);
    restore::refuse_if_redis_serves(&address, served, &args.data_dir).await?;
    if settings.ops.simulate {
        let (kind, dir) = (args.kind, &args.data_dir);
        let transfers = settings.download_transfers();
        let preview = match &args.file {
            Some(file) => {
                restore::preview_redis_restore(RedisSource::File(file), kind, dir, transfers).await
            }
            None => {
                let selector: BackupSelector = args.from.parse().map_err(anyhow::Error::msg)?;
                let backup =
                    restore::choose_redis_backup(&settings.open_catalog()?, &selector, kind)?;
                let storage = settings.repository().await?;
                let source = RedisSource::Backup {
                    storage: storage.as_ref(),
                    backup,
                };
                restore::preview_redis_restore(source, kind, dir, transfers).await
            }
        };
        println!("{}", preview?);
        return Ok(ExitCode::SUCCESS);
    }
    let restored = match &args.file {
        Some(file) => restore::restore_redis_from_file(file, &args.data_dir, args.kind).await?,
        None => {
            let selector: BackupSelector = args.from.parse().map_err(anyhow::Error::msg)?;
            let storage = settings.repository().await?;
            let catalog = settings.open_catalog()?;
            let options = restore::RedisRestoreOptions {
                transfers: settings.download_transfers(),
                owner: storage::private::Owner::KEEP,
                progress: ops::progress::for_operation("restore"),
            };
            restore::restore_redis_backup(
                &*storage,
                &catalog,
                &selector,
                args.kind,
                &args.data_dir,
                options,
            )
            .await?
        }
    };
    println!("{restored}");
    if args.verify && !args.skip_verify {
        let count_keys: restore::KeyCounter = Box::new(|port| {
            let scratch = archiver::RedisOptions {
                host: "127.0.0.1".into(),
                port,
                password: None,
            };
            archiver::keyspace(&scratch).map_err(Into::into)
        });
        println!("{}", restored.check_load(count_keys).await?);
    }
    Ok(ExitCode::SUCCESS)
}
