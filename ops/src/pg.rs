//! What failover needs from PostgreSQL: who is up and in which role, how far a replica has
//! replayed, a WAL switch archived before a planned failover, and a promotion that is only
//! reported once the new primary accepts writes.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::OpsError;

pub use tokio_postgres::{Client, Config};

pub async fn connect(
    server: &Server,
    node: &str,
    timeout: Duration,
) -> Result<tokio_postgres::Client, OpsError> {
    let mut config = server.config.clone();
    config.connect_timeout(timeout).application_name("lifeline");
    let connecting = pgtls::connect(&config, &server.tls);
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(pg_error(
            node,
            format!("no answer within {} s", timeout.as_secs()),
        )),
        Ok(Err(pgtls::ConnectError::Tls(e))) => Err(pg_error(node, e.to_string())),
        Ok(Err(pgtls::ConnectError::Postgres(e))) => Err(failed(node, "", &e)),
        Ok(Ok(client)) => Ok(client),
    }
}

fn pg_error(node: &str, message: String) -> OpsError {
    OpsError::Postgres {
        node: node.to_string(),
        message,
        sqlstate: None,
    }
}

/// What the server (or the connection) said while `doing` (empty: connecting), with the
/// server's SQLSTATE kept for callers that act on it.
fn failed(node: &str, doing: &str, e: &tokio_postgres::Error) -> OpsError {
    OpsError::Postgres {
        node: node.to_string(),
        message: if doing.is_empty() {
            describe(e)
        } else {
            format!("{doing}: {}", describe(e))
        },
        sqlstate: e.code().map(|c| c.code().to_string()),
    }
}

/// The server's own words (with its SQLSTATE) when it answered, else the connection failure.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => crate::error::chain(e),
    }
}

/// One server as failover sees it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeState {
    pub node: String,
    pub reachable: bool,
    pub error: Option<String>,
    pub in_recovery: bool,
    /// The primary's current WAL position, or the replica's replay position.
    pub lsn: Option<String>,
    /// A replica's received (streamed) position.
    pub receive_lsn: Option<String>,
    /// A replica: when the last replayed transaction committed on the primary.
    pub last_replay_at: Option<String>,
    /// A primary: its streaming replicas, `application_name state lag-bytes`.
    pub replicas: Vec<String>,
}

impl NodeState {
    pub fn role(&self) -> &'static str {
        match (self.reachable, self.in_recovery) {
            (false, _) => "down",
            (true, true) => "replica",
            (true, false) => "primary",
        }
    }
}

pub async fn probe(server: &Server, node: &str, timeout: Duration) -> NodeState {
    let mut state = NodeState {
        node: node.to_string(),
        reachable: false,
        error: None,
        in_recovery: false,
        lsn: None,
        receive_lsn: None,
        last_replay_at: None,
        replicas: Vec::new(),
    };
    let client = match connect(server, node, timeout).await {
        Ok(c) => c,
        Err(e) => {
            state.error = Some(e.to_string());
            return state;
        }
    };
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(),
                    CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text,
                    pg_last_wal_receive_lsn()::text,
                    pg_last_xact_replay_timestamp()::text",
            &[],
        )
        .await;
    match row {
        Ok(row) => {
            state.reachable = true;
            state.in_recovery = row.get(0);
            state.lsn = row.get(1);
            state.receive_lsn = row.get(2);
            state.last_replay_at = row.get(3);
        }
        Err(e) => {
            state.error = Some(describe(&e));
            return state;
        }
    }
    if !state.in_recovery
        && let Ok(rows) = client
            .query(
                "SELECT coalesce(application_name, client_addr::text, '?'), state,
                        coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0)::bigint
                   FROM pg_stat_replication",
                &[],
            )
            .await
    {
        state.replicas = rows
            .iter()
            .map(|r| {
                format!(
                    "{} {} replay lag {} bytes",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i64>(2)
                )
            })
            .collect();
    }
    state
}

