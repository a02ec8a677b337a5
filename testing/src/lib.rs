//! Test doubles for lifeline's storage layer; a dev-dependency only, never linked into the
//! binary.
//!
//! - [`MemoryStorage`]: a repository in memory that keeps the [`storage::Storage`] contract
//!   (it passes `storage::conformance::check_backend`), with [`MemoryStorage::crash`] to lose
//!   what a crash would lose.
//! - [`Faulty`]: a wrapper around any backend that fails, truncates, delays or throttles
//!   chosen calls, so that tests can show what the archiver and restore do when the repository
//!   misbehaves, without a production type knowing about tests.
//! - [`store_pack`]: chunks stored as one pack, for backups built by hand;
//!   [`fixtures::base_manifest`] and [`fixtures::file_entry`], the manifest that names them.
//! - [`SlowDownProxy`]: a TCP proxy that answers the first requests with S3's `503 SlowDown`
//!   and passes the rest to a real server, for tests of the S3 backend's retry layer.

mod faulty;
pub mod fixtures;
mod memory;
mod slowdown;

pub use faulty::{Fault, Faulty, FaultyBuilder, Op};
pub use fixtures::store_pack;
pub use memory::MemoryStorage;
pub use slowdown::SlowDownProxy;
