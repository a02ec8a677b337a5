//! Where a pipeline's time goes: each stage's time summed over every thread that ran it, for
//! one debug log line at the end of a backup or restore (`LIFELINE_LOG=debug`). A stage that
//! runs on several threads at once can add up to more than the wall time; a stage that waits
//! (a reader blocked on a full channel, a writer waiting for work) says which side is the
//! bottleneck.
//!
//! Counting costs two clock reads and one relaxed atomic add per measured step (a chunk, a
//! block, a pack), nothing next to the work measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Time summed per stage, named when the pipeline starts.
#[derive(Debug)]
pub struct Stages {
    names: &'static [&'static str],
    nanos: Vec<AtomicU64>,
    counts: Vec<AtomicU64>,
}

impl Stages {
    pub fn new(names: &'static [&'static str]) -> Stages {
        Stages {
            names,
            nanos: names.iter().map(|_| AtomicU64::new(0)).collect(),
            counts: names.iter().map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Count `elapsed` for stage `stage` (an index into the names; others are ignored).
    pub fn add(&self, stage: usize, elapsed: Duration) {
        if let (Some(nanos), Some(count)) = (self.nanos.get(stage), self.counts.get(stage)) {
            let elapsed = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
            nanos.fetch_add(elapsed, Ordering::Relaxed);
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Run `work` and count its time for `stage`.
    pub fn time<T>(&self, stage: usize, work: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let result = work();
        self.add(stage, started.elapsed());
        result
    }

    /// `read 1.20 s (11000), hash 0.80 s (11000), …`: seconds and steps per stage.
    pub fn summary(&self) -> String {
        self.names
            .iter()
            .zip(self.nanos.iter().zip(&self.counts))
            .map(|(name, (nanos, count))| {
                let seconds = nanos.load(Ordering::Relaxed) as f64 / 1e9;
                format!("{name} {seconds:.2} s ({})", count.load(Ordering::Relaxed))
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_sum_their_steps() {
        let stages = Stages::new(&["read", "write"]);
        stages.add(0, Duration::from_millis(1500));
        stages.add(0, Duration::from_millis(500));
        assert_eq!(stages.time(1, || 7), 7);
        stages.add(9, Duration::from_secs(1));
        let summary = stages.summary();
        assert!(
            summary.starts_with("read 2.00 s (2), write 0.00 s (1)"),
            "{summary}"
        );
    }
}
