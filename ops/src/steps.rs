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

pub struct Steps {
    simulate: bool,
    taken: usize,
    lines: Vec<String>,
    sink: Box<dyn FnMut(Line<'_>) + Send>,
}

impl std::fmt::Debug for Steps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Steps")
            .field("simulate", &self.simulate)
            .field("taken", &self.taken)
            .field("lines", &self.lines)
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
