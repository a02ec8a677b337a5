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

use crate::config::GlobalArgs;
use ops::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "lifeline",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("LIFELINE_COMMIT"), ")"),
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
    /// Whether archiving works now, end to end (a forced WAL switch must reach the repository).
    Check(commands::check::CheckArgs),
    /// Backups in the catalog.
    List(commands::info::ListArgs),
    /// Last backups, last archived WAL and its age, repository size.
    Status(commands::info::StatusArgs),
    /// Metrics in the Prometheus text format (also metrics-textfile after each operation).
    Metrics,
    /// Check the repository: every backup's chunks exist; --read-data re-reads everything.
    Verify(commands::verify::VerifyArgs),
    /// Apply the retention policy: print the plan, then delete what it does not keep.
    Prune(commands::prune::PruneArgs),
    /// The SQLite catalog.
    #[command(subcommand)]
    Catalog(commands::catalog::CatalogCommand),
    /// Failover for one incident type; --simulate prints the plan, --status the roles and lag.
    Failover(commands::failover::FailoverArgs),
    /// Post-recovery checks: [PASS]/[FAIL] lines, totals and RESULT.
    VerifyRecovery(commands::verify_recovery::VerifyRecoveryArgs),
    /// The incident runbook: list, show one incident, or --validate a custom one.
    Runbook(commands::runbook::RunbookArgs),
    /// A restore rehearsal into a scratch server: RTO and RPO measured, VERIFIED or FAILED.
    Drill(commands::drill::DrillArgs),
    /// The repository itself: `repo init` makes an empty one encrypted.
    #[command(subcommand)]
    Repo(RepoCommand),
    /// An encrypted repository's keys: passphrases (slots) and data epochs.
    #[command(subcommand)]
    Key(commands::key::KeyCommand),
    /// Print shell completion: bash, zsh or fish (> /etc/bash_completion.d/lifeline).
    Completions { shell: clap_complete::Shell },
    /// Print the man page (> /usr/local/share/man/man1/lifeline.1).
    Man,
}

#[derive(Debug, Subcommand)]
enum RepoCommand {
    /// Make an empty BACKUP_DIR or S3 prefix an encrypted repository (needs a passphrase).
    Init,
}

impl Command {
    /// Whether `SIMULATE_MODE` makes this command only say what it would do, leaving no
    /// operation log or status of its own (failover logs its simulation as such; the commands
    /// that only read run as usual).
    fn simulates(&self) -> bool {
        matches!(
            self,
            Command::Wal(_)
                | Command::Backup(_)
                | Command::Restore(_)
                | Command::Prune(_)
                | Command::Catalog(_)
                | Command::Drill(_)
                | Command::Repo(_)
                | Command::Key(_)
        )
    }

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

/// Record the outcome in `.backup_status`, notify a failure, and pass it on.
async fn report(
    settings: &Settings,
    operation: &str,
    result: anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    let error = result.as_ref().err().map(|e| format!("{e:#}"));
    let problems = matches!(&result, Ok(code) if *code != ExitCode::SUCCESS);
    ops::status_file::report(settings, operation, error, problems).await;
    result
}

/// Shell completion for `shell`, or the man page, on stdout (a closed one ends quietly).
fn generated(shell: Option<clap_complete::Shell>) -> anyhow::Result<ExitCode> {
    let (mut command, mut text) = (<Cli as clap::CommandFactory>::command(), Vec::new());
    match shell {
        Some(shell) => clap_complete::generate(shell, &mut command, "lifeline", &mut text),
        None => clap_mangen::Man::new(command).render(&mut text)?,
    }
    print!("{}", String::from_utf8_lossy(&text));
    Ok(ExitCode::SUCCESS)
}

/// One line on stderr; a closed stderr is not a reason to fail differently.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// As root, become the repository's owner (except for `failover`); other users are refused.
fn act_as_repository_owner(settings: &Settings, command: &Command) -> Result<(), String> {
    match (command, settings.backup_dir.as_deref()) {
        (Command::Runbook(_), _) | (_, None) => Ok(()),
        (_, Some(dir)) => {
            ops::identity::act_as_repository_owner(dir, matches!(command, Command::Failover(_)))
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let fetch = matches!(
        cli.command,
        Command::Wal(commands::wal::WalCommand::Fetch(_))
    );
    // `wal fetch` above 125 (PostgreSQL then stops recovery instead of taking "not archived"
    // and ending it early), `wal push` with 1 (above 125 would stop the archiver).
    ops::oplog::on_panic(match &cli.command {
        Command::Wal(commands::wal::WalCommand::Fetch(_)) => ops::oplog::PanicExit {
            code: commands::wal::FETCH_FATAL.into(),
            closed_output: None,
        },
        Command::Wal(commands::wal::WalCommand::Push { .. }) => ops::oplog::PanicExit {
            code: 1,
            closed_output: Some(1),
        },
        _ => ops::oplog::PanicExit::default(),
    });
    let mut settings = match cli.global.resolve() {
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
    // A simulated run leaves no log of an operation that did not happen; failover and drill
    // log their simulations.
    let simulated = settings.ops.simulate && cli.command.simulates();
    if simulated {
        // Unlocking an encrypted repository would cache its key under $HOME: a write.
        settings.encryption.key_cache = false;
    }
    let operation = cli.command.log_name().filter(|_| !simulated);
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
        .and_then(|name| ops::oplog::open(settings.backup_dir.as_deref(), name));
    ops::oplog::init_logging(log.map(|(file, _)| file));
    // Process-wide, before the runtime starts its threads; after the logging, which shows its
    // debug line.
    ops::identity::raise_open_file_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("lifeline: cannot start the async runtime: {e}"));
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
                if simulated {
                    return result;
                }
                report(&settings, &operation, result).await
            }
            Command::Restore(cmd) => commands::restore::run(cmd, &settings).await,
            Command::Check(args) => commands::check::run(args, &settings).await,
            Command::List(args) => commands::info::list(args, &settings),
            Command::Status(args) => commands::info::status(args, &settings).await,
            Command::Metrics => commands::info::metrics(&settings).await,
            Command::Verify(args) => {
                let result = commands::verify::run(args, &settings).await;
                report(&settings, "verify", result).await
            }
            Command::Catalog(cmd) => commands::catalog::run(cmd, &settings).await,
            Command::Failover(args) => commands::failover::run(args, &settings).await,
            Command::VerifyRecovery(args) => commands::verify_recovery::run(args, &settings).await,
            Command::Runbook(args) => commands::runbook::run(args),
            Command::Drill(args) => commands::drill::run(args, &settings).await,
            Command::Repo(RepoCommand::Init) => commands::key::run(None, &settings).await,
            Command::Key(cmd) => commands::key::run(Some(cmd), &settings).await,
            Command::Completions { shell } => generated(Some(shell)),
            Command::Man => generated(None),
            Command::Prune(args) => {
                let dry_run = args.dry_run || simulated;
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
        let outcome = match &result {
            Ok(code) if *code == ExitCode::SUCCESS => Ok(()),
            Ok(code) => Err(format!(" ({code:?}): it found problems, listed above")),
            Err(e) => Err(format!(": {e:#}")),
        };
        ops::oplog::log_outcome(operation, &outcome, started);
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
