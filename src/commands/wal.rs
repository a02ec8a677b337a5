use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use restore::FetchOutcome;

use crate::config::Settings;

/// Above 125: PostgreSQL treats it as fatal and stops recovery rather than ending it early.
pub const FETCH_FATAL: u8 = 126;

#[derive(Debug, clap::Subcommand)]
pub enum WalCommand {
    /// Archive one WAL segment, history or backup-history file (archive_command = 'lifeline wal push %p').
    Push {
        /// The file PostgreSQL asks to archive (%p).
        path: PathBuf,
    },
    /// Fetch one archived file (restore_command = 'lifeline wal fetch %f %p').
    Fetch(FetchArgs),
    /// Read the segments after NAME into the spool (started by `wal fetch` in the background).
    #[command(hide = true)]
    Prefetch {
        /// The segment recovery asked for last.
        name: String,
        #[arg(long)]
        cluster: u64,
    },
}

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// The file name PostgreSQL asks for (%f).
    name: String,
    /// Where to write it (%p).
    dest: PathBuf,
    /// The cluster's system identifier (default: from global/pg_control, else the repository's).
    #[arg(long)]
    cluster: Option<u64>,
}

pub async fn run(cmd: WalCommand, settings: &Settings) -> Result<ExitCode> {
    match cmd {
        WalCommand::Push { path } => {
            let storage = settings.repository_for_writing().await?;
            let mut compression = settings.compression;
            compression.workers = 2;
            archiver::push_wal(
                storage.as_ref(),
                &settings.catalog_path()?,
                &path,
                compression,
            )
            .await
            .with_context(|| format!("archive {}", path.display()))?;
            Ok(ExitCode::SUCCESS)
        }
        WalCommand::Fetch(args) => {
            // Before anything is read or served: a name that is not a WAL file name means
            // restore_command passes the wrong thing (%p for %f), and recovery must stop
            // rather than take "not archived" for an answer.
            if let Err(e) = args.name.parse::<storage::wal::WalFileName>() {
                anyhow::bail!(
                    "{e}: restore_command must be 'lifeline wal fetch %f %p' (the file name, then the path)"
                );
            }
            let spool = settings.spool();
            // A segment waiting in the spool needs no repository client at all.
            if let (Some(spool), Some(cluster)) = (&spool, args.cluster)
                && let Some(bytes) = spool.serve(cluster, &args.name, &args.dest).await
            {
                tracing::info!(wal = %args.name, bytes, "restored from the prefetch spool");
                if spool.wants_refill(cluster, &args.name) {
                    start_prefetcher(settings, cluster, &args.name);
                }
                return Ok(ExitCode::SUCCESS);
            }
            let storage = settings.repository().await?;
            let outcome = restore::fetch_wal(
                storage.as_ref(),
                args.cluster,
                &args.name,
                &args.dest,
                spool.as_ref(),
            )
            .await
            .with_context(|| format!("fetch {}", args.name))?;
            match outcome {
                FetchOutcome::Fetched {
                    system_identifier, ..
                } => {
                    if let Some(spool) = &spool
                        && spool.wants_refill(system_identifier, &args.name)
                    {
                        start_prefetcher(settings, system_identifier, &args.name);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                FetchOutcome::NotArchived => Ok(ExitCode::from(1)),
            }
        }
        WalCommand::Prefetch { name, cluster } => {
            name.parse::<storage::wal::WalFileName>()
                .map_err(anyhow::Error::msg)?;
            let Some(spool) = settings.spool() else {
                return Ok(ExitCode::SUCCESS);
            };
            let storage = settings.repository().await?;
            let report = spool
                .prefetch_after(
                    storage.as_ref(),
                    cluster,
                    &name,
                    settings.download_transfers(),
                )
                .await
                .with_context(|| format!("prefetch after {name}"))?;
            tracing::debug!(
                segments = report.fetched,
                bytes = report.bytes,
                "prefetched"
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Start `wal prefetch` detached: recovery gets its answer now, and the next segments are
/// fetched while it replays this one. A prefetch that fails costs nothing: the next fetch
/// reads the repository.
fn start_prefetcher(settings: &Settings, system_identifier: u64, name: &str) {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let (Ok(exe), Ok(repository)) = (std::env::current_exe(), settings.repository_args()) else {
        return;
    };
    let spawned = Command::new(exe)
        .args(repository)
        .args(["--wal-prefetch", &settings.prefetch.segments.to_string()])
        .args([
            "wal",
            "prefetch",
            "--cluster",
            &system_identifier.to_string(),
            name,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: signals meant for restore_command are not meant for it.
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        tracing::debug!("prefetch not started: {e}");
    }
}
