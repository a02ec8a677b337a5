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

pub mod binaries;
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
pub mod notify;
pub mod oplog;
pub mod passphrase;
pub mod pg;
pub mod process;
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
pub use steps::{Line, Steps};
pub use verify_recovery::{Depth, VerifyOptions, recorded_rows, verify};
