//! A backup manifest: everything needed to put a backup back, and to know it is whole.
//!
//! Stored as JSON inside a framed object at `backups/<id>/manifest`. Relation files list their
//! blocks; small files are concatenated (in manifest order) into one "bundle" stream that is
//! cut by content, and each small file names its offset in that stream. Every chunk names the
//! pack that holds it and where.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::digest::{ChunkHash, PackId};
use crate::wal::{Lsn, TimelineId};
use crate::{BackupKind, Restorability, Service};

pub use crate::manifest_writer::{BlockSource, put_manifest_with_lists};

pub const MANIFEST_FORMAT: u32 = 1;
/// Tables with more rows than this (by the planner's estimate) are not counted exactly.
pub const EXACT_COUNT_LIMIT: i64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// blake3 of the plaintext.
    pub hash: ChunkHash,
    /// Plaintext length.
    pub len: u64,
    /// Where the framed chunk is stored: pack id, offset and length in the pack.
    pub pack: PackId,
    pub offset: u64,
    pub stored: u64,
}

impl ChunkRef {
    /// Bytes of [`ChunkRef::to_record`]: hash, length, pack, offset, stored length.
    pub const RECORD_LEN: usize = 32 + 8 + 32 + 8 + 8;

    /// The reference as a fixed-size record, for block lists kept in files rather than memory.
    pub fn to_record(&self) -> [u8; Self::RECORD_LEN] {
        let mut record = [0u8; Self::RECORD_LEN];
        record[..32].copy_from_slice(self.hash.as_bytes());
        record[32..40].copy_from_slice(&self.len.to_le_bytes());
        record[40..72].copy_from_slice(self.pack.as_bytes());
        record[72..80].copy_from_slice(&self.offset.to_le_bytes());
        record[80..88].copy_from_slice(&self.stored.to_le_bytes());
        record
    }

    pub fn from_record(record: &[u8; Self::RECORD_LEN]) -> ChunkRef {
        // Fixed places in a fixed-size array: no slice here can fall short.
        let bytes32 = |at: usize| {
            let mut b = [0u8; 32];
            b.copy_from_slice(&record[at..at + 32]);
            b
        };
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&record[at..at + 8]);
            u64::from_le_bytes(b)
        };
        ChunkRef {
            hash: ChunkHash::from_bytes(bytes32(0)),
            len: u64_at(32),
            pack: PackId::from_bytes(bytes32(40)),
            offset: u64_at(72),
            stored: u64_at(80),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the data directory, '/'-separated.
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    /// Bytes as copied (a relation may grow or shrink while it is copied; WAL replay fixes it).
    pub size: u64,
    pub mtime: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_target: Option<String>,
    /// Blocks of a relation file, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blocks: Vec<ChunkRef>,
    /// Offset of a small file in the bundle stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_offset: Option<u64>,
}

/// A tablespace whose contents the backup holds: its files are recorded under
/// `pg_tblspc/<oid>/` (the version directory, `PG_<major>_<catversion>`, and below), and the
/// restore puts them into a location it chooses and links `pg_tblspc/<oid>` there itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    pub oid: u32,
    pub name: String,
    /// Where the tablespace lived on the backed-up server (for the operator and as the default
    /// destination when that place is missing or empty).
    pub location: String,
}

/// Written as JSON by `crate::manifest_writer`, the one layout of its fields.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BackupManifest {
    pub format: u32,
    pub backup_id: String,
    pub service: Service,
    pub kind: BackupKind,
    pub system_identifier: u64,
    pub server_version: String,
    /// The server's major (`server_version_num / 10000`); 0 in manifests from before it was
    /// recorded: [`BackupManifest::major`] then reads `server_version`.
    #[serde(default)]
    pub major_version: u32,
    /// `catalog_version_no` of the server's `pg_control`; 0 when not recorded.
    #[serde(default)]
    pub catalog_version: u64,
    /// Where the data files were read.
    #[serde(default)]
    pub source: crate::BackupSource,
    pub database: String,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub start_wal: String,
    pub stop_wal: String,
    pub segment_size: u64,
    pub started_at: jiff::Timestamp,
    pub finished_at: jiff::Timestamp,
    pub block_size: u64,
    pub files: Vec<FileEntry>,
    /// The bundle of small files, chunk by chunk.
    pub bundle: Vec<ChunkRef>,
    /// The `backup_label` from `pg_backup_stop`, written into the data directory on restore.
    pub backup_label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_map: Option<String>,
    /// The tablespaces whose contents are in `files` under `pg_tblspc/<oid>/`. A backup from
    /// before tablespaces were copied records `pg_tblspc/<oid>` as a link only, and no entry here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tablespaces: Vec<Tablespace>,
    /// Rows per table (`schema.table`) in `database` when the backup started, counted exactly
    /// for tables under [`EXACT_COUNT_LIMIT`] rows.
    pub row_counts: BTreeMap<String, i64>,
    /// The planner's row estimate for larger tables, where counting would cost a full scan.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub row_estimates: BTreeMap<String, i64>,
    /// Bytes of data backed up (plaintext).
    pub size_bytes: u64,
    /// Bytes this backup added to the repository (new chunks, compressed).
    pub new_bytes: u64,
}

