//! The transcript of an operation: findings and numbered steps, printed as they happen, kept
//! for the report and the notification, and written to the operation log. Under `--simulate`
//! a step is printed as the plan and not taken.

#[derive(Debug)]
pub struct Steps {
    simulate: bool,
    taken: usize,
    lines: Vec<String>,
}

impl Steps {
    pub fn new(simulate: bool) -> Self {
        let mut steps = Self {
            simulate,
            taken: 0,
            lines: Vec::new(),
        };
        if simulate {
            steps.say("SIMULATION: read-only checks run; the steps below are the plan, nothing is changed");
        }
        steps
    }

    pub fn simulate(&self) -> bool {
        self.simulate
    }

    /// A line of the report.
    pub fn say(&mut self, text: impl Into<String>) {
        let text = text.into();
        println!("{text}");
        tracing::info!(target: "lifeline::report", "{text}");
        self.lines.push(text);
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
