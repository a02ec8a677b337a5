use std::process::ExitCode;

use anyhow::{Context, Result};

use ops::Settings;

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Re-read and re-hash every chunk and WAL object, not just check that chunks exist.
    #[arg(long)]
    read_data: bool,
    #[arg(long, help = "Print JSON (documented in the README) instead of text")]
    json: bool,
}

pub async fn run(args: VerifyArgs, settings: &Settings) -> Result<ExitCode> {
    let storage = settings.repository().await?;
    let mut report =
        restore::verify_repository(storage.as_ref(), args.read_data, settings.parallelism).await?;
    let leftovers = settings
        .leftovers()
        .await
        .context("look for temporary files left by interrupted runs")?;
    report.temporary_files = leftovers.len();
    report.temporary_bytes = storage::leftovers::total_size(&leftovers);
    if args.json {
        println!("{}", ops::json_output(&report)?);
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
