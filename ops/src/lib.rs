//! Operations: what the on-call engineer drives on the day of an incident. Failover steps
//! against PostgreSQL, restart commands and health URLs, the connection file, post-recovery
//! checks, the incident runbook and notifications. The binary composes these with the
//! restore crate; nothing here reads or writes the repository.

pub mod checks;
mod config;
pub mod config_file;
pub mod connfile;
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
pub use error::OpsError;
pub use notify::{Event, Notifier, NotifyConfig};
pub use runbook::Runbook;
