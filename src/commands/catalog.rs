use std::process::ExitCode;

use anyhow::{Context, Result};

use ops::Settings;

#[derive(Debug, clap::Subcommand)]
pub enum CatalogCommand {
    /// Rebuild the catalog from the repository alone.
    Rebuild,
}

pub async fn run(cmd: CatalogCommand, settings: &Settings) -> Result<ExitCode> {
    let CatalogCommand::Rebuild = cmd;
    let storage = settings.repository().await?;
    if settings.ops.simulate {
        println!(
            "SIMULATE_MODE: would rebuild the catalog {} from {}\nnothing was changed: unset SIMULATE_MODE to rebuild",
            settings.catalog_path()?.display(),
            storage.describe()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut catalog = settings.open_catalog()?;
    let summary = catalog::rebuild(storage.as_ref(), &mut catalog)
        .await
        .context("rebuild the catalog")?;
    for problem in &summary.unreadable {
        eprintln!("lifeline: skipped unreadable object {problem}");
    }
    println!(
        "catalog rebuilt from {}: {} backups, {} WAL files, {} cluster(s)",
        storage.describe(),
        summary.backups,
        summary.wal_files,
        summary.clusters
    );
    Ok(if summary.unreadable.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
