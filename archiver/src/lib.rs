//! Everything that writes backups into the repository.
//!
//! - [`push_wal`]: `archive_command`, one WAL, history or backup-history file per call;
//!   [`push_ahead`] stores the segments PostgreSQL has marked ready after it, detached.
//! - [`preview_base_backup`]: what a base backup would copy, for `SIMULATE_MODE`; changes nothing.
//! - [`run_base_backup`]: a physical backup of a running cluster, chunked and deduplicated.
//! - [`open_rdb`]: a consistent RDB snapshot of a running Redis over the replication protocol;
//!   [`run_rdb_backup`] stores one, chunked and deduplicated like everything else.

mod aof;
mod base_backup;
mod block_spool;
mod chunk_index;
mod chunk_store;
mod cluster;
mod connection;
mod dump;
mod error;
mod preview;
mod publish;
mod push_ahead;
mod redis;
mod standby;
mod stream_backup;
mod wal_push;
mod walk;

pub use base_backup::{BaseBackupOptions, run_base_backup};
pub use connection::ConnectionOptions;
pub use dump::{DumpOptions, pg_command, run_dump_backup};
pub use error::ArchiveError;
pub use preview::{BackupPreview, preview_base_backup, preview_dump, preview_redis};
pub use push_ahead::{AheadLock, AheadReport, push_ahead};
pub use redis::{
    RdbReader, RedisFacts, RedisOptions, keyspace, open_rdb, parse_keyspace, redis_data_dir,
};
pub use standby::{StandbyMode, StandbyOptions};
pub use stream_backup::{RdbBackupOptions, run_aof_backup, run_rdb_backup};
pub use wal_push::{PushOutcome, push_wal};
