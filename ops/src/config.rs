//! The operations sections of the configuration file: `[failover]` and `[services.NAME]`
//! (`[notify]` and `[verify]` live beside their code).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::OpsError;
use crate::config_file::duration_key;

/// What a promotion or a service's health may take when the configuration does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

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
    /// How long a promotion may take ("60s" by default).
    pub promote_timeout: Option<String>,
    /// The former spelling of `promote-timeout`, in seconds.
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
    /// What the settings made of `BACKUP_DIR/.promoted_primary` (not a key of the file).
    #[serde(skip)]
    pub promoted: Option<crate::promoted::Resolution>,
}

/// `[services.NAME]`: an application service `service_failure NAME` restarts.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServiceConfig {
    pub restart_command: String,
    pub health_url: String,
    /// How long to wait for health after the restart ("60s" by default).
    pub timeout: Option<String>,
    /// The former spelling of `timeout`, in seconds.
    pub timeout_seconds: Option<u64>,
}

impl FailoverConfig {
    /// `promote-timeout`, or the former `promote-timeout-seconds`, or 60 s.
    pub fn promote_timeout(&self) -> Result<Duration, OpsError> {
        let new = ("promote-timeout", self.promote_timeout.as_deref());
        let old = ("promote-timeout-seconds", self.promote_timeout_seconds, 1);
        Ok(duration_key(new, old)?.unwrap_or(DEFAULT_TIMEOUT))
    }
}

impl ServiceConfig {
    /// `timeout`, or the former `timeout-seconds`, or 60 s; `name` names the section in errors.
    pub fn timeout(&self, name: &str) -> Result<Duration, OpsError> {
        let (new_key, old_key) = (
            format!("services.{name}.timeout"),
            format!("services.{name}.timeout-seconds"),
        );
        let new = (new_key.as_str(), self.timeout.as_deref());
        let old = (old_key.as_str(), self.timeout_seconds, 1);
        Ok(duration_key(new, old)?.unwrap_or(DEFAULT_TIMEOUT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_durations_and_the_old_keys_still_count() {
        let failover = |text: &str| crate::ConfigFile::parse(text).expect("parses").failover;
        let default = failover("");
        assert_eq!(default.promote_timeout().expect("default"), DEFAULT_TIMEOUT);
        let new = failover("[failover]\npromote-timeout = \"2m\"\n");
        assert_eq!(
            new.promote_timeout().expect("new"),
            Duration::from_secs(120)
        );
        let old = failover("[failover]\npromote-timeout-seconds = 90\n");
        assert_eq!(old.promote_timeout().expect("old"), Duration::from_secs(90));
        let both = failover("[failover]\npromote-timeout = \"1m\"\npromote-timeout-seconds = 9\n");
        assert!(
            both.promote_timeout()
                .is_err_and(|e| e.to_string().contains("keep only"))
        );
        let services = crate::ConfigFile::parse(
            "[services.api]\nrestart-command = \"true\"\nhealth-url = \"http://x\"\ntimeout = \"soon\"\n",
        )
        .expect("parses")
        .services;
        let err = services["api"].timeout("api").expect_err("not a duration");
        assert!(
            err.to_string().starts_with("services.api.timeout = "),
            "{err}"
        );
    }
}
