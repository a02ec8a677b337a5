//! Everything that reads backups back.
//!
//! - [`fetch_wal`]: `restore_command`, one WAL file per call, verified before it is written;
//!   [`Spool`] reads the following segments ahead for it.
//! - [`select_backup`], [`plan_pitr`]: which backup to restore, and whether the archive can
//!   carry it to the target; every check runs before anything is written.
//! - [`plan_restore`], [`restore_backup`]: a PostgreSQL restore as the operator asks for it,
//!   planned, then restored under a lease; [`preview_restore`] runs the same checks and writes
//!   nothing (`SIMULATE_MODE`).
//! - [`restore_base`]: put a base backup into a data directory, ready to recover when started;
//!   with `delta`, onto a stopped data directory of the same cluster, rewriting what differs.
//! - [`restore_redis`]: put a Redis backup's files where a redis-server started there loads them;
//!   [`restore_redis_backup`] and [`restore_redis_from_file`] as the operator asks for it.
//! - [`restore_dump`]: recreate a database from a logical dump with pg_restore.
//! - [`verify_repository`]: check that every backup's chunks and WAL are there and intact.

mod block_lists;
mod delta;
mod error;
mod file_writes;
mod kinds;
mod mounts;
mod opening;
mod pitr;
mod places;
mod postgres;
mod prefetch;
mod redis_flow;
mod restore_base;
mod restore_dump;
mod restore_redis;
mod select;
#[cfg(test)]
mod test_support;
mod validate;
mod verify;
mod wal_fetch;
mod wal_file;

pub use block_lists::{Outline, read_outline};
pub use delta::DeltaReport;
pub use error::RestoreError;
pub use kinds::{RestoreType, Target};
pub use pitr::{
    BackupWal, PitrPlan, TargetTimeline, WalChains, WalGap, archived_wal, check_wal_chains,
    confirm_target_reachable, plan_end_of_archive, plan_pitr, timeline_histories, wal_records,
};
pub use postgres::{
    PostgresRestoreOptions, RestoreChoices, RestorePlan, RestorePreview, RestoreRequest,
    RestoredBackup, cluster_backups, parse_until, plan_restore, preview_restore, restore_backup,
};
pub use prefetch::{PrefetchReport, Spool};
pub use redis_flow::{
    KeyCounter, KeyCounts, LoadCheck, RedisRestored, RedisSource, choose_redis_backup, counts_line,
    preview_redis_restore, refuse_if_redis_serves, restore_redis_backup, restore_redis_from_file,
};
pub use restore_base::quote as quote_setting;
pub use restore_base::{
    ArchiveMode, PLAN_WINDOW, RecoveryTarget, RestoreOptions, RestoreReport, TablespaceMapping,
    read_manifest, restore_base,
};
pub use restore_dump::{
    DumpRestoreOptions, DumpRestored, DumpSource, PgCommand, choose_dump, dump_target,
    open_dump_file, preview_dump_restore, restore_dump, write_chunks,
};
pub use restore_redis::{
    RedisRestoreOptions, RedisRestoreReport, redis_running_in, restore_redis, restore_redis_file,
};
pub use select::{BackupSelector, select_backup};
pub use validate::{validate_base, validate_stream};
pub use verify::{VerifyReport, verify_repository};
pub use wal_fetch::{FetchError, FetchOutcome, FetchRequest, fetch_wal};
