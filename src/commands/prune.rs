//! `lifeline prune`: apply the retention policy (the protocol is `catalog::prune`).

use std::process::ExitCode;

use anyhow::Result;
use catalog::prune::{PruneOptions, PrunePlan};

use ops::Settings;

#[derive(Debug, clap::Args)]
pub struct PruneArgs {
    /// Print the plan and delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The plan as JSON.
    #[arg(long, help = "Print JSON (documented in the README) instead of text")]
    json: bool,
}

pub async fn run(mut args: PruneArgs, settings: &Settings) -> Result<ExitCode> {
    args.dry_run |= settings.ops.simulate;
    // A prune that deletes is a writer: only the repository's owner (or root on its behalf).
    let storage = if args.dry_run {
        settings.repository().await?
    } else {
        settings.repository_for_writing().await?
    };
    // A dry run plans from the repository rebuilt into memory: it writes no catalog either.
    let mut catalog = match args.dry_run {
        true => catalog::Catalog::in_memory()?,
        false => settings.open_catalog()?,
    };
    let options = PruneOptions {
        policy: settings.retention,
        time_zone: jiff::tz::TimeZone::system(),
        dry_run: args.dry_run,
        grace: settings.prune_grace,
        repack_unused_percent: settings.repack_unused_percent,
        host: storage::lease::host_name(),
        local_repository: settings.local_repository(),
        spool_dir: settings.spool_dir(),
        logs_dir: settings.backup_dir().ok().map(|d| d.join("logs")),
    };
    let show_plan = |plan: &PrunePlan| {
        if args.json {
            println!("{:#}", plan.to_json());
        } else {
            print!("{plan}");
        }
    };
    let report = catalog::prune::prune(storage.as_ref(), &mut catalog, &options, show_plan).await?;
    if args.json {
        // The plan stays the only thing on standard output but the outcome line.
        if let Some(outcome) = &report.outcome {
            println!("{outcome}");
        }
        for line in report.housekeeping.iter().flatten() {
            tracing::info!("{line}");
        }
    } else {
        print!("{report}");
    }
    report.housekeeping?;
    Ok(ExitCode::SUCCESS)
}
