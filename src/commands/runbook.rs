//! `lifeline runbook [INC-00N] [--validate FILE]`: the incident runbook.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use ops::Runbook;

#[derive(Debug, clap::Args)]
pub struct RunbookArgs {
    /// One incident in full (INC-001 to INC-006 in the built-in runbook).
    incident: Option<String>,
    /// Check a custom runbook and say what is wrong with it.
    #[arg(long, value_name = "FILE", conflicts_with = "incident")]
    validate: Option<PathBuf>,
    /// Read this runbook instead of the built-in one.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    #[arg(long, help = "Print JSON (documented in the README) instead of text")]
    json: bool,
}

pub fn run(args: RunbookArgs) -> Result<ExitCode> {
    if let Some(path) = &args.validate {
        let runbook = load(path)?;
        println!(
            "{}: valid, {} incidents ({})",
            path.display(),
            runbook.incidents.len(),
            runbook
                .incidents
                .iter()
                .map(|i| i.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    let runbook = match &args.file {
        Some(path) => load(path)?,
        None => Runbook::builtin()?,
    };
    match &args.incident {
        None if args.json => println!("{}", ops::json_output(&runbook)?),
        None => print!("{}", runbook.summary()),
        Some(id) => {
            let Some(incident) = runbook.incident(id) else {
                bail!(
                    "no incident {id} in the runbook: `lifeline runbook` lists them ({})",
                    runbook
                        .incidents
                        .iter()
                        .map(|i| i.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            if args.json {
                println!("{}", ops::json_output(incident)?);
            } else {
                print!("{}", runbook.render(incident));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn load(path: &std::path::Path) -> Result<Runbook> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the runbook {}", path.display()))?;
    Ok(Runbook::parse(&path.display().to_string(), &text)?)
}