impl BackupManifest {
    /// The line `backup postgres` ends with; `seconds` it took.
    pub fn summary(&self, seconds: f64) -> String {
        format!(
            "backup {} complete: PostgreSQL {} from the {}, {} files, {} MiB of data, {:.1} MiB new in the repository, WAL {} to {} (timeline {}), {seconds:.1} s",
            self.backup_id,
            self.server_version,
            self.source,
            self.files.len(),
            self.size_bytes >> 20,
            self.new_bytes as f64 / (1u64 << 20) as f64,
            self.start_wal,
            self.stop_wal,
            self.timeline.0,
        )
    }

    /// The PostgreSQL major the backup was taken from, and must be started with.
    pub fn major(&self) -> Option<u32> {
        match self.major_version {
            0 => crate::pg_version::major_of_version(&self.server_version),
            major => Some(major),
        }
    }

    /// Every chunk the backup needs, each once.
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkRef> {
        let mut seen = std::collections::HashSet::new();
        self.files
            .iter()
            .flat_map(|f| f.blocks.iter())
            .chain(self.bundle.iter())
            .filter(move |c| seen.insert(c.hash))
    }

    /// Every reference to a chunk, in order, a chunk used twice (a page of zeros) named twice:
    /// for readers that need no set of every chunk, which at 40 bytes a chunk is the size of
    /// the manifest again.
    pub fn references(&self) -> impl Iterator<Item = &ChunkRef> {
        let blocks = self.files.iter().flat_map(|f| f.blocks.iter());
        blocks.chain(self.bundle.iter())
    }

    /// The packs the backup's chunks lie in.
    pub fn packs(&self) -> BTreeSet<PackId> {
        self.references().map(|c| c.pack).collect()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Self, crate::StorageError> {
        let manifest: BackupManifest = parse_manifest(key, bytes)?;
        check_format(key, manifest.format)?;
        Ok(manifest)
    }

    /// The base-backup manifest of `backup_id`, verified.
    pub async fn load(
        storage: &dyn crate::Storage,
        backup_id: &str,
    ) -> Result<Self, crate::StorageError> {
        let key = crate::layout::manifest_key(backup_id);
        let manifest: BackupManifest = read_manifest(storage, &key).await?;
        check_format(&key, manifest.format)?;
        check_id(&key, backup_id, &manifest.backup_id)?;
        Ok(manifest)
    }
}

/// A base-backup manifest whose files' block lists were handed, file by file, to the caller as
/// it was read, and are not held: a restore keeps per file, not per block, whatever the size of
/// the cluster.
#[derive(Debug)]
pub struct ManifestOutline {
    /// The manifest, every `blocks` empty.
    pub manifest: BackupManifest,
    /// The blake3 of the manifest's JSON: two reads with the same checksum read the same
    /// document.
    pub checksum: blake3::Hash,
}

impl BackupManifest {
    /// The manifest of `backup_id`, verified, each file given to `sink` (with its place in
    /// `files`) as it is read, then kept without its blocks. The sink sees the blocks before
    /// the whole manifest is verified: what it keeps of a read that then fails is to be
    /// discarded. A refusal from it (a reason) ends the read as a damaged manifest.
    pub async fn load_outline<S: BlockSink>(
        storage: &dyn crate::Storage,
        backup_id: &str,
        sink: S,
    ) -> Result<(ManifestOutline, S), crate::StorageError> {
        let key = crate::layout::manifest_key(backup_id);
        let ((manifest, sink), checksum) = read_manifest_with(storage, &key, |key, pieces| {
            crate::object::decode_json_seeded(key, "manifest", pieces, OutlineSeed { sink })
        })
        .await?;
        check_format(&key, manifest.format)?;
        check_id(&key, backup_id, &manifest.backup_id)?;
        Ok((ManifestOutline { manifest, checksum }, sink))
    }
}

/// What [`BackupManifest::load_outline`] hands each file to, on the thread that parses.
pub trait BlockSink: Send + 'static {
    /// File number `index` of the manifest, with its blocks, which the sink may take; what it
    /// leaves of them is dropped. A reason ends the read.
    fn file(&mut self, index: usize, entry: &mut FileEntry) -> Result<(), String>;
}

