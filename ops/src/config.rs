//! The operations sections of the configuration file: `[failover]` and `[services.NAME]`
//! (`[notify]` and `[verify]` live beside their code).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// `[failover]`: what `lifeline failover` acts on.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct FailoverConfig {
    /// The streaming replica to promote (same user, password and database as the primary).
    pub replica_host: Option<String>,
    pub replica_port: Option<u16>,
    /// The env file the application reads its database URL from.
    pub connection_file: Option<PathBuf>,
    /// The variable in it (default DATABASE_URL).
    pub connection_variable: Option<String>,
    /// How long a promotion may take (default 60 s).
    pub promote_timeout_seconds: Option<u64>,
    /// Starts PostgreSQL on PGDATA after a restore from the repository (no replica, or a
    /// data-center failover).
    pub postgres_start_command: Option<String>,
    /// Redis: restart it, stop it (before its files are restored), and its data directory.
    pub redis_restart_command: Option<String>,
    pub redis_stop_command: Option<String>,
    pub redis_data_dir: Option<PathBuf>,
    /// Where a restore from the repository puts each tablespace (by name or oid), as
    /// `restore postgres --tablespace-map`; the others go to `tablespace-map-all/<name>`, or
    /// back to their original location when that is missing or empty.
    pub tablespace_map: BTreeMap<String, PathBuf>,
    pub tablespace_map_all: Option<PathBuf>,
    /// `pg_wal` outside the data directory (`restore postgres --waldir`).
    pub waldir: Option<PathBuf>,
}

/// `[services.NAME]`: an application service `service_failure NAME` restarts.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServiceConfig {
    pub restart_command: String,
    pub health_url: String,
    /// How long to wait for health after the restart (default 60 s).
    pub timeout_seconds: Option<u64>,
}
