use std::process::ExitCode;

use anyhow::Result;
use ops::Settings;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[arg(long, value_enum, help = "Only the backups of this service")]
    service: Option<storage::Service>,
    #[arg(long, help = "Print JSON (documented in the README) instead of text")]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[arg(long, help = "Print JSON (documented in the README) instead of text")]
    json: bool,
    #[arg(long, help = "One Nagios line; exit 0 OK, 1 WARNING, 2 CRITICAL")]
    nagios: bool,
    #[arg(
        long,
        help = "Notify when alerts are raised or cleared (the check timer)"
    )]
    notify: bool,
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
    let output = ops::status::Output::new(args.json, args.nagios, args.notify);
    let (text, code) = ops::status::run(settings, &settings.database().server(), output).await?;
    println!("{text}");
    Ok(ExitCode::from(code))
}

/// `metrics`: the Prometheus text format (the logic is in `ops::metrics`).
pub async fn metrics(settings: &Settings) -> Result<ExitCode> {
    print!(
        "{}",
        ops::metrics::render(settings, Some(&settings.database().server())).await?
    );
    Ok(ExitCode::SUCCESS)
}
