//! The scratch server: started and stopped with pg_ctl, reached over its socket only, polled
//! until recovery pauses or promotes, and written to once promoted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use storage::wal::Lsn;

use crate::{DrillError, pg};

/// How long recovery may take before the drill gives up.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(3600);

/// How long a started server may take to show up in `pg_ctl status`.
const START_GRACE: Duration = Duration::from_secs(30);

pub(super) fn free_port() -> Result<u16, DrillError> {
    let io = |source| DrillError::Io {
        doing: "find a free port".into(),
        source,
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    Ok(listener.local_addr().map_err(io)?.port())
}

/// How to reach the scratch server, and which of the allowed roles exists there.
pub(super) struct Target {
    pub(super) socket_dir: PathBuf,
    pub(super) port: u16,
    pub(super) dbname: String,
    pub(super) roles: Vec<String>,
    pub(super) role: usize,
    pub(super) node: String,
}

impl Target {
    fn role(&self) -> &str {
        self.roles.get(self.role).map_or("postgres", String::as_str)
    }

    pub(super) fn server(&self) -> pg::Server {
        pg::Server::unix_socket(&self.socket_dir, self.port, self.role(), &self.dbname)
    }

    /// A connection; a role that does not exist there moves on to the next allowed one.
    async fn connect(&mut self) -> Result<pg::Client, String> {
        loop {
            match pg::connect(&self.server(), &self.node, Duration::from_secs(5)).await {
                Ok(client) => return Ok(client),
                Err(e) => {
                    if no_such_role(&e) && self.role + 1 < self.roles.len() {
                        self.role += 1;
                        continue;
                    }
                    return Err(e.to_string());
                }
            }
        }
    }
}

/// The server refused the role (`invalid_authorization_specification`: peer authentication
/// found no such role, or the ident map does not allow it).
fn no_such_role(e: &crate::OpsError) -> bool {
    e.sqlstate() == Some("28000")
}

/// Poll `attempt` until it answers, the server stops (its log's last lines say why) or
/// recovery takes longer than RECOVERY_TIMEOUT.
async fn poll<T>(
    server: &ScratchServer,
    log: &Path,
    what: &'static str,
    mut attempt: impl AsyncFnMut() -> Result<Option<T>, String>,
) -> Result<T, DrillError> {
    let started = Instant::now();
    let deadline = started + RECOVERY_TIMEOUT;
    let mut last = String::new();
    let mut seen_running = false;
    loop {
        match attempt().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last = e,
        }
        // pg_ctl -W returns before the postmaster has written its pid file: not running yet
        // is only a stop once it ran, or after a while.
        let running = server.running().await;
        seen_running |= running;
        if !running && (seen_running || started.elapsed() > START_GRACE) {
            return Err(DrillError::ServerStopped {
                what,
                log: last_lines(log, 3).await,
            });
        }
        if Instant::now() >= deadline {
            return Err(DrillError::RecoveryTimedOut {
                what,
                seconds: RECOVERY_TIMEOUT.as_secs(),
                last,
                log: last_lines(log, 3).await,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Wait until recovery has paused at the consistent point; returns where it paused.
pub(super) async fn wait_paused(
    server: &ScratchServer,
    target: &mut Target,
    log: &Path,
) -> Result<Lsn, DrillError> {
    let lsn = poll(server, log, "the backup's consistent point", async || {
        let client = target.connect().await?;
        match pg::recovery_state(&client, &target.node).await {
            Ok(pg::RecoveryState::Paused(lsn)) => Ok(Some(lsn)),
            Ok(pg::RecoveryState::Replaying) => Ok(None),
            Ok(pg::RecoveryState::Promoted) => {
                Err("it left recovery instead of pausing at the consistent point".into())
            }
            Err(e) => Err(e.to_string()),
        }
    })
    .await?;
    lsn.parse().map_err(|problem| DrillError::BadPosition {
        server: "paused",
        what: "position",
        value: lsn,
        problem,
    })
}

/// Wait until recovery has ended and the server is out of recovery.
pub(super) async fn wait_promoted(
    server: &ScratchServer,
    target: &mut Target,
    log: &Path,
) -> Result<(), DrillError> {
    poll(
        server,
        log,
        "the end of the archive and promotion",
        async || {
            let client = target.connect().await?;
            match pg::recovery_state(&client, &target.node).await {
                Ok(pg::RecoveryState::Promoted) => Ok(Some(())),
                Ok(_) => Ok(None),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
}

pub(super) struct Written {
    pub(super) replay_end: Lsn,
    pub(super) current: String,
    pub(super) timeline: u32,
}

/// A committed write on the promoted server, and where its WAL stands.
pub(super) async fn probe_write(target: &Target) -> Result<Written, DrillError> {
    let client = pg::connect(&target.server(), &target.node, Duration::from_secs(10))
        .await
        .map_err(|e| DrillError::PromotedUnreachable(Box::new(e)))?;
    let schema = format!("lifeline_drill_{}", std::process::id());
    let probe = pg::probe_write(&client, &target.node, &schema)
        .await
        .map_err(|e| DrillError::WriteRefused(Box::new(e)))?;
    let replay_end = probe.replay_end.as_deref().unwrap_or("0/0");
    Ok(Written {
        replay_end: replay_end
            .parse()
            .map_err(|problem| DrillError::BadPosition {
                server: "promoted",
                what: "replay end",
                value: replay_end.to_string(),
                problem,
            })?,
        current: probe.current,
        timeline: probe.timeline,
    })
}

pub(super) struct ScratchServer {
    pg_ctl: PathBuf,
    data_dir: PathBuf,
}

impl ScratchServer {
    pub(super) async fn start(
        pg_ctl: &Path,
        data_dir: &Path,
        log: &Path,
    ) -> Result<Self, DrillError> {
        // -W: recovery may take long; readiness is polled by the caller.
        let output = tokio::process::Command::new(pg_ctl)
            .arg("-D")
            .arg(data_dir)
            .arg("-l")
            .arg(log)
            .args(["-W", "start"])
            .output()
            .await
            .map_err(|source| DrillError::Io {
                doing: format!("run {}", pg_ctl.display()),
                source,
            })?;
        if !output.status.success() {
            return Err(DrillError::ServerDidNotStart {
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
                log: last_lines(log, 3).await,
            });
        }
        Ok(Self {
            pg_ctl: pg_ctl.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
        })
    }

    async fn running(&self) -> bool {
        // pg_ctl status: 0 running, 3 not running, 4 no data directory.
        tokio::process::Command::new(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data_dir)
            .arg("status")
            .output()
            .await
            .is_ok_and(|o| o.status.success())
    }

    /// A clean stop (a restartpoint is written), to start again from where it paused.
    pub(super) async fn stop_fast(self) -> Result<(), DrillError> {
        let out = tokio::process::Command::new(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "-t", "600", "stop"])
            .output()
            .await
            .map_err(|source| DrillError::Io {
                doing: format!("run {}", self.pg_ctl.display()),
                source,
            })?;
        if !out.status.success() {
            self.stop().await;
            return Err(DrillError::PausedServerDidNotStop {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(())
    }

    pub(super) async fn stop(&self) {
        let stopped = tokio::process::Command::new(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .await;
        if !stopped.is_ok_and(|o| o.status.success()) {
            tracing::warn!(
                "the scratch server in {} may still run: stop it with pg_ctl -D {} stop",
                self.data_dir.display(),
                self.data_dir.display()
            );
        }
    }
}

async fn last_lines(path: &Path, n: usize) -> String {
    let text = tokio::fs::read_to_string(path).await.unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_role_is_tried_on_sqlstate_28000_only() {
        let refused = |sqlstate: Option<&str>, message: &str| crate::OpsError::Postgres {
            node: "scratch server".into(),
            message: message.into(),
            sqlstate: sqlstate.map(String::from),
        };
        assert!(no_such_role(&refused(
            Some("28000"),
            "role \"app\" does not exist (SQLSTATE 28000)"
        )));
        assert!(!no_such_role(&refused(
            Some("57P03"),
            "the database system is starting up (SQLSTATE 57P03)"
        )));
        // Words alone are not the code.
        assert!(!no_such_role(&refused(
            None,
            "connection refused (SQLSTATE 28000)"
        )));
        assert!(!no_such_role(&crate::OpsError::Timeout(
            "(SQLSTATE 28000)".into()
        )));
    }
}
