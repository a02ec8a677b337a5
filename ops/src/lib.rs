//! Operations: what the on-call engineer drives on the day of an incident. Failover steps
//! against PostgreSQL, restart commands and health URLs, the connection file, post-recovery
//! checks, the incident runbook and notifications.
//!
//! [`drill`] orchestrates a restore rehearsal with the restore and catalog crates: it reads the
//! repository and writes only the drill's verdict into it (the backup's `.metadata`).

pub mod checks;
mod config;
pub mod config_file;
pub mod connfile;
pub mod drill;
mod error;
mod http;
pub mod identity;
pub mod notify;
pub mod oplog;
pub mod pg;
pub mod process;
pub mod runbook;
pub mod status;

pub use checks::{Check, RecordedRows, Report, VerifyConfig};
pub use config::{FailoverConfig, ServiceConfig};
pub use config_file::ConfigFile;
pub use error::{DrillError, OpsError};
pub use notify::{Event, Notifier, NotifyConfig};
pub use runbook::Runbook;
