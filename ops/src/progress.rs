//! The CLI's [`Progress`] for backups, restores and drills.
//!
//! On a terminal (stderr is a TTY) an indicatif bar: bytes done of the total, rate and ETA, or
//! bytes and rate while the total is unknown (a dump, a diskless RDB), or the phase alone
//! before any byte moves. Without a terminal (cron, systemd, a pipe) a bar would be noise, so a
//! line is logged every [`LOG_INTERVAL`] instead, then one last line when the operation ends:
//! an operation over within the first interval logs nothing. The lines go to the target
//! [`LOG_TARGET`], which the terminal's log layer drops when it draws the bar (see
//! [`crate::oplog::init_logging`]); the operation log keeps them either way.
//!
//! Nothing here writes to stdout, so `--json` output stays clean.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use storage::progress::Progress;

/// How often a progress line is logged without a terminal.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The `tracing` target of the progress lines.
pub const LOG_TARGET: &str = "lifeline::progress";

/// Milliseconds between progress lines instead of [`LOG_INTERVAL`]: for the tests, which cannot
/// make a backup last ten seconds cheaply. Not documented for operators.
const INTERVAL_ENV: &str = "LIFELINE_PROGRESS_INTERVAL";

/// A reporter for `operation` ("backup", "restore", "drill"), drawn or logged as stderr
/// allows; call [`Progress::finish`] before printing the operation's result.
pub fn for_operation(operation: &str) -> Arc<dyn Progress> {
    let interval = std::env::var(INTERVAL_ENV)
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|&ms| ms > 0)
        .map_or(LOG_INTERVAL, Duration::from_millis);
    let bar = std::io::stderr().is_terminal().then(|| new_bar(operation));
    Arc::new(Reporter::start(operation, bar, interval))
}

/// The counters the pipelines advance and the logger reads.
#[derive(Debug)]
struct Counters {
    operation: String,
    started: Instant,
    done: AtomicU64,
    /// `UNKNOWN` until the operation knows its size.
    total: AtomicU64,
    phase: Mutex<String>,
}

const UNKNOWN: u64 = u64::MAX;

impl Counters {
    fn total(&self) -> Option<u64> {
        Some(self.total.load(Ordering::Relaxed)).filter(|&t| t != UNKNOWN)
    }

    fn phase(&self) -> String {
        self.phase
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Which of the bar's styles is showing: the phase alone, bytes and rate, or the full bar.
const STYLE_PHASE: u8 = 0;
const STYLE_BYTES: u8 = 1;
const STYLE_BAR: u8 = 2;

struct Reporter {
    counters: Arc<Counters>,
    bar: Option<ProgressBar>,
    /// The bar is drawn from the first report on: a reporter made early (a dump restore's,
    /// while the pre-restore dump draws its own) stays off the screen until it has news.
    shown: AtomicBool,
    style: AtomicU8,
    /// Dropping the sender stops the logger, which answers with whether it logged anything.
    logger: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<bool>)>>,
    finished: AtomicBool,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("counters", &self.counters)
            .field("terminal", &self.bar.is_some())
            .finish_non_exhaustive()
    }
}

impl Reporter {
    fn start(operation: &str, bar: Option<ProgressBar>, interval: Duration) -> Reporter {
        let counters = Arc::new(Counters {
            operation: operation.to_string(),
            started: Instant::now(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(UNKNOWN),
            phase: Mutex::new(String::new()),
        });
        let (stop, stopped) = mpsc::channel();
        let logging = counters.clone();
        // Without its thread the operation runs unreported, which is no reason to fail it.
        let logger = std::thread::Builder::new()
            .name("progress".into())
            .spawn(move || log_every(&logging, interval, &stopped))
            .ok()
            .map(|handle| (stop, handle));
        Reporter {
            counters,
            bar,
            shown: AtomicBool::new(false),
            style: AtomicU8::new(STYLE_PHASE),
            logger: Mutex::new(logger),
            finished: AtomicBool::new(false),
        }
    }

    /// The bar, drawn from now on; called by every report.
    fn bar(&self) -> Option<&ProgressBar> {
        let bar = self.bar.as_ref()?;
        if !self.shown.load(Ordering::Relaxed) && !self.shown.swap(true, Ordering::AcqRel) {
            bar.reset_elapsed();
            bar.set_draw_target(ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(120));
        }
        Some(bar)
    }

    fn restyle(&self, from: u8, to: u8, template: &str) {
        let Some(bar) = &self.bar else { return };
        if self
            .style
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            bar.set_style(style(template));
        }
    }
}

