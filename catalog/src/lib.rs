//! The SQLite catalog: an index of the repository (clusters, WAL files, backups) that answers
//! "which backup, which WAL" quickly. The repository stays the source of truth:
//! [`rebuild`] recreates the catalog from it alone. [`plan_retention`] is the retention policy
//! as a pure function over the catalog's backups; [`prune`] applies it to the repository.
//!
//! Many `wal push` processes write at once: the database runs in WAL journal mode with a busy
//! timeout, and every writer takes the write lock up front (`BEGIN IMMEDIATE`) so that two
//! writers never deadlock upgrading read locks.

mod db;
mod error;
mod labels;
pub mod listing;
pub mod prune;
mod rebuild;
mod retention;

pub use db::{BackupRecord, Catalog, WalRecord};
pub use error::CatalogError;
pub use labels::RetentionClass;
pub use rebuild::{RebuildSummary, label_backup, rebuild};
pub use retention::{Decision, Reason, RetentionPlan, RetentionPolicy, WalRange, plan_retention};
pub use storage::Restorability;
