use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use jiff::tz::TimeZone;
use restore::BackupSelector;

use crate::config::{Settings, shell_quote};

#[derive(Debug, clap::Subcommand)]
pub enum RestoreCommand {
    /// Restore PostgreSQL: a full backup, or to a point in time (--type pitr --until ...).
    Postgres(PostgresArgs),
    /// Restore Redis files into a data directory (--type rdb).
    Redis(RedisArgs),
}

#[derive(Debug, clap::Args)]
pub struct RedisArgs {
    #[arg(long = "type", value_parser = ["rdb", "aof"], default_value = "rdb")]
    restore_type: String,
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

impl RedisArgs {
    fn load_check(&self) -> bool {
        self.verify && !self.skip_verify
    }
}

#[derive(Debug, clap::Args)]
pub struct PostgresArgs {
    #[arg(long = "type", value_parser = ["full", "pitr"])]
    restore_type: String,
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
    #[arg(long, value_parser = ["base", "dump"], default_value = "base")]
    kind: String,
    /// The data directory to restore into: must be empty or not exist.
    #[arg(long, env = "PGDATA")]
    data_dir: Option<PathBuf>,
    #[arg(long, value_parser = ["production", "staging"], default_value = "production")]
    target: String,
    /// Skip checking that every chunk exists before writing (chunks are still verified as read).
    #[arg(long, env = "SKIP_VERIFICATION", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    skip_verify: bool,
    /// Put tablespace NAME (its name or oid) into DIR, which must be empty or new. Repeatable.
    #[arg(long = "tablespace-map", value_name = "NAME=DIR", value_parser = parse_tablespace_map)]
    tablespace_map: Vec<(String, PathBuf)>,
    /// Put every tablespace not named by --tablespace-map into DIR/<name>.
    #[arg(long = "tablespace-map-all", value_name = "DIR")]
    tablespace_map_all: Option<PathBuf>,
    /// Put pg_wal in DIR (empty or new) and link it from the data directory; by default pg_wal
    /// is a directory inside the data directory.
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
}

fn parse_tablespace_map(text: &str) -> Result<(String, PathBuf), String> {
    match text.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            Ok((name.to_string(), PathBuf::from(dir)))
        }
        _ => Err(format!(
            "{text:?} is not NAME=DIR: give the tablespace's name or oid and the directory to put it in"
        )),
    }
}

pub async fn run(cmd: RestoreCommand, settings: &Settings) -> Result<ExitCode> {
    let args = match cmd {
        RestoreCommand::Postgres(args) => args,
        RestoreCommand::Redis(args) => return restore_redis(args, settings).await,
    };
    if args.kind == "dump" || args.file.is_some() {
        if args.restore_type != "full" {
            bail!("a dump restores whole: use --type full with --kind dump");
        }
        return super::dump::restore(&args.from, args.file, args.target == "staging", settings)
            .await;
    }
    let Some(data_dir) = args.data_dir.clone() else {
        bail!("name the directory to restore into with --data-dir DIR (or PGDATA)");
    };
    let request = restore::RestoreRequest::new(
        &args.restore_type,
        args.until.as_deref(),
        &args.from,
        args.target_timeline,
        TimeZone::system(),
    )?;
    let storage = settings.repository().await?;
    let catalog = settings.open_catalog()?;
    let mut said = Vec::new();
    let planned = restore::plan_restore(storage.as_ref(), &catalog, &request, &mut said).await;
    for line in &said {
        println!("{line}");
    }
    let plan = planned?;
    let choices = restore::RestoreChoices {
        tablespaces: restore::TablespaceMapping {
            each: args.tablespace_map.clone(),
            all: args.tablespace_map_all.clone(),
        },
        waldir: args.waldir.clone(),
        archive_mode: args.archive_mode,
        timeline: plan.timeline,
    };
    let options = postgres_options(settings, &plan.backup, !args.skip_verify, choices)?;
    let progress = super::spinner("restore");
    progress.set_message(format!(
        "{} into {}",
        plan.backup.backup_id,
        data_dir.display()
    ));
    let restored =
        restore::restore_backup(storage, &plan.backup, &plan.recovery, &data_dir, &options).await;
    progress.finish_and_clear();
    let restored = restored?;
    println!("{restored}");
    super::status_file::record_restore(settings, &plan.backup.backup_id, &data_dir);
    println!(
        "{}",
        restored.start_advice(&plan.recovery, args.archive_mode)
    );
    Ok(ExitCode::SUCCESS)
}