impl Progress for Reporter {
    fn set_total(&self, bytes: u64) {
        self.counters.total.store(bytes, Ordering::Relaxed);
        if let Some(bar) = self.bar() {
            bar.set_length(bytes);
            self.restyle(STYLE_PHASE, STYLE_BAR, BAR_TEMPLATE);
            self.restyle(STYLE_BYTES, STYLE_BAR, BAR_TEMPLATE);
        }
    }

    fn advance(&self, bytes: u64) {
        self.counters.done.fetch_add(bytes, Ordering::Relaxed);
        if let Some(bar) = self.bar() {
            bar.inc(bytes);
            if self.style.load(Ordering::Relaxed) == STYLE_PHASE {
                self.restyle(STYLE_PHASE, STYLE_BYTES, BYTES_TEMPLATE);
            }
        }
    }

    fn set_phase(&self, phase: &str) {
        phase.clone_into(
            &mut self
                .counters
                .phase
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        if let Some(bar) = self.bar() {
            bar.set_message(phase.to_string());
        }
    }

    fn finish(&self) {
        if self.finished.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let logger = self
            .logger
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some((stop, handle)) = logger else { return };
        drop(stop);
        // The last line only follows earlier ones: a short operation stays out of the log.
        if handle.join().unwrap_or(false) {
            let c = &self.counters;
            let done = c.done.load(Ordering::Relaxed);
            let elapsed = c.started.elapsed();
            let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
            let line = final_line(&c.operation, done, c.total(), rate, elapsed);
            log(&line, done, c.total());
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The logger thread: a line every `interval` until the sender is dropped; returns whether it
/// logged any. The rate is the last interval's, so a stall (waiting for WAL) shows as one.
fn log_every(counters: &Counters, interval: Duration, stop: &mpsc::Receiver<()>) -> bool {
    let mut logged = false;
    let (mut last_done, mut last_at) = (0, Instant::now());
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(interval) {
        let (done, now) = (counters.done.load(Ordering::Relaxed), Instant::now());
        let seconds = now.duration_since(last_at).as_secs_f64().max(0.001);
        let rate = done.saturating_sub(last_done) as f64 / seconds;
        (last_done, last_at) = (done, now);
        let total = counters.total();
        let line = progress_line(
            &counters.operation,
            &counters.phase(),
            done,
            total,
            rate,
            counters.started.elapsed(),
        );
        log(&line, done, total);
        logged = true;
    }
    logged
}

fn log(line: &str, done: u64, total: Option<u64>) {
    tracing::info!(target: LOG_TARGET, bytes = done, total_bytes = total, "{line}");
}

/// `progress: backup 1.2 GiB of 3.0 GiB (40%), 380 MiB/s, ETA 5 s`; bytes and rate alone while
/// the total is unknown; the elapsed time and the phase alone before any byte moved.
fn progress_line(
    operation: &str,
    phase: &str,
    done: u64,
    total: Option<u64>,
    rate: f64,
    elapsed: Duration,
) -> String {
    let mut line = format!("progress: {operation}");
    if done == 0 && total.is_none() {
        line.push_str(&format!(", {}", duration(elapsed)));
    } else {
        line.push_str(&format!(" {}", amount(done, total)));
        line.push_str(&format!(", {}/s", bytes(rate as u64)));
        let eta = total
            .filter(|&t| t > done && rate >= 1.0)
            .map(|t| Duration::from_secs_f64((t - done) as f64 / rate));
        if let Some(eta) = eta {
            line.push_str(&format!(", ETA {}", duration(eta)));
        }
    }
    if !phase.is_empty() {
        line.push_str(&format!(" ({phase})"));
    }
    line
}

/// The line an operation that was reported ends with: what it moved, at what average rate.
fn final_line(
    operation: &str,
    done: u64,
    total: Option<u64>,
    rate: f64,
    elapsed: Duration,
) -> String {
    format!(
        "progress: {operation} ended at {} in {}, {}/s",
        amount(done, total),
        duration(elapsed),
        bytes(rate as u64)
    )
}

/// `1.2 GiB of 3.0 GiB (40%)`, or `1.2 GiB` without a total. Files that grew while a backup
/// read them can carry the bytes past the total: the percentage stops at 100.
fn amount(done: u64, total: Option<u64>) -> String {
    match total {
        Some(total) => {
            let percent = if total == 0 {
                100
            } else {
                (u128::from(done) * 100 / u128::from(total)).min(100)
            };
            format!("{} of {} ({percent}%)", bytes(done), bytes(total))
        }
        None => bytes(done),
    }
}

/// Binary units, one decimal below 10 (`1.2 GiB`, `380 MiB`, `512 B`).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    if value < 10.0 {
        format!("{value:.1} {unit}")
    } else {
        format!("{value:.0} {unit}")
    }
}

/// `5 s`, `3 min 20 s`, `2 h 05 min`.
fn duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, s / 60 % 60),
    }
}

