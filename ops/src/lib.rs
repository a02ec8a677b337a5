//! Operations: what the on-call engineer drives on the day of an incident. The failover flows
//! (PostgreSQL roles and promotion, restart commands and health URLs, the connection file, a
//! restore from the repository through the restore crate), post-recovery verification, the
//! status files in BACKUP_DIR, the incident runbook and notifications. The repository and the
//! catalog are reached through [`Repository`], which the binary implements.

pub mod checks;
mod config;
pub mod connfile;
mod error;
pub mod failover;
mod http;
pub mod notify;
pub mod pg;
pub mod process;
pub mod redis;
mod repository;
pub mod runbook;
pub mod status_file;
pub mod steps;
pub mod verify_recovery;

pub use checks::{Check, RecordedRows, Report, VerifyConfig};
pub use config::{FailoverConfig, ServiceConfig};
pub use error::OpsError;
pub use failover::{FailoverOptions, FailoverReport, Incident, failover};
pub use notify::{Event, Notifier, NotifyConfig};
pub use redis::Redis;
pub use repository::Repository;
pub use runbook::Runbook;
pub use steps::{Line, Steps};
pub use verify_recovery::{Depth, VerifyOptions, recorded_rows, verify};
