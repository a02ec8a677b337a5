//! `lifeline`: disaster recovery for PostgreSQL and Redis.
//!
//! Exit codes: 0 success; 2 usage; 1 (and others up to 125) with a one-line cause on stderr.
//! `wal push` never exits above 125 (that would stop PostgreSQL's archiver). `wal fetch` exits
//! 1 when the file is not archived and 126 when the repository cannot be read or an object fails
//! its checksum, so that PostgreSQL stops recovery instead of ending it early at the wrong point.

mod commands;
mod config;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{GlobalArgs, Settings};

#[derive(Debug, Parser)]
#[command(
    name = "lifeline",
    version,
    about = "Disaster recovery for PostgreSQL and Redis: WAL archiving, backups, point-in-time restore, verification and failover"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// WAL archiving: archive_command and restore_command.
    #[command(subcommand)]
    Wal(commands::wal::WalCommand),
    /// Take a backup.
    #[command(subcommand)]
    Backup(commands::backup::BackupCommand),
    /// Restore a backup (full, or to a point in time).
    #[command(subcommand)]
    Restore(commands::restore::RestoreCommand),
    /// Backups in the catalog.
    List(commands::info::ListArgs),
    /// Last backups, last archived WAL and its age, repository size.
    Status(commands::info::StatusArgs),
    /// Check the repository: every backup's chunks exist; --read-data re-reads everything.
    Verify(commands::verify::VerifyArgs),
    /// Apply the retention policy: print the plan, then delete what it does not keep.
    Prune(commands::prune::PruneArgs),
    /// The SQLite catalog.
    #[command(subcommand)]
    Catalog(commands::catalog::CatalogCommand),
    /// Orchestrated failover for one incident type; --simulate prints the plan, --status the
    /// roles, replication lag and last backups.
    Failover(commands::failover::FailoverArgs),
    /// Post-recovery checks: [PASS]/[FAIL] lines, totals and RESULT.
    VerifyRecovery(commands::verify_recovery::VerifyRecoveryArgs),
    /// The incident runbook: list, show one incident, or --validate a custom one.
    Runbook(commands::runbook::RunbookArgs),
    /// A restore rehearsal: restore the latest backup and WAL into a scratch server, verify it,
    /// measure RTO and RPO, and mark the backup VERIFIED or FAILED.
    Drill(commands::drill::DrillArgs),
}

impl Command {
    /// The name of this run's operation log, for the commands that keep one.
    fn log_name(&self) -> Option<String> {
        let name = match self {
            Command::Backup(cmd) => cmd.operation(),
            Command::Restore(commands::restore::RestoreCommand::Postgres(_)) => {
                "restore postgres".into()
            }
            Command::Restore(commands::restore::RestoreCommand::Redis(_)) => "restore redis".into(),
            Command::Verify(_) => "verify".into(),
            Command::Prune(args) if !args.dry_run => "prune".into(),
            Command::Catalog(_) => "catalog rebuild".into(),
            Command::Failover(args) if !args.is_status() => "failover".into(),
            Command::VerifyRecovery(_) => "verify-recovery".into(),
            Command::Drill(_) => "drill".into(),
            _ => return None,
        };
        Some(name.replace([' ', '-'], "_"))
    }
}

fn init_logging(operation_log: Option<std::fs::File>) {
    use tracing_subscriber::filter::{EnvFilter, Targets};
    use tracing_subscriber::prelude::*;
    // Report lines are printed on stdout already; they go to the operation log only.
    let spec = std::env::var("LIFELINE_LOG").unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(format!("{spec},lifeline::report=off"))
        .unwrap_or_else(|_| EnvFilter::new("info,lifeline::report=off"));
    let terminal = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // PostgreSQL copies archive_command's stderr into its log: no colour codes there.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .with_filter(filter);
    let file = operation_log.map(|f| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::sync::Mutex::new(f))
            .with_ansi(false)
            .with_target(false)
            .with_filter(
                Targets::new()
                    .with_default(tracing::Level::INFO)
                    .with_target("aws_smithy_runtime", tracing::Level::WARN)
                    .with_target("aws_config", tracing::Level::WARN)
                    .with_target("hyper_util", tracing::Level::WARN)
                    .with_target("rustls", tracing::Level::WARN),
            )
    });
    tracing_subscriber::registry()
        .with(terminal)
        .with(file)
        .init();
}