/// Parses a [`BackupManifest`] with each file handed to `sink` and its blocks dropped: the
/// other fields are kept as their JSON text and then parsed as the manifest (they are per file
/// or per table, never per block).
struct OutlineSeed<S> {
    sink: S,
}

impl<'de, S: BlockSink> serde::de::DeserializeSeed<'de> for OutlineSeed<S> {
    type Value = (BackupManifest, S);

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: BlockSink> serde::de::Visitor<'de> for OutlineSeed<S> {
    type Value = (BackupManifest, S);

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a backup manifest")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        mut self,
        mut map: A,
    ) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        // The other fields as their JSON text, parsed as the manifest once `files` is read:
        // no larger than the text, whatever it holds.
        // A field named twice is refused by that parse, as by [`BackupManifest::load`].
        let mut rest = String::from("{");
        let mut files = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "files" {
                if files.is_some() {
                    return Err(A::Error::duplicate_field("files"));
                }
                let seed = FilesSeed {
                    sink: &mut self.sink,
                };
                files = Some(map.next_value_seed(seed)?);
                continue;
            }
            let value: Box<serde_json::value::RawValue> = map.next_value()?;
            let key = serde_json::to_string(&key).map_err(A::Error::custom)?;
            rest.push_str(&key);
            rest.push(':');
            rest.push_str(value.get());
            rest.push(',');
        }
        let files = files.ok_or_else(|| A::Error::missing_field("files"))?;
        rest.push_str("\"files\":[]}");
        let mut manifest: BackupManifest = serde_json::from_str(&rest).map_err(A::Error::custom)?;
        manifest.files = files;
        Ok((manifest, self.sink))
    }
}

struct FilesSeed<'s, S> {
    sink: &'s mut S,
}

impl<'de, S: BlockSink> serde::de::DeserializeSeed<'de> for FilesSeed<'_, S> {
    type Value = Vec<FileEntry>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, S: BlockSink> serde::de::Visitor<'de> for FilesSeed<'_, S> {
    type Value = Vec<FileEntry>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of files")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut files = Vec::new();
        // A relation file is at most a segment (1 GiB): one file's blocks are few.
        while let Some(mut entry) = seq.next_element::<FileEntry>()? {
            let index = files.len();
            self.sink
                .file(index, &mut entry)
                .map_err(serde::de::Error::custom)?;
            entry.blocks = Vec::new();
            files.push(entry);
        }
        Ok(files)
    }
}

/// What [`put_manifest`] stores: a backup's or a stream backup's manifest, nothing else (JSON
/// bytes given by mistake would be stored as an array of numbers).
pub trait Manifest: Serialize + Sync + private::Sealed {}
impl Manifest for BackupManifest {}
impl Manifest for StreamManifest {}

mod private {
    pub trait Sealed {}
    impl Sealed for super::BackupManifest {}
    impl Sealed for super::StreamManifest {}
}

/// The manifest stored under `key`, parsed on a blocking thread as it is read and decoded
/// (neither its stored bytes nor its text are held whole, and it may be larger than any other
/// object), and verified against its checksum before it is returned.
async fn read_manifest<T: serde::de::DeserializeOwned + Send + 'static>(
    storage: &dyn crate::Storage,
    key: &str,
) -> Result<T, crate::StorageError> {
    read_manifest_with(storage, key, |key, pieces| {
        crate::object::decode_json_from(key, "manifest", pieces)
    })
    .await
}

