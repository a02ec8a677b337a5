//! `lifeline drill`: a restore rehearsal that proves the newest backup restorable
//! (`ops::drill`); a failed one is announced.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Result;
use ops::drill::{BoxError, DrillOptions, DrillOutcome, RestoreFlow};

use crate::config::Settings;

#[derive(Debug, clap::Args)]
pub struct DrillArgs {
    /// Keep the scratch directory (and stop the server) for inspection.
    #[arg(long)]
    keep: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: DrillArgs, settings: &Settings) -> Result<ExitCode> {
    ops::drill::refuse_root()?;
    let storage = settings.repository().await?;
    let options = DrillOptions {
        drill_dir: (settings.ops.drill_dir.clone()).unwrap_or_else(std::env::temp_dir),
        catalog_path: settings.catalog_path()?,
        pg_bin: settings.pg_bin(),
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
    let progress = super::spinner("drill");
    let outcome = ops::drill::drill(&options, storage, &Flow(settings), &|step| {
        progress.set_message(step.to_string())
    })
    .await;
    progress.finish_and_clear();
    let report = match outcome? {
        DrillOutcome::Done(report) => report,
        simulated => {
            print!("{simulated}");
            return Ok(ExitCode::SUCCESS);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{report}");
    }
    tracing::info!(target: "lifeline::report", "\n{report}");
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
    super::notify(settings, "drill", false, &summary, &report.to_string()).await;
    Ok(ExitCode::FAILURE)
}

/// The restore command's flow, for the drill.
struct Flow<'a>(&'a Settings);

impl RestoreFlow for Flow<'_> {
    async fn cluster_backups(
        &self,
        storage: &dyn storage::Storage,
    ) -> Result<(u64, u64, Vec<catalog::BackupRecord>), BoxError> {
        Ok(super::restore::cluster_backups(self.0, storage).await?)
    }

    async fn restore_backup(
        &self,
        storage: Arc<dyn storage::Storage>,
        backup: &catalog::BackupRecord,
        recovery: &restore::RecoveryTarget,
        data_dir: &Path,
        tablespaces: restore::TablespaceMapping,
    ) -> Result<storage::manifest::BackupManifest, BoxError> {
        let choices = super::restore::RestoreChoices {
            tablespaces,
            ..Default::default()
        };
        let restored = super::restore::restore_backup(
            self.0, storage, backup, recovery, data_dir, true, &choices,
        );
        Ok(restored.await?)
    }
}