/// Record the outcome in `.backup_status` (a non-zero exit counts as a failure), notify a
/// failure, and pass it on.
async fn report(
    settings: &Settings,
    operation: &str,
    result: anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    let outcome = match &result {
        Ok(code) if *code == ExitCode::SUCCESS => Ok(()),
        Ok(_) => Err("found problems (see its output)".to_string()),
        Err(e) => Err(format!("{e:#}")),
    };
    ops::status_file::update(settings, operation, &outcome).await;
    // A command that found problems (verify) has notified with them itself.
    if let Err(e) = &result {
        commands::notify(
            settings,
            operation,
            false,
            &format!("{e:#}"),
            &format!("{e:#}"),
        )
        .await;
    }
    result
}

/// Raise the soft limit on open files to the hard one: a restore of a large data directory
/// keeps a bounded number open, but the default soft limit (1024, or less under a tight
/// `ulimit -n`) leaves little room beside the runtime's own descriptors.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!("the open-file limit stays at {:?}: {e}", limit.current);
        }
    }
}

/// One line on stderr; a closed stderr is not a reason to fail differently.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// How a command must end when something panics: `wal fetch` above 125 (PostgreSQL then stops
/// recovery instead of taking "not archived" and ending it early), `wal push` with 1 (above
/// 125 would stop the archiver), everything else with 1 and a one-line cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PanicExit {
    Fetch,
    Push,
    Other,
}

/// No panic reaches the operator as a Rust backtrace: a closed standard output (`lifeline
/// status | head -1`) ends the command quietly, and any other panic is logged, with where it
/// happened, to stderr and the operation log, then ends the command with its contract's code.
fn install_panic_hook(kind: PanicExit) {
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        let closed_output =
            message.starts_with("failed printing to stdout") && message.contains("Broken pipe");
        if closed_output && kind != PanicExit::Fetch {
            // The reader went away (head, less quit): stop quietly, with the status a shell
            // gives a command its reader left (128 + SIGPIPE); `wal push` with 1, as always.
            std::process::exit(if kind == PanicExit::Push { 1 } else { 141 });
        }
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(target: "lifeline::report", "ERROR: internal error at {place}: {message}");
        say(&format!(
            "lifeline: internal error (a bug; please report it) at {place}: {message}"
        ));
        std::process::exit(match kind {
            PanicExit::Fetch => i32::from(commands::wal::FETCH_FATAL),
            PanicExit::Push | PanicExit::Other => 1,
        });
    }));
}

/// The last lines of an operation log: the outcome, and on failure the whole error chain on
/// an ERROR line (what `grep -E "ERROR|FAILED" logs/*.log` finds).
fn log_outcome(operation: &str, result: &anyhow::Result<ExitCode>, started: std::time::Instant) {
    let seconds = started.elapsed().as_secs_f64();
    match result {
        Ok(code) if *code == ExitCode::SUCCESS => tracing::info!(
            target: "lifeline::report",
            "{operation}: SUCCEEDED in {seconds:.1} s"
        ),
        Ok(code) => tracing::error!(
            target: "lifeline::report",
            "ERROR: {operation}: FAILED in {seconds:.1} s ({code:?}): it found problems, listed above"
        ),
        Err(e) => tracing::error!(
            target: "lifeline::report",
            "ERROR: {operation}: FAILED in {seconds:.1} s: {e:#}"
        ),
    }
}