/// [`read_manifest`], parsed by `parse` from the object's pieces.
async fn read_manifest_with<T: Send + 'static>(
    storage: &dyn crate::Storage,
    key: &str,
    parse: impl FnOnce(&str, Pieces) -> Result<T, crate::StorageError> + Send + 'static,
) -> Result<T, crate::StorageError> {
    use tokio::io::AsyncReadExt;
    const PIECE: u64 = 256 << 10;
    let mut object = storage.get_stream(key).await?;
    let (pieces, received) = tokio::sync::mpsc::channel(4);
    let parsing = {
        let key = key.to_string();
        tokio::task::spawn_blocking(move || parse(&key, Pieces::new(received)))
    };
    // Read ahead of the parser; a failed read is the storage's error, not a damaged manifest.
    let mut failed = None;
    loop {
        let mut piece = Vec::with_capacity(PIECE as usize);
        match (&mut object).take(PIECE).read_to_end(&mut piece).await {
            Ok(0) => break,
            Ok(_) => {
                if pieces.send(piece).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                failed = Some(read_error(key, e));
                break;
            }
        }
    }
    drop(pieces);
    let parsed = parsing
        .await
        .map_err(|e| crate::StorageError::io(key, std::io::Error::other(e)))?;
    match failed {
        Some(e) => Err(e),
        None => parsed,
    }
}

/// What a failed read of `key` was: the repository's own refusal when a layer below (the
/// decryption of an encrypted repository) gave one, else an I/O error.
fn read_error(key: &str, e: std::io::Error) -> crate::StorageError {
    e.downcast::<crate::StorageError>()
        .unwrap_or_else(|e| crate::StorageError::io(key, e))
}

/// A blocking reader over the pieces of an object another task reads: the end of the pieces
/// is the end of the object.
struct Pieces {
    received: tokio::sync::mpsc::Receiver<Vec<u8>>,
    current: Vec<u8>,
    at: usize,
}

impl Pieces {
    fn new(received: tokio::sync::mpsc::Receiver<Vec<u8>>) -> Pieces {
        Pieces {
            received,
            current: Vec::new(),
            at: 0,
        }
    }
}

