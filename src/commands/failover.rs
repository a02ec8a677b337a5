//! `lifeline failover --incident ...`, `--simulate`, `--status`: the flows are
//! `ops::failover`; this file builds their options from the settings and prints.

use std::process::ExitCode;

use anyhow::Result;

use ops::Settings;

#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// database_failure, redis_failure, service_failure NAME or datacenter_failure.
    #[arg(long, value_parser = |s: &str| s.parse::<ops::Incident>(), required_unless_present_any = ["status", "simulate"])]
    incident: Option<ops::Incident>,
    /// The service of service_failure, as named in [services.NAME].
    service: Option<String>,
    /// Run the read-only checks and print the plan (of every incident without --incident).
    #[arg(long)]
    simulate: bool,
    /// Roles, replication lag, last backup, last archived WAL and its age, last failovers.
    #[arg(long, conflicts_with = "incident")]
    status: bool,
    /// database_failure: fail over even though the primary still answers (its WAL is switched
    /// and archived first).
    #[arg(long)]
    force: bool,
}

impl FailoverArgs {
    pub fn is_status(&self) -> bool {
        self.status
    }
}

pub async fn run(args: FailoverArgs, settings: &Settings) -> Result<ExitCode> {
    let primary = settings.database().server();
    if args.status {
        let status = ops::failover::status(&primary, &settings.ops.failover, settings).await?;
        print!("{status}");
        return Ok(ExitCode::SUCCESS);
    }
    let restore_options = |backup: &catalog::BackupRecord, choices| {
        settings
            .postgres_restore_options(backup, true, choices)
            .map_err(|e| format!("{e:#}"))
    };
    let verify =
        super::platform::verify_options(settings, ops::Depth::Quick, restore::Target::Production);
    let mut opts = ops::FailoverOptions {
        incident: args.incident.unwrap_or(ops::Incident::DatabaseFailure),
        service: args.service,
        simulate: args.simulate || settings.ops.simulate,
        force: args.force,
        primary,
        failover: settings.ops.failover.clone(),
        services: settings.ops.services.clone(),
        redis: verify.redis.clone(),
        pgdata: settings.pgdata.clone(),
        binaries: settings.server_binaries(),
        transfers: settings.download_transfers(),
        verify,
        restore_options: &restore_options,
    };
    let sink = |line: ops::Line<'_>| match line {
        ops::Line::Report(text) => {
            println!("{text}");
            tracing::info!(target: "lifeline::report", "{text}");
        }
        ops::Line::Aside(text) => println!("{text}"),
    };
    let report = match args.incident {
        Some(_) => ops::failover(&opts, settings, sink).await,
        None => ops::failover::simulate_every_incident(&mut opts, settings, sink).await,
    };
    if !report.simulated {
        settings
            .notify("failover", report.ok, &report.summary, &report.transcript)
            .await;
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
