//! The repository: where every backup, chunk and WAL file lives, and the format it is stored in.
//!
//! - [`Storage`]: the backend contract, with [`LocalStorage`] and [`S3Storage`]; [`retry`] is the
//!   one retry layer of remote backends.
//! - [`object`]: the self-describing framed object format (codec, length, blake3) that every
//!   stored object uses; anything read back is verified against it.
//! - [`wal`]: WAL file names, timelines and LSNs as validated types.
//! - [`chunking`]: page-aligned blocks for relation files, content-defined chunks for streams.
//! - [`pack`]: many chunks per stored object; [`ChunkHash`] and [`PackId`] ([`digest`]): the
//!   32-byte names of chunks and packs.
//! - [`manifest`]: what a backup is made of; [`layout`]: which key each object lives under.
//! - [`atomic`]: a local file replaced whole (temporary name, fsync, rename, directory fsync).
//! - [`crypto`]: key slots and keys of an encrypted repository; [`sealed`]: the sealed object
//!   format and [`SealedStorage`], which seals everything such a repository stores.
//! - [`private`]: 0600 files and 0700 directories with one owner, for everything lifeline
//!   writes on local disk.
//! - [`progress`]: how far a backup or restore is, counted by the libraries, shown by the CLI.
//! - [`tuning`]: which zstd setting each file's chunks are compressed with, learnt by sampling.
//! - [`stages`]: where a backup's or restore's time goes, per pipeline stage, for a debug log.

pub mod atomic;
pub mod chunking;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod crypto;
pub mod digest;
mod error;
mod kinds;
pub mod layout;
pub mod lease;
pub mod leftovers;
mod local;
pub mod manifest;
mod manifest_writer;
pub mod object;
pub mod pack;
pub mod pg_version;
pub mod private;
pub mod progress;
pub mod repack;
pub mod retry;
mod s3;
pub mod sealed;
pub mod stages;
mod storage;
pub mod tuning;
pub mod wal;

pub use digest::{ChunkHash, PackId};
pub use error::{StorageError, error_chain};
pub use kinds::{BackupKind, BackupSource, Restorability, Service};
pub use local::LocalStorage;
pub use object::{Codec, Compression, ObjectHeader};
pub use s3::{MIN_PART_SIZE, S3Options, S3Storage, ServerSideEncryption, StaticCredentials};
pub use sealed::{ChunkIds, SealedStorage};
pub use storage::{
    Durability, ObjectMeta, ObjectReader, PutMode, Storage, StorageExt, validate_key,
};