/// One owner for the repository. Run as root against a repository that belongs to another
/// user, lifeline becomes that user before it touches anything, so nothing it creates is root's
/// and no link planted in the repository can make root write, chown or delete elsewhere;
/// `failover` alone keeps root (it starts services and rewrites the application's files) and
/// gives what it creates to the owner instead. Any other user is refused before it writes.
fn act_as_repository_owner(settings: &Settings, command: &Command) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if matches!(command, Command::Runbook(_)) {
        return Ok(());
    }
    let Some(dir) = settings.backup_dir.as_deref() else {
        return Ok(());
    };
    // A missing BACKUP_DIR: the command itself says what to do.
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let (uid, gid) = (meta.uid(), meta.gid());
    let me = rustix::process::geteuid();
    if me.as_raw() == uid {
        return Ok(());
    }
    let owner = storage::private::user_name(uid);
    if !me.is_root() {
        return Err(format!(
            "BACKUP_DIR {} belongs to {owner} and lifeline runs as {}: run it as {owner} (runuser -u {owner} -- lifeline ...)",
            dir.display(),
            storage::private::user_name(me.as_raw())
        ));
    }
    if uid == 0 || matches!(command, Command::Failover(_)) {
        return Ok(());
    }
    // No thread has started yet, so the whole process changes user.
    let (user, group) = (
        rustix::process::Uid::from_raw(uid),
        rustix::process::Gid::from_raw(gid),
    );
    rustix::thread::set_thread_groups(&[group])
        .and_then(|()| rustix::thread::set_thread_res_gid(group, group, group))
        .and_then(|()| rustix::thread::set_thread_res_uid(user, user, user))
        .map_err(|e| {
            format!(
                "cannot become {owner}, the owner of BACKUP_DIR {} ({e}): run it as {owner} (runuser -u {owner} -- lifeline ...)",
                dir.display()
            )
        })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let fetch = matches!(
        cli.command,
        Command::Wal(commands::wal::WalCommand::Fetch(_))
    );
    install_panic_hook(match &cli.command {
        Command::Wal(commands::wal::WalCommand::Fetch(_)) => PanicExit::Fetch,
        Command::Wal(commands::wal::WalCommand::Push { .. }) => PanicExit::Push,
        _ => PanicExit::Other,
    });
    raise_open_file_limit();
    let operation = cli.command.log_name();
    let settings = match Settings::resolve(&cli.global) {
        Ok(s) => s,
        Err(e) => {
            say(&format!("lifeline: {e:#}"));
            return if fetch {
                ExitCode::from(commands::wal::FETCH_FATAL)
            } else {
                ExitCode::from(2)
            };
        }
    };
    // Before the operation log, the catalog or anything else is created.
    if let Err(why) = act_as_repository_owner(&settings, &cli.command) {
        say(&format!("lifeline: {why}"));
        return if fetch {
            ExitCode::from(commands::wal::FETCH_FATAL)
        } else {
            ExitCode::FAILURE
        };
    }
    let log = operation
        .as_deref()
        .and_then(|name| commands::oplog::open(settings.backup_dir.as_deref(), name));
    init_logging(log.map(|(file, _)| file));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lifeline: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(operation) = &operation {
        tracing::info!(
            target: "lifeline::report",
            "{operation}: started: lifeline {}",
            std::env::args_os()
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    let started = std::time::Instant::now();
    let result = runtime.block_on(async {
        match cli.command {
            Command::Wal(cmd) => commands::wal::run(cmd, &settings).await,
            Command::Backup(cmd) => {
                let operation = cmd.operation();
                let result = commands::backup::run(cmd, &settings).await;
                report(&settings, &operation, result).await
            }
            Command::Restore(cmd) => commands::restore::run(cmd, &settings).await,
            Command::List(args) => commands::info::list(args, &settings),
            Command::Status(args) => commands::info::status(args, &settings).await,
            Command::Verify(args) => {
                let result = commands::verify::run(args, &settings).await;
                report(&settings, "verify", result).await
            }
            Command::Catalog(cmd) => commands::catalog::run(cmd, &settings).await,
            Command::Failover(args) => commands::failover::run(args, &settings).await,
            Command::VerifyRecovery(args) => commands::verify_recovery::run(args, &settings).await,
            Command::Runbook(args) => commands::runbook::run(args),
            Command::Drill(args) => commands::drill::run(args, &settings).await,
            Command::Prune(args) => {
                let dry_run = args.dry_run;
                let result = commands::prune::run(args, &settings).await;
                if dry_run {
                    result
                } else {
                    report(&settings, "prune", result).await
                }
            }
        }
    });
    if let Some(operation) = &operation {
        log_outcome(operation, &result, started);
    }
    match result {
        Ok(code) => code,
        Err(e) => {
            say(&format!("lifeline: {e:#}"));
            if fetch {
                ExitCode::from(commands::wal::FETCH_FATAL)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
