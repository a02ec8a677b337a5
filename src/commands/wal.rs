use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use restore::FetchOutcome;

use ops::Settings;

/// Above 125: PostgreSQL treats it as fatal and stops recovery rather than ending it early.
pub const FETCH_FATAL: u8 = 126;

#[derive(Debug, clap::Subcommand)]
pub enum WalCommand {
    /// Archive one WAL segment, history or backup-history file (archive_command = 'lifeline wal push %p').
    Push {
        /// The file PostgreSQL asks to archive (%p).
        path: PathBuf,
        #[arg(
            long,
            hide = true,
            help = "Store the ready segments after PATH (detached worker)"
        )]
        ahead: bool,
    },
    /// Fetch one archived file (restore_command = 'lifeline wal fetch %f %p').
    Fetch(FetchArgs),
    /// Read the segments after NAME into the spool (started by `wal fetch` in the background).
    #[command(hide = true)]
    Prefetch {
        /// The segment recovery asked for last.
        name: String,
        #[arg(long, help = "The system identifier of the cluster whose WAL to read")]
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
        WalCommand::Push { path, ahead } => {
            if settings.ops.simulate {
                return simulated_push(&path, ahead, settings).await;
            }
            let (catalog, compression) = (settings.catalog_path()?, settings.push_compression());
            if ahead {
                let Some(lock) = archiver::AheadLock::try_acquire(&catalog, &path) else {
                    return Ok(ExitCode::SUCCESS);
                };
                let storage = settings.repository_for_writing().await?;
                let limits = (settings.push_ahead.segments, settings.push_ahead.bytes);
                archiver::push_ahead(&lock, storage.as_ref(), &catalog, compression, limits).await;
                return Ok(ExitCode::SUCCESS);
            }
            let storage = settings.repository_for_writing().await?;
            archiver::push_wal(storage.as_ref(), &catalog, &path, compression)
                .await
                .with_context(|| format!("archive {}", path.display()))?;
            settings.start_push_ahead(&path);
            Ok(ExitCode::SUCCESS)
        }
        WalCommand::Fetch(args) => {
            let spool = settings.spool();
            let request = restore::FetchRequest {
                name: &args.name,
                dest: &args.dest,
                system_identifier: args.cluster,
                spool: spool.as_ref(),
            };
            match restore::fetch_wal(&request, || async {
                Ok::<_, anyhow::Error>(settings.repository().await?)
            })
            .await?
            {
                FetchOutcome::Fetched {
                    system_identifier,
                    read_ahead,
                    ..
                } => {
                    if read_ahead {
                        settings.start_prefetcher(system_identifier, &args.name);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                FetchOutcome::NotArchived => Ok(ExitCode::from(1)),
            }
        }
        WalCommand::Prefetch { name, cluster } => {
            settings.prefetch(&name, cluster).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `wal push` under SIMULATE_MODE: nothing archived, and not exit 0, which would let
/// PostgreSQL recycle a segment that is nowhere else.
async fn simulated_push(
    path: &std::path::Path,
    ahead: bool,
    settings: &Settings,
) -> Result<ExitCode> {
    if ahead {
        return Ok(ExitCode::SUCCESS);
    }
    let storage = settings.repository_to_write().await?;
    anyhow::bail!(
        "SIMULATE_MODE=true: would archive {} into {}; not archived, so PostgreSQL keeps it and \
         asks again: unset SIMULATE_MODE where the server runs to archive",
        path.display(),
        storage.describe()
    )
}
