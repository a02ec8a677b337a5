//! The transcript of an operation: findings and numbered steps, handed to the caller's sink as
//! they happen (the operator watches a failover live), kept for the report and the
//! notification. Under `--simulate` a step is announced as the plan and not taken.

/// A line for the sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line<'a> {
    /// Part of the report: shown, logged, and kept in the transcript.
    Report(&'a str),
    /// For the operator's screen only (a restore's own summary between the steps).
    Aside(&'a str),
}

/// The first line of a simulation's transcript (and log): how a simulation is told from a run.
pub const SIMULATION_BANNER: &str = "SIMULATION: read-only checks run; the steps below are what a real run would do, nothing is changed";

/// A setting a plan needs that the configuration does not name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The key or variable that fixes it: `PGDATA (or pgdata in the config)`.
    pub setting: String,
    /// What a run does without it, in the conditional: a real run and a simulation both say it.
    pub without: String,
    /// Without it the plan cannot be carried out; otherwise a step is left to the operator.
    pub required: bool,
}

impl Missing {
    pub fn required(setting: impl Into<String>, without: impl Into<String>) -> Missing {
        Missing {
            setting: setting.into(),
            without: without.into(),
            required: true,
        }
    }

    pub fn optional(setting: impl Into<String>, without: impl Into<String>) -> Missing {
        Missing {
            required: false,
            ..Missing::required(setting, without)
        }
    }
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.setting, self.without)
    }
}

/// `missing` as one sentence: every setting, the ones a run cannot do without first.
pub fn missing_sentence(missing: &[Missing]) -> String {
    let mut sorted: Vec<&Missing> = missing.iter().collect();
    sorted.sort_by_key(|m| !m.required);
    let listed: Vec<String> = sorted
        .iter()
        .map(|m| match m.required {
            true => m.to_string(),
            false => format!("{} (optional): {}", m.setting, m.without),
        })
        .collect();
    let n = missing.len();
    format!(
        "{n} setting{} missing: {}",
        if n == 1 { "" } else { "s" },
        listed.join("; ")
    )
}

pub struct Steps {
    simulate: bool,
    taken: usize,
    lines: Vec<String>,
    /// What a simulation went past: the settings a real run would have stopped on, named.
    unmet: Vec<Missing>,
    sink: Box<dyn FnMut(Line<'_>) + Send>,
}

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steps")
            .field("simulate", &self.simulate)
            .field("taken", &self.taken)
            .field("lines", &self.lines)
            .field("unmet", &self.unmet)
            .finish_non_exhaustive()
    }
}