impl std::io::Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.current.len() {
            match self.received.blocking_recv() {
                Some(piece) => (self.current, self.at) = (piece, 0),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Store a manifest as a framed object under `key` (`Create` for a new backup, `Overwrite` when
/// prune points it at repacked chunks), durably, its JSON compressed as it is written; returns
/// the blake3 of the JSON that `.metadata` records.
pub async fn put_manifest<T: Manifest>(
    storage: &dyn crate::Storage,
    key: &str,
    manifest: &T,
    mode: crate::PutMode,
) -> Result<blake3::Hash, crate::StorageError> {
    let (header, encoded) = crate::object::encode_json(manifest, crate::Compression::default())?;
    let checksum = header.checksum;
    storage
        .put_bytes(key, encoded, mode, crate::Durability::Immediate)
        .await?;
    Ok(checksum)
}

fn parse_manifest<T: serde::de::DeserializeOwned>(
    key: &str,
    bytes: &[u8],
) -> Result<T, crate::StorageError> {
    serde_json::from_slice(bytes).map_err(|e| crate::StorageError::Corrupt {
        key: key.to_string(),
        reason: format!("manifest does not parse: {e}"),
    })
}

/// A backup is known by its key: a manifest copied under another backup's name (to make an
/// old backup pass for a new one, or to hide one) is refused.
fn check_id(key: &str, expected: &str, claimed: &str) -> Result<(), crate::StorageError> {
    if expected == claimed {
        return Ok(());
    }
    Err(crate::StorageError::Corrupt {
        key: key.to_string(),
        reason: format!(
            "the manifest stored as backup {expected} claims to be backup {claimed}: it was copied or forged; skipped"
        ),
    })
}

fn check_format(key: &str, format: u32) -> Result<(), crate::StorageError> {
    if format == MANIFEST_FORMAT {
        return Ok(());
    }
    Err(crate::StorageError::Corrupt {
        key: key.to_string(),
        reason: format!(
            "manifest format {format} is not supported by this lifeline; upgrade lifeline"
        ),
    })
}

/// A backup made of whole streams (a Redis RDB, the files of an AOF, a logical dump), each cut
/// by content into chunks. Stored like [`BackupManifest`], under its own name
/// (`layout::stream_manifest_key`), so readers of base backups never mistake one for the other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamManifest {
    pub format: u32,
    pub backup_id: String,
    pub service: Service,
    pub kind: BackupKind,
    pub server_version: String,
    /// Where it was taken from (host:port), for people.
    pub source: String,
    pub started_at: jiff::Timestamp,
    pub finished_at: jiff::Timestamp,
    pub files: Vec<StreamFile>,
    /// Keys per Redis database (`db0`) or rows per table when the backup started.
    #[serde(default)]
    pub counts: BTreeMap<String, u64>,
    pub size_bytes: u64,
    pub new_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamFile {
    /// File name as it is restored (`dump.rdb`, `appendonly.aof.1.base.rdb`, ...).
    pub name: String,
    pub size: u64,
    pub chunks: Vec<ChunkRef>,
}

impl StreamManifest {
    /// The line `backup redis` ends with; `seconds` it took.
    pub fn summary(&self, seconds: f64) -> String {
        let keys = match self.counts.is_empty() {
            true => "none".to_string(),
            false => self
                .counts
                .iter()
                .map(|(db, n)| format!("{db}={n}"))
                .collect::<Vec<_>>()
                .join(" "),
        };
        format!(
            "backup {} complete: {} of {:.1} MiB, {:.1} MiB new in the repository, keys {keys}, {seconds:.1} s",
            self.backup_id,
            self.kind.as_str().to_uppercase(),
            self.size_bytes as f64 / (1u64 << 20) as f64,
            self.new_bytes as f64 / (1u64 << 20) as f64,
        )
    }

    /// The stream manifest of `backup_id`, verified.
    pub async fn load(
        storage: &dyn crate::Storage,
        backup_id: &str,
    ) -> Result<Self, crate::StorageError> {
        let key = crate::layout::stream_manifest_key(backup_id);
        let manifest: StreamManifest = read_manifest(storage, &key).await?;
        check_format(&key, manifest.format)?;
        check_id(&key, backup_id, &manifest.backup_id)?;
        Ok(manifest)
    }

    /// Every chunk the backup needs, each once.
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkRef> {
        let mut seen = std::collections::HashSet::new();
        self.files
            .iter()
            .flat_map(|f| f.chunks.iter())
            .filter(move |c| seen.insert(c.hash))
    }

    /// Every reference to a chunk, in order, a chunk used twice named twice.
    pub fn references(&self) -> impl Iterator<Item = &ChunkRef> {
        self.files.iter().flat_map(|f| f.chunks.iter())
    }

    /// The packs the backup's chunks lie in.
    pub fn packs(&self) -> BTreeSet<PackId> {
        self.references().map(|c| c.pack).collect()
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Self, crate::StorageError> {
        let manifest: StreamManifest = parse_manifest(key, bytes)?;
        check_format(key, manifest.format)?;
        Ok(manifest)
    }
}

/// A backup's `.metadata`: the seed's plain JSON summary written beside every manifest (for
/// people and older tools), and where labels decided later (retention class, a drill's
/// verdict) are kept so that a catalog rebuild finds them. Written and read only through this
/// type; fields it does not name (a backup kind's own facts, drill details) are kept as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupMetadata {
    pub backup_id: String,
    /// Always `full`: every backup is whole (unchanged chunks are shared, not skipped).
    #[serde(rename = "type", default = "full")]
    pub backup_type: String,
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub kind: String,
    /// When the backup started, `YYYY-MM-DDTHH:MM:SSZ`.
    #[serde(default)]
    pub timestamp: String,
    #[serde(default)]
    pub size_bytes: u64,
    #[serde(default)]
    pub size_readable: String,
    #[serde(default)]
    pub new_bytes: u64,
    #[serde(default)]
    pub duration_seconds: i64,
    /// The manifest's key.
    #[serde(default)]
    pub files: Vec<String>,
    /// `blake3:<hex>` of the manifest's JSON.
    #[serde(default)]
    pub checksum: String,
    #[serde(default)]
    pub verified: bool,
    #[serde(default = "default_retention")]
    pub retention: String,
    #[serde(default = "default_restorability")]
    pub restorability: Restorability,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn full() -> String {
    "full".into()
}

fn default_retention() -> String {
    "7_days".into()
}

fn default_restorability() -> Restorability {
    Restorability::Unverified
}

impl BackupMetadata {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("metadata always serializes")
    }

    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Self, crate::StorageError> {
        serde_json::from_slice(bytes).map_err(|e| crate::StorageError::Corrupt {
            key: key.to_string(),
            reason: format!(".metadata does not parse: {e}"),
        })
    }

    /// The `.metadata` of `backup_id`.
    pub async fn load(
        storage: &dyn crate::Storage,
        backup_id: &str,
    ) -> Result<Self, crate::StorageError> {
        use crate::StorageExt;
        let key = crate::layout::metadata_key(backup_id);
        BackupMetadata::from_json(&key, &storage.get_bytes(&key).await?)
    }

    /// Replace the backup's `.metadata` with this one, durably.
    pub async fn store(&self, storage: &dyn crate::Storage) -> Result<(), crate::StorageError> {
        storage
            .put_bytes(
                &crate::layout::metadata_key(&self.backup_id),
                self.to_json(),
                crate::PutMode::Overwrite,
                crate::Durability::Immediate,
            )
            .await
    }

    /// The label `name` as text, whether a named field or one kept beside them.
    pub fn label(&self, name: &str) -> Option<String> {
        match name {
            "retention" => Some(self.retention.clone()),
            "restorability" => Some(self.restorability.to_string()),
            "checksum" => Some(self.checksum.clone()),
            _ => self
                .extra
                .get(name)
                .and_then(|v| v.as_str())
                .map(str::to_string),
        }
    }

    /// Set the label `name`; true when that changed anything (a `restorability` that is not
    /// one of its three words changes nothing).
    pub fn set_label(&mut self, name: &str, value: &str) -> bool {
        if self.label(name).as_deref() == Some(value) {
            return false;
        }
        match name {
            "retention" => self.retention = value.to_string(),
            "restorability" => match value.parse() {
                Ok(restorability) => self.restorability = restorability,
                Err(_) => return false,
            },
            "checksum" => self.checksum = value.to_string(),
            _ => {
                self.extra
                    .insert(name.to_string(), serde_json::Value::from(value));
            }
        }
        true
    }
}

/// `cluster.json`: the one cluster a repository archives, fixed by the first push or backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    /// Kept as a string: JSON readers lose precision on 64-bit integers.
    pub system_identifier: String,
    pub segment_size: u64,
    pub created_at: jiff::Timestamp,
}

impl ClusterIdentity {
    pub fn system_identifier(&self) -> Option<u64> {
        self.system_identifier.parse().ok()
    }

    /// The repository's cluster, or `None` when nothing has been archived yet.
    pub async fn load(storage: &dyn crate::Storage) -> Result<Option<Self>, crate::StorageError> {
        use crate::StorageExt;
        let key = crate::layout::CLUSTER_KEY;
        match storage.get_bytes(key).await {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| crate::StorageError::Corrupt {
                        key: key.to_string(),
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::Storage;

    fn chunk(n: u8) -> ChunkRef {
        ChunkRef {
            hash: crate::ChunkHash::from_bytes([n; 32]),
            len: 8192,
            pack: crate::PackId::from_bytes([n / 2; 32]),
            offset: u64::from(n) * 100,
            stored: 50,
        }
    }

    pub(crate) fn sample() -> BackupManifest {
        let at: jiff::Timestamp = "2025-01-01T00:00:00Z".parse().expect("a timestamp");
        let file = |path: &str, n: u8| FileEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o600,
            size: u64::from(n) * 8192,
            mtime: -1,
            link_target: None,
            blocks: (0..n).map(chunk).collect(),
            bundle_offset: None,
        };
        BackupManifest {
            format: MANIFEST_FORMAT,
            backup_id: "backup_20250101_000000".into(),
            service: Service::Postgresql,
            kind: BackupKind::Base,
            system_identifier: u64::MAX,
            server_version: "15.4".into(),
            major_version: 15,
            catalog_version: 202_209_061,
            source: crate::BackupSource::Primary,
            database: "postgres".into(),
            timeline: TimelineId(3),
            start_lsn: "0/2000028".parse().expect("an LSN"),
            stop_lsn: "FFFFFFFF/FFFFFFFF".parse().expect("an LSN"),
            start_wal: "000000030000000000000002".into(),
            stop_wal: "000000030000000000000002".into(),
            segment_size: 16 << 20,
            started_at: at,
            finished_at: at,
            block_size: 8192,
            files: vec![file("base/1", 3), file("base/2", 0), file("base/3", 5)],
            bundle: vec![chunk(9)],
            backup_label: "START WAL LOCATION: 0/2000028\n\"'%\\".into(),
            tablespace_map: Some("16385 /mnt/a b".into()),
            tablespaces: Vec::new(),
            row_counts: [("public.t".to_string(), i64::MIN)].into(),
            row_estimates: [("public.u".to_string(), i64::MAX)].into(),
            size_bytes: u64::MAX,
            new_bytes: 0,
        }
    }

    /// Keeps what the outline's read hands it.
    #[derive(Default)]
    struct Kept(Vec<(usize, Vec<ChunkRef>)>);

    impl BlockSink for Kept {
        fn file(&mut self, index: usize, entry: &mut FileEntry) -> Result<(), String> {
            self.0.push((index, std::mem::take(&mut entry.blocks)));
            Ok(())
        }
    }

    /// `json` stored as a manifest, read by `load` and by `load_outline` with its blocks put
    /// back: the two reads must agree, in what they accept and in what they return.
    async fn read_both(
        json: &str,
    ) -> (
        Result<BackupManifest, String>,
        Result<BackupManifest, String>,
    ) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = crate::LocalStorage::open(dir.path()).expect("open");
        let raw = serde_json::value::RawValue::from_string(json.to_string()).expect("JSON");
        let (_, bytes) =
            crate::object::encode_json(&raw, crate::Compression::default()).expect("encode");
        let id = "backup_20250101_000000";
        let key = crate::layout::manifest_key(id);
        store
            .put_bytes(
                &key,
                bytes,
                crate::PutMode::Create,
                crate::Durability::Immediate,
            )
            .await
            .expect("put");
        let whole = BackupManifest::load(&store, id)
            .await
            .map_err(|e| e.to_string());
        let outlined = BackupManifest::load_outline(&store, id, Kept::default())
            .await
            .map(|(outline, kept)| {
                let mut m = outline.manifest;
                assert!(m.files.iter().all(|f| f.blocks.is_empty()));
                assert_eq!(kept.0.len(), m.files.len());
                for (index, blocks) in kept.0 {
                    m.files[index].blocks = blocks;
                }
                m
            })
            .map_err(|e| e.to_string());
        (whole, outlined)
    }

    #[tokio::test]
    async fn an_outline_reads_what_a_whole_read_reads_and_refuses_what_it_refuses() {
        let m = sample();
        let json = String::from_utf8(m.to_json()).expect("UTF-8");
        let (whole, outlined) = read_both(&json).await;
        assert_eq!(whole.as_ref(), Ok(&m));
        assert_eq!(outlined, whole);
        // `files` first, and a field this lifeline does not know: both pass over it.
        let files = serde_json::to_string(&m.files).expect("JSON");
        let moved = json
            .replacen(&format!("\"files\":{files},"), "", 1)
            .replacen(
                '{',
                &format!("{{\"files\":{files},\"later\":{{\"x\":[1,2]}},"),
                1,
            );
        assert_ne!(moved, json);
        let (whole, outlined) = read_both(&moved).await;
        assert_eq!(whole.as_ref(), Ok(&m));
        assert_eq!(outlined, whole);
        // A field named twice, `files` or another: both refuse.
        for twice in [
            json.replacen('{', &format!("{{\"files\":{files},"), 1),
            json.replacen('{', "{\"backup_id\":\"backup_20250101_000000\",", 1),
        ] {
            let (whole, outlined) = read_both(&twice).await;
            assert!(
                whole.is_err() && outlined.is_err(),
                "{whole:?} {outlined:?}"
            );
        }
    }

    #[test]
    fn metadata_keeps_the_seed_fields_labels_and_what_it_does_not_name() {
        let seed =
            br#"{"backup_id": "backup_20251227_010000", "type": "full", "service": "postgresql",
            "timestamp": "2025-12-27T01:00:00Z", "size_bytes": 536870912, "size_readable": "512MB",
            "duration_seconds": 1234, "files": ["backups/backup_20251227_010000/manifest"],
            "checksum": "blake3:ab", "verified": true, "retention": "4_weeks",
            "restorability": "VERIFIED", "restorability_rto_seconds": "8.1", "timeline": 2}"#;
        let mut m = BackupMetadata::from_json("k", seed).expect("the seed's form parses");
        assert_eq!(
            (
                m.retention.as_str(),
                m.size_bytes,
                m.label("restorability_rto_seconds")
            ),
            ("4_weeks", 536_870_912, Some("8.1".to_string()))
        );
        assert!(!m.set_label("retention", "4_weeks"));
        assert!(m.set_label("retention", "12_months"));
        assert!(m.set_label("restorability_reason", "rows differ"));
        let back = BackupMetadata::from_json("k", &m.to_json()).expect("round trip");
        assert_eq!(back, m);
        assert_eq!(back.extra.get("timeline"), Some(&serde_json::json!(2)));
        // A file that lost its labels reads with the defaults; one that is not JSON is refused.
        let bare = BackupMetadata::from_json("k", br#"{"backup_id": "b"}"#).expect("defaults");
        assert_eq!(
            (bare.retention.as_str(), bare.restorability.as_str()),
            ("7_days", "UNVERIFIED")
        );
        assert!(BackupMetadata::from_json("k", b"not json").is_err());
    }

    #[test]
    fn round_trips_and_lists_chunks_once() {
        let chunk = ChunkRef {
            hash: "ab".repeat(32).parse().expect("hex"),
            len: 8192,
            pack: "cd".repeat(32).parse().expect("hex"),
            offset: 0,
            stored: 100,
        };
        let manifest = BackupManifest {
            format: MANIFEST_FORMAT,
            backup_id: "backup_20251227_010000".into(),
            service: crate::Service::Postgresql,
            kind: crate::BackupKind::Base,
            system_identifier: 42,
            server_version: "15.18".into(),
            major_version: 15,
            catalog_version: 202_209_061,
            source: crate::BackupSource::Standby,
            database: "app".into(),
            timeline: TimelineId(1),
            start_lsn: Lsn(0x200_0028),
            stop_lsn: Lsn(0x200_0100),
            start_wal: "000000010000000000000002".into(),
            stop_wal: "000000010000000000000002".into(),
            segment_size: 16 << 20,
            started_at: jiff::Timestamp::UNIX_EPOCH,
            finished_at: jiff::Timestamp::UNIX_EPOCH,
            block_size: 262_144,
            files: vec![FileEntry {
                path: "base/1/1259".into(),
                kind: EntryKind::File,
                mode: 0o600,
                size: 16384,
                mtime: 0,
                link_target: None,
                blocks: vec![chunk, chunk],
                bundle_offset: None,
            }],
            bundle: vec![chunk],
            backup_label: "START WAL LOCATION: 0/2000028".into(),
            tablespace_map: None,
            tablespaces: vec![Tablespace {
                oid: 16385,
                name: "fast space".into(),
                location: "/mnt/fast".into(),
            }],
            row_counts: BTreeMap::from([("public.t".to_string(), 3)]),
            row_estimates: BTreeMap::new(),
            size_bytes: 16384,
            new_bytes: 100,
        };
        let back = BackupManifest::from_json("k", &manifest.to_json()).expect("parse");
        assert_eq!(back, manifest);
        assert_eq!(back.chunks().count(), 1);
        assert_eq!(back.references().count(), 3);
        assert_eq!(back.packs().into_iter().collect::<Vec<_>>(), [chunk.pack]);
        assert_eq!(back.major(), Some(15));
        assert!(BackupManifest::from_json("k", b"{}").is_err());
        // Written as before the chunk entries were compacted: hex names.
        let text = String::from_utf8(manifest.to_json()).expect("utf-8");
        assert!(
            text.contains(&format!(r#""hash":"{}""#, "ab".repeat(32))),
            "{text}"
        );
        assert!(
            text.contains(&format!(r#""pack":"{}""#, "cd".repeat(32))),
            "{text}"
        );
        // A pack or chunk name that is not 64 hex digits never gets past reading: it would
        // name a path.
        for forged in ["../../etc/passwd", "cd", ""] {
            let json = text.replace(&"cd".repeat(32), forged);
            let err = BackupManifest::from_json("k", json.as_bytes()).expect_err(forged);
            assert!(err.to_string().contains("a pack id"), "{err}");
        }
        let json = text.replace(&"ab".repeat(32), &"ab".repeat(31));
        let err = BackupManifest::from_json("k", json.as_bytes()).expect_err("short hash");
        assert!(err.to_string().contains("a chunk hash"), "{err}");
    }

    #[test]
    fn a_manifest_from_before_majors_were_recorded_reads_its_version() {
        let mut json: serde_json::Value = serde_json::from_str(
            r#"{"format":1,"backup_id":"b","service":"postgresql","kind":"base",
                "system_identifier":1,"server_version":"14.9","database":"postgres",
                "timeline":1,"start_lsn":"0/2000028","stop_lsn":"0/2000100",
                "start_wal":"","stop_wal":"","segment_size":16777216,
                "started_at":"2025-01-01T00:00:00Z","finished_at":"2025-01-01T00:00:00Z",
                "block_size":8192,"files":[],"bundle":[],"backup_label":"",
                "row_counts":{},"size_bytes":0,"new_bytes":0}"#,
        )
        .expect("json");
        let old = BackupManifest::from_json("k", json.to_string().as_bytes()).expect("parses");
        assert_eq!(
            (old.major(), old.source),
            (Some(14), crate::BackupSource::Primary)
        );
        json["major_version"] = 16.into();
        let new = BackupManifest::from_json("k", json.to_string().as_bytes()).expect("parses");
        assert_eq!(new.major(), Some(16));
    }
}