const PHASE_TEMPLATE: &str = "{spinner} {prefix} {elapsed:>4} {msg}";
const BYTES_TEMPLATE: &str =
    "{spinner} {prefix} {elapsed:>4} {binary_bytes} {binary_bytes_per_sec} {msg}";
const BAR_TEMPLATE: &str = "{spinner} {prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
                            {binary_bytes_per_sec}, ETA {eta} {msg}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn new_bar(operation: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
    bar.set_style(style(PHASE_TEMPLATE));
    bar.set_prefix(operation.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    #[test]
    fn a_line_has_bytes_of_the_total_rate_and_eta() {
        let line = progress_line(
            "backup",
            "",
            2 * GIB,
            Some(5 * GIB),
            (380 * MIB) as f64,
            Duration::from_secs(4),
        );
        assert_eq!(
            line,
            "progress: backup 2.0 GiB of 5.0 GiB (40%), 380 MiB/s, ETA 8 s"
        );
    }

    #[test]
    fn without_a_total_a_line_has_bytes_and_rate_only() {
        let line = progress_line(
            "backup",
            "",
            700 * MIB,
            None,
            (35 * MIB) as f64,
            Duration::from_secs(20),
        );
        assert_eq!(line, "progress: backup 700 MiB, 35 MiB/s");
    }

    #[test]
    fn a_stall_shows_no_eta_and_the_phase() {
        let line = progress_line(
            "backup",
            "waiting for WAL",
            3 * GIB,
            Some(3 * GIB),
            0.0,
            Duration::from_secs(30),
        );
        assert_eq!(
            line,
            "progress: backup 3.0 GiB of 3.0 GiB (100%), 0 B/s (waiting for WAL)"
        );
    }

    #[test]
    fn before_any_byte_a_line_has_the_elapsed_time_and_phase() {
        let line = progress_line("drill", "restoring", 0, None, 0.0, Duration::from_secs(200));
        assert_eq!(line, "progress: drill, 3 min 20 s (restoring)");
    }

    #[test]
    fn bytes_beyond_the_total_stop_at_100_percent() {
        assert_eq!(amount(110, Some(100)), "110 B of 100 B (100%)");
        assert_eq!(amount(0, Some(0)), "0 B of 0 B (100%)");
        assert!(amount(u64::MAX - 1, Some(u64::MAX - 1)).contains("(100%)"));
    }

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(380 * MIB), "380 MiB");
        assert_eq!(bytes(u64::MAX), "16 EiB");
        assert_eq!(duration(Duration::from_secs(59)), "59 s");
        assert_eq!(duration(Duration::from_secs(3599)), "59 min 59 s");
        assert_eq!(duration(Duration::from_secs(7500)), "2 h 05 min");
    }

    #[test]
    fn the_bar_templates_parse() {
        for template in [PHASE_TEMPLATE, BYTES_TEMPLATE, BAR_TEMPLATE] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }

    #[test]
    fn the_last_line_has_the_average_rate() {
        let line = final_line(
            "restore",
            3 * GIB,
            Some(3 * GIB),
            (256 * MIB) as f64,
            Duration::from_secs(12),
        );
        assert_eq!(
            line,
            "progress: restore ended at 3.0 GiB of 3.0 GiB (100%) in 12 s, 256 MiB/s"
        );
    }

    #[test]
    fn only_an_operation_longer_than_the_interval_is_logged() {
        let quick = Reporter::start("backup", None, Duration::from_secs(3600));
        quick.advance(10);
        let handle = quick.logger.lock().expect("lock").take();
        let (stop, handle) = handle.expect("logger");
        drop(stop);
        assert!(!handle.join().expect("join"), "nothing logged");

        let slow = Reporter::start("backup", None, Duration::from_millis(5));
        slow.set_total(100);
        slow.advance(60);
        // A plain test thread: no runtime worker waits here.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(50));
        let handle = slow.logger.lock().expect("lock").take();
        let (stop, handle) = handle.expect("logger");
        drop(stop);
        assert!(handle.join().expect("join"), "lines logged");
    }
}
