use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    #[arg(long, help = "Print JSON (documented in the README) instead of text")]
    json: bool,
}

pub async fn run(args: CheckArgs, settings: &ops::Settings) -> anyhow::Result<ExitCode> {
    let report = ops::check::run(settings, &settings.database().server()).await;
    match args.json {
        true => println!("{}", ops::json_output(&report.json())?),
        false => print!("{}", report.text()),
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
