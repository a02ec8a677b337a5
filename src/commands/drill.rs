//! `lifeline drill`: a restore rehearsal that proves the newest backup restorable
//! (`ops::drill`); a failed one is announced.

use std::process::ExitCode;

use anyhow::Result;
use ops::drill::{DrillOptions, DrillOutcome};

use ops::Settings;

#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// Keep the scratch directory (and stop the server) for inspection.
    #[arg(long)]
    keep: bool,
    #[arg(long, help = "Print JSON (documented in the README) instead of text")]
    json: bool,
}

pub async fn run(args: DrillArgs, settings: &Settings) -> Result<ExitCode> {
    // ops::drill::drill refuses too, but only once the repository is open: as root, refused
    // before anything (an S3 client, a local repository's files) is touched.
    ops::drill::refuse_root()?;
    let storage = settings.repository().await?;
    let options = DrillOptions {
        drill_dir: (settings.ops.drill_dir.clone()).unwrap_or_else(std::env::temp_dir),
        catalog_path: settings.catalog_path()?,
        pg_bin: settings.pg_bin(),
        binaries: settings.server_binaries(),
        db_user: settings.db.user.clone(),
        row_count_tolerance_percent: settings
            .ops
            .verify
            .row_count_tolerance_percent
            .unwrap_or(10.0),
        keep: args.keep,
        simulate: settings.ops.simulate,
        reports_dir: settings.backup_dir().ok().map(|d| d.join("logs")),
    };
    let progress = ops::progress::for_operation("drill");
    let restore_settings = |backup: &catalog::BackupRecord| {
        settings
            .postgres_restore_options(backup, true, Default::default())
            .map_err(Into::into)
    };
    let outcome = ops::drill::drill(&options, storage, &restore_settings, &|step| {
        progress.set_phase(step)
    })
    .await;
    progress.finish();
    let report = match outcome? {
        DrillOutcome::Done(report) => report,
        simulated => {
            print!("{simulated}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    if let Some(restored) = &report.restored {
        println!("{restored}");
    }
    if args.json {
        println!("{}", ops::json_output(&report.json())?);
    } else {
        print!("{report}");
    }
    tracing::info!(target: "lifeline::report", "\n{report}");
    ops::metrics::write_textfile(settings, None).await;
    if let Some(kept) = &report.kept {
        println!("scratch directory kept: {}", kept.display());
    }
    if report.passed() {
        return Ok(ExitCode::SUCCESS);
    }
    let summary = format!(
        "backup {} is not restorable: {}",
        report.backup_id, report.reason
    );
    settings
        .notify("drill", false, &summary, &report.to_string())
        .await;
    Ok(ExitCode::FAILURE)
}
