//! The incident runbook: a JSON document shipped in `ops/runbook.json` (built in), or the
//! operator's own, checked before it is trusted on the day it is needed.

use std::collections::HashSet;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::OpsError;

/// The runbook shipped with lifeline.
pub const BUILTIN: &str = include_str!("../runbook.json");

/// The subcommands a runbook step may name; anything else is a typo found now rather than
/// during an incident.
const COMMANDS: &[&str] = &[
    "wal",
    "backup",
    "restore",
    "list",
    "status",
    "verify",
    "prune",
    "catalog",
    "failover",
    "verify-recovery",
    "runbook",
    "drill",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runbook {
    pub version: u32,
    pub title: String,
    /// The seed's key (`jq .backup_retention_policy` keeps working); `retention_policy`, an
    /// earlier spelling, is still read.
    #[serde(rename = "backup_retention_policy", alias = "retention_policy")]
    pub retention_policy: RetentionPolicy,
    pub escalation_matrix: Vec<Escalation>,
    pub incidents: Vec<Incident>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionPolicy {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub wal_days: u32,
    pub summary: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Escalation {
    pub level: u32,
    pub role: String,
    pub contact: String,
    pub after_minutes: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incident {
    pub id: String,
    pub title: String,
    pub severity: String,
    pub rto_minutes: u32,
    pub rpo: String,
    pub detection: String,
    pub steps: Vec<Step>,
    pub escalate_after_minutes: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

impl Runbook {
    pub fn builtin() -> Result<Self, OpsError> {
        Self::parse("the built-in runbook", BUILTIN)
    }

    /// Parse and check `text`; every problem found is listed in the error, one per line.
    pub fn parse(source: &str, text: &str) -> Result<Self, OpsError> {
        let runbook: Runbook = serde_json::from_str(text).map_err(|e| OpsError::Runbook {
            source_name: source.to_string(),
            problems: vec![format!("not a runbook: {e}")],
        })?;
        let problems = runbook.problems();
        if problems.is_empty() {
            Ok(runbook)
        } else {
            Err(OpsError::Runbook {
                source_name: source.to_string(),
                problems,
            })
        }
    }

    pub fn incident(&self, id: &str) -> Option<&Incident> {
        self.incidents
            .iter()
            .find(|i| i.id.eq_ignore_ascii_case(id))
    }

    /// Everything wrong with the runbook, in words an operator can act on.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.version != 1 {
            problems.push(format!("version {} is not supported: use 1", self.version));
        }
        if self.escalation_matrix.is_empty() {
            problems.push("escalation_matrix is empty: name at least who is paged first".into());
        }
        for pair in self.escalation_matrix.windows(2) {
            if pair[1].level <= pair[0].level || pair[1].after_minutes < pair[0].after_minutes {
                problems.push(format!(
                    "escalation level {} must come after level {} (higher level, later or equal after_minutes)",
                    pair[1].level, pair[0].level
                ));
            }
        }
        if self.incidents.is_empty() {
            problems.push("no incidents".into());
        }
        let mut seen = HashSet::new();
        for incident in &self.incidents {
            problems.extend(incident_problems(incident));
            if !seen.insert(incident.id.to_ascii_uppercase()) {
                problems.push(format!("{}: the id is used twice", incident.id));
            }
        }
        problems
    }

    /// The one-line-per-incident overview of `lifeline runbook`.
    pub fn summary(&self) -> String {
        let mut out = format!("{}\n", self.title);
        for i in &self.incidents {
            let _ = writeln!(
                out,
                "  {:<8} {:<3} RTO {:>3} min  {}",
                i.id, i.severity, i.rto_minutes, i.title
            );
        }
        let _ = writeln!(out, "retention: {}", self.retention_policy.summary);
        out
    }

    /// One incident in full, with the escalation that applies to it.
    pub fn render(&self, incident: &Incident) -> String {
        let mut out = format!(
            "{} {} (severity {})\nRTO: {} minutes\nRPO: {}\ndetection: {}\nsteps:\n",
            incident.id,
            incident.title,
            incident.severity,
            incident.rto_minutes,
            incident.rpo,
            incident.detection
        );
        for (n, step) in incident.steps.iter().enumerate() {
            let _ = writeln!(out, "  {}. {}", n + 1, step.description);
            if let Some(command) = &step.command {
                let _ = writeln!(out, "       $ {command}");
            }
        }
        let _ = writeln!(
            out,
            "escalation (start escalating after {} minutes without recovery):",
            incident.escalate_after_minutes
        );
        for e in &self.escalation_matrix {
            let _ = writeln!(
                out,
                "  level {} at +{} min: {} ({})",
                e.level,
                incident.escalate_after_minutes + e.after_minutes,
                e.role,
                e.contact
            );
        }
        let p = &self.retention_policy;
        let _ = writeln!(
            out,
            "backup retention: {} daily, {} weekly, {} monthly, WAL for {} days",
            p.daily, p.weekly, p.monthly, p.wal_days
        );
        out
    }
}

fn incident_problems(incident: &Incident) -> Vec<String> {
    let mut problems = Vec::new();
    let id = &incident.id;
    let well_formed =
        id.len() == 7 && id.starts_with("INC-") && id[4..].bytes().all(|b| b.is_ascii_digit());
    if !well_formed {
        problems.push(format!("{id:?}: incident ids look like INC-001"));
    }
    if incident.title.trim().is_empty() {
        problems.push(format!("{id}: the title is empty"));
    }
    if incident.rto_minutes == 0 {
        problems.push(format!("{id}: rto_minutes must be above 0"));
    }
    if incident.steps.is_empty() {
        problems.push(format!("{id}: no steps"));
    }
    for (n, step) in incident.steps.iter().enumerate() {
        if step.description.trim().is_empty() {
            problems.push(format!("{id} step {}: the description is empty", n + 1));
        }
        let Some(command) = &step.command else {
            continue;
        };
        let mut words = command.split_whitespace();
        let known = words.next() == Some("lifeline")
            && words.next().is_some_and(|sub| COMMANDS.contains(&sub));
        if !known {
            problems.push(format!(
                "{id} step {}: {command:?} is not a lifeline command (known: lifeline {})",
                n + 1,
                COMMANDS.join("|")
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_runbook_is_valid_and_complete() {
        let runbook = Runbook::builtin().expect("built-in runbook");
        let ids: Vec<&str> = runbook.incidents.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "INC-001", "INC-002", "INC-003", "INC-004", "INC-005", "INC-006"
            ]
        );
        assert!(runbook.incident("inc-003").is_some());
        let text = runbook.render(runbook.incident("INC-003").expect("INC-003"));
        // The seed's RTOs, incident by incident.
        assert!(text.contains("RTO: 20 minutes"), "{text}");
        let rtos: Vec<u32> = runbook.incidents.iter().map(|i| i.rto_minutes).collect();
        assert_eq!(rtos, [5, 30, 20, 5, 60, 45]);
        let json = serde_json::to_value(&runbook).expect("serializes");
        assert_eq!(json["backup_retention_policy"]["daily"], 7);
        assert!(
            text.contains("$ lifeline failover --incident database_failure"),
            "{text}"
        );
        assert!(text.contains("level 2 at +30 min"), "{text}");
    }

    #[test]
    fn every_problem_is_reported() {
        let mut runbook = Runbook::builtin().expect("built-in runbook");
        runbook.incidents[1].id = "INC-001".into();
        runbook.incidents[2].rto_minutes = 0;
        runbook.incidents[3].steps[0].command = Some("lifeline failvoer --status".into());
        runbook.incidents[4].id = "INC5".into();
        runbook.escalation_matrix.swap(0, 1);
        let text = serde_json::to_string(&runbook).expect("serialize");
        let Err(OpsError::Runbook { problems, .. }) = Runbook::parse("custom.json", &text) else {
            panic!("a broken runbook was accepted");
        };
        let all = problems.join("\n");
        assert_eq!(problems.len(), 5, "{all}");
        assert!(all.contains("INC-001: the id is used twice"), "{all}");
        assert!(
            all.contains("INC-003: rto_minutes must be above 0"),
            "{all}"
        );
        assert!(
            all.contains("\"lifeline failvoer --status\" is not a lifeline command"),
            "{all}"
        );
        assert!(
            all.contains("\"INC5\": incident ids look like INC-001"),
            "{all}"
        );
        assert!(
            all.contains("escalation level 1 must come after level 2"),
            "{all}"
        );
    }

    #[test]
    fn unknown_fields_and_bad_json_are_refused() {
        let err = Runbook::parse("x.json", "{\"version\": 1}").expect_err("incomplete");
        assert!(err.to_string().contains("x.json"), "{err}");
        let with_extra = BUILTIN.replacen("\"version\": 1,", "\"version\": 1, \"verison\": 2,", 1);
        assert!(Runbook::parse("x.json", &with_extra).is_err());
    }
}
