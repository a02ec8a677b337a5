//! Operation logs: every operation (backups, restores, prune, verify, failover, drills) writes
//! `BACKUP_DIR/logs/<operation>_YYYYMMDD_HHMMSS.log`, the same events as the terminal plus the
//! report lines, so the incident review has the whole story. `wal push`/`wal fetch` run once
//! per segment and log to PostgreSQL's server log instead.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;

/// Create the log file of `operation` (0600 in a 0700 `logs/`, as root given to the owner of
/// BACKUP_DIR); None (with a warning on stderr) when it cannot be, as a missing log must not
/// stop a restore. A missing BACKUP_DIR is never created here: the command says what to do.
pub fn open(backup_dir: Option<&std::path::Path>, operation: &str) -> Option<(File, PathBuf)> {
    use storage::private::{self, Owner};
    let backup_dir = backup_dir?;
    if !backup_dir.is_dir() {
        return None;
    }
    let owner = Owner::of(backup_dir);
    let dir = backup_dir.join("logs");
    let stamp = jiff::Zoned::now().strftime("%Y%m%d_%H%M%S").to_string();
    let create = || -> std::io::Result<(File, PathBuf)> {
        private::create_dir(&dir, owner)?;
        // A log written through a link would land, owned by the repository's owner, wherever
        // the link points.
        if std::fs::symlink_metadata(&dir)?.file_type().is_symlink() {
            return Err(std::io::Error::other(
                "it is a link, not a directory: make it a directory",
            ));
        }
        for n in 0..100 {
            let name = if n == 0 {
                format!("{operation}_{stamp}.log")
            } else {
                format!("{operation}_{stamp}_{n}.log")
            };
            let path = dir.join(name);
            match private::create_new_file(&path, owner) {
                Ok(file) => return Ok((file, path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("100 logs in one second"))
    };
    match create() {
        Ok(opened) => Some(opened),
        Err(e) => {
            eprintln!(
                "lifeline: warning: no operation log in {} ({e}); continuing",
                dir.display()
            );
            None
        }
    }
}

/// Log to stderr (as `LIFELINE_LOG` filters) and, when there is one, to the operation log.
pub fn init_logging(operation_log: Option<std::fs::File>) {
    use tracing_subscriber::filter::{EnvFilter, Targets};
    use tracing_subscriber::prelude::*;
    // Report lines are printed on stdout already; they go to the operation log only.
    // On a terminal progress is a bar (crate::progress); its lines are for logs.
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let off = if tty {
        "lifeline::report=off,lifeline::progress=off"
    } else {
        "lifeline::report=off"
    };
    let spec = std::env::var("LIFELINE_LOG").unwrap_or_else(|_| "info".into());
    let filter = EnvFilter::try_new(format!("{spec},{off}"))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{off}")));
    let terminal = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        // PostgreSQL copies archive_command's stderr into its log: no colour codes there.
        .with_ansi(tty)
        .with_target(false)
        .with_filter(filter);
    let file = operation_log.map(|f| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::sync::Mutex::new(f))
            .with_ansi(false)
            .with_target(false)
            .with_filter(
                Targets::new()
                    .with_default(tracing::Level::INFO)
                    .with_target("aws_smithy_runtime", tracing::Level::WARN)
                    .with_target("aws_config", tracing::Level::WARN)
                    .with_target("hyper_util", tracing::Level::WARN)
                    .with_target("rustls", tracing::Level::WARN),
            )
    });
    tracing_subscriber::registry()
        .with(terminal)
        .with(file)
        .init();
}

/// The last lines of an operation log: the outcome, and on failure the whole error chain on
/// an ERROR line (what `grep -E "ERROR|FAILED" logs/*.log` finds). A failure's text follows
/// "FAILED in N s" as it is (": cause", or " (code): ...").
pub fn log_outcome(operation: &str, outcome: &Result<(), String>, started: std::time::Instant) {
    let seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(()) => tracing::info!(
            target: "lifeline::report",
            "{operation}: SUCCEEDED in {seconds:.1} s"
        ),
        Err(cause) => tracing::error!(
            target: "lifeline::report",
            "ERROR: {operation}: FAILED in {seconds:.1} s{cause}"
        ),
    }
}

/// How the process ends when something panics: with `code`, after a one-line cause; with
/// `closed_output`, quietly, when the panic is only a closed standard output.
#[derive(Debug, Clone, Copy)]
pub struct PanicExit {
    pub code: i32,
    pub closed_output: Option<i32>,
}

impl Default for PanicExit {
    /// 1, and the status a shell gives a command its reader left (128 + SIGPIPE).
    fn default() -> Self {
        PanicExit {
            code: 1,
            closed_output: Some(141),
        }
    }
}

/// A thread the system would not start (tokio's runtime and std panic then) is a limit the
/// operator can raise, not a bug.
fn thread_refused(panic_message: &str) -> Option<String> {
    let refused =
        panic_message.contains("can't spawn") || panic_message.contains("failed to spawn thread");
    refused.then(|| {
        format!(
            "the system refused to start a thread ({panic_message}): raise this user's process \
             limit (ulimit -u, systemd's TasksMax, the pids cgroup) or stop what is using it up"
        )
    })
}

/// No panic reaches the operator as a Rust backtrace: a closed standard output (`lifeline
/// status | head -1`) ends the command quietly, and any other panic is logged, with where it
/// happened, to stderr and the operation log, then ends the command with `exit.code`.
pub fn on_panic(exit: PanicExit) {
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        let closed_output =
            message.starts_with("failed printing to stdout") && message.contains("Broken pipe");
        if let (true, Some(code)) = (closed_output, exit.closed_output) {
            std::process::exit(code);
        }
        if let Some(refusal) = thread_refused(&message) {
            tracing::error!(target: "lifeline::report", "ERROR: {refusal}");
            let _ = writeln!(std::io::stderr(), "lifeline: {refusal}");
            std::process::exit(exit.code);
        }
        let place = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(target: "lifeline::report", "ERROR: internal error at {place}: {message}");
        let _ = writeln!(
            std::io::stderr(),
            "lifeline: internal error (a bug; please report it) at {place}: {message}"
        );
        std::process::exit(exit.code);
    }));
}

#[cfg(test)]
mod tests {
    use super::thread_refused;

    #[test]
    fn a_thread_the_system_refused_is_a_limit_to_raise_not_a_bug() {
        for message in [
            "OS can't spawn worker thread: Resource temporarily unavailable (os error 11)",
            "failed to spawn thread: Os { code: 11, kind: WouldBlock, message: \"Resource temporarily unavailable\" }",
        ] {
            let said = thread_refused(message).expect("a refusal");
            assert!(
                said.contains("ulimit -u") && said.contains(message),
                "{said}"
            );
        }
        assert_eq!(thread_refused("index out of bounds"), None);
    }
}
