//! Restart commands and health URLs: what `service_failure` and `redis_failure` drive.

use std::time::{Duration, Instant};

use crate::OpsError;
use crate::http::{Request, send};

/// Run `command` with `sh -c`; Ok with its output when it exits 0 within `timeout`.
pub async fn run_shell(command: &str, timeout: Duration) -> Result<String, OpsError> {
    let failed = |message: String| OpsError::Command {
        what: format!("`{command}`"),
        message,
    };
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(timeout, child)
        .await
        .map_err(|_| {
            failed(format!(
                "still running after {} s; stopped",
                timeout.as_secs()
            ))
        })?
        .map_err(|e| failed(format!("cannot be started: {e}")))?;
    let text = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if output.status.success() {
        return Ok(text);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    Err(failed(format!("exited with {}: {last}", output.status)))
}

/// Poll `url` every half second until it answers 2xx; returns how long that took.
pub async fn wait_healthy(url: &str, timeout: Duration) -> Result<Duration, OpsError> {
    let started = Instant::now();
    let mut last = String::from("no answer yet");
    while started.elapsed() < timeout {
        match send(Request::get(url, Duration::from_secs(5))).await {
            Ok(r) if (200..300).contains(&r.status) => return Ok(started.elapsed()),
            Ok(r) => last = format!("HTTP {}", r.status),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(OpsError::Timeout(format!(
        "the health URL was not healthy within {} s (last: {last})",
        timeout.as_secs()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commands_report_their_exit_and_last_error_line() {
        assert_eq!(
            run_shell("echo up", Duration::from_secs(5))
                .await
                .expect("runs"),
            "up"
        );
        let err = run_shell("echo nope >&2; exit 3", Duration::from_secs(5))
            .await
            .expect_err("fails")
            .to_string();
        assert!(
            err.contains("exit status: 3") && err.contains("nope"),
            "{err}"
        );
        let err = run_shell("sleep 5", Duration::from_millis(200))
            .await
            .expect_err("times out")
            .to_string();
        assert!(err.contains("still running"), "{err}");
    }
}