impl Steps {
    /// `sink` receives each line as it is said (the binary prints and logs it).
    pub fn new(simulate: bool, sink: impl FnMut(Line<'_>) + Send + 'static) -> Self {
        let mut steps = Self {
            simulate,
            taken: 0,
            lines: Vec::new(),
            unmet: Vec::new(),
            sink: Box::new(sink),
        };
        if simulate {
            steps.say(SIMULATION_BANNER);
        }
        steps
    }

    pub fn simulate(&self) -> bool {
        self.simulate
    }

    /// A line of the report.
    pub fn say(&mut self, text: impl Into<String>) {
        let text = text.into();
        (self.sink)(Line::Report(&text));
        self.lines.push(text);
    }

    /// A line shown between the report's lines and not kept in it.
    pub fn aside(&mut self, text: impl AsRef<str>) {
        (self.sink)(Line::Aside(text.as_ref()));
    }

    /// What a read-only check found.
    pub fn found(&mut self, text: impl AsRef<str>) {
        self.say(format!("  check: {}", text.as_ref()));
    }

    /// Announce step N; true when it is to be taken (not a simulation).
    pub fn step(&mut self, text: impl AsRef<str>) -> bool {
        self.taken += 1;
        let n = self.taken;
        if self.simulate {
            self.say(format!("step {n} (would run): {}", text.as_ref()));
        } else {
            self.say(format!("step {n}: {}", text.as_ref()));
        }
        !self.simulate
    }

    /// Name every setting in `missing` at once, before the plan's first step. A real run
    /// refuses when one it cannot do without is among them, naming them all, so that one
    /// edit of the configuration fixes them; a simulation goes on with the plan, and its
    /// result names them ([`Steps::unmet`]).
    pub fn settings(&mut self, missing: Vec<Missing>) -> Result<(), crate::OpsError> {
        for m in &missing {
            self.found(format!("missing setting {m}"));
        }
        if !missing.iter().any(|m| m.required) {
            return Ok(());
        }
        if self.simulate {
            self.unmet.extend(missing);
            return Ok(());
        }
        let required: Vec<&str> = missing
            .iter()
            .filter(|m| m.required)
            .map(|m| m.setting.as_str())
            .collect();
        Err(crate::OpsError::NotConfigured(format!(
            "{}. Nothing was changed: set {} and run again",
            missing_sentence(&missing),
            required.join(" and ")
        )))
    }

    /// The settings a real run would have named when it stopped, where a simulation went on.
    pub fn unmet(&self) -> &[Missing] {
        &self.unmet
    }

    /// The outcome of the step just announced.
    pub fn done(&mut self, text: impl AsRef<str>) {
        self.say(format!("  done: {}", text.as_ref()));
    }

    pub fn transcript(&self) -> String {
        self.lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn a_simulation_numbers_the_plan_and_takes_no_step() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let mut steps = Steps::new(true, move |line| {
            sink.lock().expect("sink").push(format!("{line:?}"));
        });
        steps.found("primary is DOWN");
        steps.aside("restored backup b into /d");
        assert!(!steps.step("promote the replica"));
        assert!(!steps.step("switch the connection file"));
        let said = seen.lock().expect("sink").clone();
        assert_eq!(
            said,
            [
                r#"Report("SIMULATION: read-only checks run; the steps below are what a real run would do, nothing is changed")"#,
                r#"Report("  check: primary is DOWN")"#,
                r#"Aside("restored backup b into /d")"#,
                r#"Report("step 1 (would run): promote the replica")"#,
                r#"Report("step 2 (would run): switch the connection file")"#,
            ]
        );
        assert_eq!(
            steps.transcript(),
            "SIMULATION: read-only checks run; the steps below are what a real run would do, nothing is changed\n  check: primary is DOWN\nstep 1 (would run): promote the replica\nstep 2 (would run): switch the connection file"
        );
    }

    fn missing() -> Vec<Missing> {
        vec![
            Missing::optional(
                "[failover] replica-host / REPLICA_HOST",
                "no replica to promote",
            ),
            Missing::required(
                "PGDATA (or pgdata in the config)",
                "no data directory to restore into",
            ),
            Missing::optional(
                "[failover] postgres-start-command",
                "PostgreSQL would have to be started by hand",
            ),
        ]
    }

    #[test]
    fn a_real_run_names_every_missing_setting_and_refuses_before_any_step() {
        let mut steps = Steps::new(false, |_| {});
        let err = steps.settings(missing()).expect_err("PGDATA is required");
        assert!(matches!(err, crate::OpsError::NotConfigured(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "3 settings missing: PGDATA (or pgdata in the config): no data directory to restore into; \
             [failover] replica-host / REPLICA_HOST (optional): no replica to promote; \
             [failover] postgres-start-command (optional): PostgreSQL would have to be started by hand. \
             Nothing was changed: set PGDATA (or pgdata in the config) and run again"
        );
        assert_eq!(steps.transcript().lines().count(), 3);
        assert!(steps.unmet().is_empty());
        // Optional ones alone are said and the run goes on.
        let mut steps = Steps::new(false, |_| {});
        let optional: Vec<_> = missing().into_iter().filter(|m| !m.required).collect();
        steps.settings(optional).expect("nothing required");
        assert_eq!(
            steps.transcript(),
            "  check: missing setting [failover] replica-host / REPLICA_HOST: no replica to promote\n  check: missing setting [failover] postgres-start-command: PostgreSQL would have to be started by hand"
        );
    }

    #[test]
    fn a_simulation_names_every_missing_setting_and_goes_on_with_the_plan() {
        let mut steps = Steps::new(true, |_| {});
        steps.settings(missing()).expect("a simulation goes on");
        assert!(!steps.step("restore the newest base backup"));
        assert_eq!(steps.unmet(), missing());
        let said = steps.transcript();
        assert_eq!(
            said.matches("  check: missing setting ").count(),
            3,
            "{said}"
        );
        assert!(said.ends_with("step 1 (would run): restore the newest base backup"));
    }

    #[test]
    fn a_real_run_takes_its_steps_and_records_their_outcome() {
        let mut steps = Steps::new(false, |_| {});
        assert!(steps.step("restart api"));
        steps.done("restart command exited 0");
        assert_eq!(
            steps.transcript(),
            "step 1: restart api\n  done: restart command exited 0"
        );
    }
}