/// What a restore of `backup` needs from the settings; `restore_command` runs this binary's
/// `wal fetch` against the same repository.
pub fn postgres_options(
    settings: &Settings,
    backup: &catalog::BackupRecord,
    verify_first: bool,
    choices: restore::RestoreChoices,
) -> Result<restore::PostgresRestoreOptions> {
    let exe = std::env::current_exe().context("find the lifeline binary for restore_command")?;
    let Some(exe) = exe.to_str() else {
        bail!(
            "the lifeline binary's path {} is not UTF-8 and cannot be written into restore_command: install it under a UTF-8 path",
            exe.display()
        );
    };
    Ok(restore::PostgresRestoreOptions {
        restore_program: format!(
            "{}{} wal fetch --cluster {}",
            shell_quote(exe),
            settings.repository_flags()?,
            backup.system_identifier
        ),
        spool: settings.spool(),
        parallelism: settings.parallelism,
        downloads: settings.download_transfers(),
        verify_first,
        choices,
    })
}

async fn restore_redis(args: RedisArgs, settings: &Settings) -> Result<ExitCode> {
    refuse_if_redis_serves(settings, &args.data_dir).await?;
    let started = Instant::now();
    if let Some(file) = &args.file {
        if args.restore_type != "rdb" {
            bail!("--file takes an RDB file: use --type rdb");
        }
        let report = restore::restore_redis_file(file, &args.data_dir).with_context(|| {
            format!(
                "restore {} into {}",
                file.display(),
                args.data_dir.display()
            )
        })?;
        print_redis_restore(&file.display().to_string(), &args, &report, started, None);
        if args.load_check() {
            check_load(&args.data_dir, None, None).await?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let selector: BackupSelector = args.from.parse().map_err(anyhow::Error::msg)?;
    let storage = settings.repository().await?;
    let catalog = settings.open_catalog()?;
    let backups = catalog.backups(Some("redis"))?;
    let tz = TimeZone::system();
    let backup = restore::select_backup(
        &backups,
        &args.restore_type,
        &selector,
        jiff::Timestamp::now(),
        &tz,
    )
    .map_err(|e| {
        if backups.is_empty() {
            anyhow::anyhow!("the catalog lists no Redis backups: run `lifeline backup redis`")
        } else {
            anyhow::Error::new(e)
        }
    })?;
    let manifest = storage::manifest::StreamManifest::load(storage.as_ref(), &backup.backup_id)
        .await
        .with_context(|| format!("read the manifest of {}", backup.backup_id))?;
    super::take_lease(storage.as_ref(), &backup.backup_id).await;
    let report = restore::restore_redis(
        storage.as_ref(),
        &manifest,
        &args.data_dir,
        settings.download_transfers(),
    )
    .await
    .with_context(|| {
        format!(
            "restore {} into {}",
            backup.backup_id,
            args.data_dir.display()
        )
    })?;
    // An AOF restore names its manifest `<appenddirname>/<appendfilename>.manifest`.
    let aof = manifest.files.iter().find_map(|f| {
        let (subdir, file) = f.name.split_once('/')?;
        Some((
            subdir.to_string(),
            file.strip_suffix(".manifest")?.to_string(),
        ))
    });
    print_redis_restore(
        &format!("backup {}", backup.backup_id),
        &args,
        &report,
        started,
        Some((&manifest.counts, aof.as_ref())),
    );
    if args.load_check() {
        check_load(&args.data_dir, aof, Some(&manifest.counts)).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Refuse when the configured Redis works in `dir` (the restore would be overwritten by its
/// next save); `restore_redis` also looks at the local processes it may inspect.
async fn refuse_if_redis_serves(settings: &Settings, dir: &std::path::Path) -> Result<()> {
    let redis = settings.redis.clone();
    let served = tokio::task::spawn_blocking(move || archiver::redis_data_dir(&redis))
        .await
        .ok()
        .flatten();
    if let (Some(served), Ok(wanted)) = (served, std::fs::canonicalize(dir))
        && std::fs::canonicalize(&served).is_ok_and(|s| s == wanted)
    {
        bail!(
            "Redis at {}:{} is running in {}: stop it first (`redis-cli shutdown nosave` or \
             `systemctl stop redis-server`), then restore again; nothing was changed",
            settings.redis.host,
            settings.redis.port,
            dir.display()
        );
    }
    Ok(())
}

type Counts = std::collections::BTreeMap<String, u64>;

fn print_redis_restore(
    what: &str,
    args: &RedisArgs,
    report: &restore::RedisRestoreReport,
    started: Instant,
    recorded: Option<(&Counts, Option<&(String, String)>)>,
) {
    if let Some(aside) = &report.moved_aside {
        println!(
            "files that would have been loaded instead were moved to {}",
            aside.display()
        );
    }
    let how = match recorded.and_then(|(_, aof)| aof) {
        Some((subdir, file)) => {
            format!("appendonly yes, appenddirname {subdir}, appendfilename {file}")
        }
        None => "dbfilename dump.rdb and appendonly no (or it loads an AOF instead)".into(),
    };
    let keys = recorded.map_or_else(
        || "not recorded".to_string(),
        |(counts, _)| super::counts_line(counts),
    );
    println!(
        "restored {what} into {}: {} MiB in {:.1} s; keys at backup time: {keys}; start redis-server with dir {} and {how}",
        args.data_dir.display(),
        report.bytes >> 20,
        started.elapsed().as_secs_f64(),
        args.data_dir.display()
    );
}

/// Load the restored files into a throwaway redis-server; with `recorded` counts from an RDB
/// backup, its key counts must equal them.
async fn check_load(
    dir: &std::path::Path,
    aof: Option<(String, String)>,
    recorded: Option<&Counts>,
) -> Result<()> {
    let dir = dir.to_path_buf();
    let is_aof = aof.is_some();
    let found = tokio::task::spawn_blocking(move || loaded_key_counts(&dir, aof))
        .await
        .context("key count check")??;
    let Some(found) = found else {
        println!(
            "redis-server is not installed here: the restored files were not loaded (--verify false to silence)"
        );
        return Ok(());
    };
    let found: Counts = found
        .into_iter()
        .map(|(db, n)| (format!("db{db}"), n))
        .collect();
    match recorded {
        Some(recorded) if !is_aof && &found != recorded => bail!(
            "the restored files load with keys {} but the backup recorded {}: the restore is not the data that was backed up",
            super::counts_line(&found),
            super::counts_line(recorded)
        ),
        Some(_) if !is_aof => println!(
            "[PASS] a redis-server loaded the restored files with the recorded keys: {}",
            super::counts_line(&found)
        ),
        // An AOF's count was read while its files were pinned, under whatever writes ran:
        // that the files load is the check; the counts are for the operator.
        Some(recorded) => println!(
            "[PASS] a redis-server loaded the restored AOF: keys {} (recorded while copying: {})",
            super::counts_line(&found),
            super::counts_line(recorded)
        ),
        None => println!(
            "[PASS] a redis-server loaded the restored file: keys {}",
            super::counts_line(&found)
        ),
    }
    Ok(())
}

/// Start a throwaway redis-server on the restored files (a free loopback port, nothing saved),
/// and read its key counts once it has loaded them. `None` when redis-server is not installed.
fn loaded_key_counts(
    dir: &std::path::Path,
    aof: Option<(String, String)>,
) -> Result<Option<std::collections::BTreeMap<u32, u64>>> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .context("find a free port for the check")?;
    let mut command = std::process::Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--dbfilename", "dump.rdb", "--save", ""]);
    match &aof {
        Some((subdir, file)) => command.args([
            "--appendonly",
            "yes",
            "--appenddirname",
            subdir,
            "--appendfilename",
            file,
        ]),
        None => command.args(["--appendonly", "no"]),
    };
    let spawned = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let mut server = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).context("start redis-server for the check"),
    };
    let opts = archiver::RedisOptions {
        host: "127.0.0.1".into(),
        port,
        password: None,
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(300);
    let counts = loop {
        match archiver::keyspace(&opts) {
            Ok(counts) => break Ok(counts),
            Err(e) if Instant::now() > deadline => break Err(e),
            Err(_) => {
                if let Ok(Some(status)) = server.try_wait() {
                    bail!(
                        "redis-server could not load the restored files ({status}): the restored dump.rdb is not usable"
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    };
    // Killed, not shut down: it must write nothing into the restored directory.
    let _ = server.kill();
    let _ = server.wait();
    Ok(Some(counts.context("the check server never answered")?))
}
