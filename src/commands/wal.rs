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
            let storage = settings.repository().await?;
            let outcome =
                restore::fetch_wal(storage.as_ref(), args.cluster, &args.name, &args.dest)
                    .await
                    .with_context(|| format!("fetch {}", args.name))?;
            Ok(match outcome {
                FetchOutcome::Fetched { .. } => ExitCode::SUCCESS,
                FetchOutcome::NotArchived => ExitCode::from(1),
            })
        }
    }
}
