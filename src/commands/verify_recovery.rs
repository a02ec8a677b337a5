//! `lifeline verify-recovery --quick|--full|--smoke-test [--target staging] [--json]`: is the
//! platform back? The checks are `ops::verify`.

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct VerifyRecoveryArgs {
    /// Reachability only: PostgreSQL, the database, Redis.
    #[arg(long, conflicts_with_all = ["full", "smoke_test"])]
    quick: bool,
    /// Also tables and row counts against the last backup, Redis keys, HTTP and worker checks.
    #[arg(long, conflicts_with = "smoke_test")]
    full: bool,
    /// Everything in --full plus the configured login flow.
    #[arg(long)]
    smoke_test: bool,
    /// Check the staging database (and staging URLs) instead of production.
    #[arg(long, value_enum, default_value_t)]
    target: restore::Target,
    #[arg(long, help = "Print JSON (documented in the README) instead of text")]
    json: bool,
}

pub async fn run(args: VerifyRecoveryArgs, settings: &ops::Settings) -> anyhow::Result<ExitCode> {
    let depth = match (args.smoke_test, args.full) {
        (true, _) => ops::Depth::Smoke,
        (_, true) => ops::Depth::Full,
        _ => ops::Depth::Quick,
    };
    let opts = super::platform::verify_options(settings, depth, args.target);
    let report = ops::verify(&opts, settings).await;
    if args.json {
        println!("{}", ops::json_output(&report.json())?);
    } else {
        print!("{}", report.text());
    }
    tracing::info!(target: "lifeline::report", "\n{}", report.text());
    if report.passed() {
        return Ok(ExitCode::SUCCESS);
    }
    let summary = report.failure_summary();
    settings
        .notify("verify-recovery", false, &summary, &report.text())
        .await;
    Ok(ExitCode::FAILURE)
}
