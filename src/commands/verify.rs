use std::process::ExitCode;

use anyhow::{Context, Result};

use ops::Settings;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Re-read and re-hash every chunk and WAL object, not just check that chunks exist.
    #[arg(long)]
    read_data: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: VerifyArgs, settings: &Settings) -> Result<ExitCode> {
    let storage = settings.repository().await?;
    let mut report =
        restore::verify_repository(storage.as_ref(), args.read_data, settings.parallelism).await?;
    let leftovers = leftovers(settings).await?;
    report.temporary_files = leftovers.len();
    report.temporary_bytes = storage::leftovers::total_size(&leftovers);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    if report.is_clean() {
        return Ok(ExitCode::SUCCESS);
    }
    let (summary, details) = report.alert(&storage.describe());
    settings.notify("verify", false, &summary, &details).await;
    Ok(ExitCode::FAILURE)
}

/// Temporary files that killed writers left in the local repository and the `wal fetch`
/// spool. An S3 repository has none to count (interrupted uploads are the bucket's to expire);
/// its local spool still does.
async fn leftovers(settings: &Settings) -> Result<Vec<storage::leftovers::Leftover>> {
    let (repository, spool) = (settings.local_repository(), settings.spool_dir());
    // A walk of the whole local repository: on a blocking thread.
    tokio::task::spawn_blocking(move || {
        let now = std::time::SystemTime::now();
        storage::leftovers::find_all(repository.as_deref(), spool.as_deref(), now)
    })
    .await?
    .context("look for temporary files left by interrupted runs")
}
