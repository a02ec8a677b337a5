//! Operations: what the on-call engineer drives on the day of an incident. Failover steps
//! against PostgreSQL, restart commands and health URLs, the connection file, post-recovery
//! checks, the incident runbook and notifications.
//!
//! [`drill`] orchestrates a restore rehearsal with the restore and catalog crates: it reads the
//! repository and writes only the drill's verdict into it (the backup's `.metadata`).
//! [`failover`](mod@failover) orchestrates the failover flows with the restore and catalog crates (a restore
//! from the repository when there is no replica, or in another region); [`verify`] checks the
//! platform after a recovery; [`status_file`] keeps BACKUP_DIR's status files. The repository
//! and the catalog are reached through [`Repository`], which the binary implements.

pub mod alerts;
pub mod binaries;
pub mod check;
pub mod checks;
mod config;
pub mod config_file;
pub mod connfile;
pub mod drill;
pub mod encryption;
mod error;
pub mod failover;
mod http;
pub mod identity;
pub mod metrics;
pub mod notify;
pub mod oplog;
pub mod passphrase;
pub mod pg;
pub mod pgpass;
pub mod process;
pub mod progress;
pub mod promoted;
pub mod redis;
mod repository;
pub mod runbook;
pub mod settings;
pub mod status;
pub mod status_file;
pub mod steps;
pub mod verify_recovery;

pub use checks::{Check, RecordedRows, Report, VerifyConfig};
pub use config::{FailoverConfig, ServiceConfig};
pub use config_file::ConfigFile;
pub use error::{DrillError, OpsError};
pub use failover::{FailoverOptions, FailoverReport, Incident, failover};
pub use notify::{Event, Notifier, NotifyConfig};
pub use redis::Redis;
pub use repository::Repository;
pub use runbook::Runbook;
pub use settings::Settings;
pub use steps::{Line, Missing, Steps};
pub use verify_recovery::{Depth, VerifyOptions, recorded_rows, verify};

/// The version of every `--json` output's format (`"schema"`), raised when a field changes
/// meaning or goes away (new fields do not raise it).
pub const JSON_SCHEMA: u32 = 1;

/// `value` as a command's `--json` output: pretty, with `"schema"` in the object (in each
/// object, for a list, so that `jq '.[0]'` keeps working).
pub fn json_output(value: &impl serde::Serialize) -> Result<String, OpsError> {
    fn versioned(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(fields) => {
                let mut out = serde_json::Map::new();
                out.insert("schema".into(), JSON_SCHEMA.into());
                out.extend(fields.into_iter().filter(|(k, _)| k != "schema"));
                serde_json::Value::Object(out)
            }
            serde_json::Value::Array(items) => items.into_iter().map(versioned).collect(),
            other => other,
        }
    }
    let value = serde_json::to_value(value).map_err(|e| OpsError::Setting(e.to_string()))?;
    serde_json::to_string_pretty(&versioned(value)).map_err(|e| OpsError::Setting(e.to_string()))
}
