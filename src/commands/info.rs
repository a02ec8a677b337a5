use std::process::ExitCode;

use anyhow::Result;

use ops::Settings;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only the backups of this service.
    #[arg(long, value_enum)]
    service: Option<storage::Service>,
    #[arg(long, help = "Print JSON (documented in the README) instead of text")]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long, help = "Print JSON (documented in the README) instead of text")]
    json: bool,
}

pub fn list(args: ListArgs, settings: &Settings) -> Result<ExitCode> {
    let backups = settings.open_catalog()?.backups(args.service)?;
    if args.json {
        let all: Vec<_> = backups.iter().map(catalog::BackupRecord::to_json).collect();
        println!("{}", ops::json_output(&all)?);
    } else {
        print!("{}", catalog::listing::backup_table(&backups));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn status(args: StatusArgs, settings: &Settings) -> Result<ExitCode> {
    let storage = settings.repository().await?;
    let status =
        ops::status::RepositoryStatus::gather(storage.as_ref(), &settings.open_catalog()?).await?;
    if args.json {
        println!("{}", ops::json_output(&status.to_json())?);
    } else {
        println!("{status}");
    }
    Ok(ExitCode::SUCCESS)
}