/// Close the current WAL segment and wait until the archiver has archived it: what a replica
/// has not replayed is then in the repository. Returns the segment's name.
pub async fn switch_and_archive(
    client: &tokio_postgres::Client,
    node: &str,
    timeout: Duration,
) -> Result<String, OpsError> {
    let row = client
        .query_one("SELECT pg_walfile_name(pg_switch_wal())", &[])
        .await
        .map_err(|e| failed(node, "pg_switch_wal()", &e))?;
    let segment: String = row.get(0);
    let deadline = Instant::now() + timeout;
    loop {
        let row = client
            .query_one(
                "SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, '') FROM pg_stat_archiver",
                &[],
            )
            .await
            .map_err(|e| failed(node, "", &e))?;
        let archived: String = row.get(0);
        // Segment names of one timeline sort in WAL order.
        if archived.len() == 24 && archived[8..] >= segment[8..] {
            return Ok(segment);
        }
        if Instant::now() >= deadline {
            let failed: String = row.get(1);
            return Err(OpsError::Timeout(format!(
                "{segment} was not archived within {} s (last archived {archived:?}, last failed {failed:?}): check archive_command in the server log",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Make new transactions on the old primary read-only (persisted, reloaded), so that an
/// application still connected to it cannot write to both servers after the promotion. A
/// session can still override it: the old primary must be stopped or fenced.
pub async fn fence_writes(client: &tokio_postgres::Client, node: &str) -> Result<(), OpsError> {
    // Two statements, not one batch: ALTER SYSTEM refuses to run in a transaction block.
    for sql in [
        "ALTER SYSTEM SET default_transaction_read_only = on",
        "SELECT pg_reload_conf()",
    ] {
        client
            .batch_execute(sql)
            .await
            .map_err(|e| failed(node, "making it read-only", &e))?;
    }
    Ok(())
}

/// Promote the replica and wait until it accepts a write.
pub async fn promote(server: &Server, node: &str, timeout: Duration) -> Result<Duration, OpsError> {
    let started = Instant::now();
    let client = connect(server, node, Duration::from_secs(10)).await?;
    let wait = i32::try_from(timeout.as_secs()).unwrap_or(i32::MAX);
    let promoted: bool = client
        .query_one("SELECT pg_promote(true, $1)", &[&wait])
        .await
        .map_err(|e| failed(node, "pg_promote()", &e))?
        .get(0);
    if !promoted {
        return Err(OpsError::Timeout(format!(
            "{node} did not finish promoting within {} s: see its server log",
            timeout.as_secs()
        )));
    }
    wait_writable(server, node, started + timeout).await?;
    Ok(started.elapsed())
}

/// Poll until a transaction id can be assigned (only a primary out of recovery can).
pub async fn wait_writable(server: &Server, node: &str, deadline: Instant) -> Result<(), OpsError> {
    loop {
        let attempt = async {
            let client = connect(server, node, Duration::from_secs(5)).await?;
            client
                .query_one("SELECT txid_current()", &[])
                .await
                .map_err(|e| failed(node, "", &e))
        };
        match attempt.await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(OpsError::Timeout(format!(
                    "{node} does not accept writes yet: {e}"
                )));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Where a server in archive recovery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryState {
    /// Replaying (or paused on the way, a pause requested but not reached).
    Replaying,
    /// Replay paused; the last position replayed.
    Paused(String),
    /// Out of recovery.
    Promoted,
}

pub async fn recovery_state(
    client: &tokio_postgres::Client,
    node: &str,
) -> Result<RecoveryState, OpsError> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('server_version_num')::int",
            &[],
        )
        .await
        .map_err(|e| failed(node, "", &e))?;
    let (recovering, version): (bool, i32) = (row.get(0), row.get(1));
    if !recovering {
        return Ok(RecoveryState::Promoted);
    }
    // From 14 on pg_is_wal_replay_paused() only says that a pause was requested; the state
    // function says whether replay has stopped.
    let sql = if version >= 140_000 {
        "SELECT pg_get_wal_replay_pause_state() = 'paused', pg_last_wal_replay_lsn()::text"
    } else {
        "SELECT pg_is_wal_replay_paused(), pg_last_wal_replay_lsn()::text"
    };
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(|e| failed(node, "", &e))?;
    let paused: bool = row.get(0);
    let lsn: Option<String> = row.get(1);
    Ok(match lsn {
        Some(lsn) if paused => RecoveryState::Paused(lsn),
        _ => RecoveryState::Replaying,
    })
}

/// What a write on a newly promoted server showed.
#[derive(Debug, Clone)]
pub struct WriteProbe {
    /// The last position replayed before the promotion.
    pub replay_end: Option<String>,
    /// The position after the write.
    pub current: String,
    /// The timeline the server now writes.
    pub timeline: u32,
}

/// Create schema `schema` with a table, insert a row and commit, read it back, drop the
/// schema: the server takes writes. `schema` must be a plain identifier.
pub async fn probe_write(
    client: &tokio_postgres::Client,
    node: &str,
    schema: &str,
) -> Result<WriteProbe, OpsError> {
    let refused = |what: &str, e: &tokio_postgres::Error| failed(node, what, e);
    client
        .batch_execute(&format!(
            "SET statement_timeout = '60s';
             BEGIN;
             CREATE SCHEMA {schema};
             CREATE TABLE {schema}.probe (id int);
             INSERT INTO {schema}.probe VALUES (1);
             COMMIT;"
        ))
        .await
        .map_err(|e| refused("the write was refused", &e))?;
    let read: i64 = client
        .query_one(&format!("SELECT count(*) FROM {schema}.probe"), &[])
        .await
        .map_err(|e| refused("the write cannot be read back", &e))?
        .get(0);
    if read != 1 {
        return Err(pg_error(
            node,
            format!("read back {read} rows of the 1 it wrote"),
        ));
    }
    client
        .batch_execute(&format!("DROP TABLE {schema}.probe; DROP SCHEMA {schema}"))
        .await
        .map_err(|e| refused("the DROP was refused", &e))?;
    // pg_last_wal_replay_lsn() stays at the last record replayed once recovery has ended.
    let row = client
        .query_one(
            "SELECT pg_last_wal_replay_lsn()::text, pg_current_wal_lsn()::text,
                    substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
            &[],
        )
        .await
        .map_err(|e| refused("reading the WAL position", &e))?;
    let timeline: String = row.get(2);
    Ok(WriteProbe {
        replay_end: row.get(0),
        current: row.get(1),
        timeline: u32::from_str_radix(&timeline, 16).unwrap_or(0),
    })
}

/// A server by its address, with the driver's configuration to reach it.
#[derive(Debug, Clone)]
pub struct Server {
    pub host: String,
    pub port: u16,
    /// Its Debug output shows the password: never log it.
    pub config: tokio_postgres::Config,
    pub tls: pgtls::TlsSettings,
}

impl Server {
    /// `host:port`, as the reports name a server.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The same user, password and database at another address: the replica.
    pub fn at(&self, host: &str, port: u16) -> Server {
        let mut config = tokio_postgres::Config::new();
        config.host(host).port(port);
        if let Some(user) = self.config.get_user() {
            config.user(user);
        }
        if let Some(password) = self.config.get_password() {
            config.password(password);
        }
        if let Some(dbname) = self.config.get_dbname() {
            config.dbname(dbname);
        }
        if let Some(name) = self.config.get_application_name() {
            config.application_name(name);
        }
        if let Some(timeout) = self.config.get_connect_timeout() {
            config.connect_timeout(*timeout);
        }
        Server {
            host: host.to_string(),
            port,
            config,
            tls: self.tls.clone(),
        }
    }

    /// A server that reaches no network: its Unix socket in `socket_dir` only, as `user`.
    pub fn unix_socket(
        socket_dir: &std::path::Path,
        port: u16,
        user: &str,
        dbname: &str,
    ) -> Server {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(socket_dir)
            .port(port)
            .user(user)
            .dbname(dbname)
            .application_name("lifeline");
        Server {
            host: socket_dir.display().to_string(),
            port,
            config,
            tls: pgtls::TlsSettings {
                mode: pgtls::SslMode::Disable,
                root_cert: None,
            },
        }
    }
}
