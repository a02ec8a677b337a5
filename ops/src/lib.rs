//! Operations: what the on-call engineer drives on the day of an incident. Failover steps
//! against PostgreSQL, restart commands and health URLs, the connection file, post-recovery
//! checks, the incident runbook and notifications.
//!
//! [`failover`](mod@failover) orchestrates the failover flows with the restore and catalog crates (a restore
//! from the repository when there is no replica, or in another region); [`verify`] checks the
//! platform after a recovery; [`status_file`] keeps BACKUP_DIR's status files. The repository
//! and the catalog are reached through [`Repository`], which the binary implements.

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
