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
        for problem in &report.problems {
            println!("[FAIL] {problem}");
        }
        if report.temporary_files > 0 {
            println!(
                "{} temporary files left by interrupted runs ({} MiB), removed by prune after \
                 the grace period",
                report.temporary_files,
                catalog::listing::mib(report.temporary_bytes)
            );
        }
        println!(
            "checked {} backups, {} chunks in {} packs, {} WAL objects{}: {}",
            report.backups,
            report.chunks,
            report.packs,
            report.wal_files,
            if args.read_data {
                format!(", {} MiB read back", report.bytes_read >> 20)
            } else {
                String::new()
            },
            if report.is_clean() {
                "OK".to_string()
            } else {
                format!("{} problem(s)", report.problems.len())
            }
        );
    }
    if report.is_clean() {
        return Ok(ExitCode::SUCCESS);
    }
    let shown: Vec<&str> = report
        .problems
        .iter()
        .take(20)
        .map(String::as_str)
        .collect();
    let more = report.problems.len().saturating_sub(shown.len());
    super::notify(
        settings,
        "verify",
        false,
        &format!(
            "{} problem(s) in {}",
            report.problems.len(),
            storage.describe()
        ),
        &format!(
            "{}{}",
            shown.join("\n"),
            if more > 0 {
                format!("\n... and {more} more")
            } else {
                String::new()
            }
        ),
    )
    .await;
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
