//! Repository contents built by hand, for tests that need a backup without taking one.

use storage::manifest::{BackupManifest, ChunkRef, EntryKind, FileEntry};
use storage::pack::PackBuilder;
use storage::{Compression, Durability, PutMode, Storage, layout, object};

/// Store `chunks` (plaintext) as one pack in `storage`, durably, and return their references,
/// in order, as a manifest would name them.
pub async fn store_pack<C: AsRef<[u8]>>(storage: &dyn Storage, chunks: &[C]) -> Vec<ChunkRef> {
    let mut builder = PackBuilder::new();
    let mut pending = Vec::new();
    for data in chunks {
        let data = data.as_ref();
        let hash = storage.chunk_ids().of(data).into();
        let (_, framed) = object::encode(data, Compression::default()).expect("encode a chunk");
        let offset = builder.add(hash, &framed);
        pending.push((hash, data.len() as u64, offset, framed.len() as u64));
    }
    let pack = builder.seal(&storage.chunk_ids()).expect("seal the pack");
    storage
        .put_bytes(
            &layout::pack_key(&pack.id),
            pack.bytes,
            PutMode::Create,
            Durability::Immediate,
        )
        .await
        .expect("store the pack");
    pending
        .into_iter()
        .map(|(hash, len, offset, stored)| ChunkRef {
            hash,
            len,
            pack: pack.id,
            offset,
            stored,
        })
        .collect()
}

/// A base-backup manifest of cluster 1 with no files: `backup_20250101_000000`, PostgreSQL 15,
/// timeline 1, WAL from 0/2000028 to 0/2000100 (segment 000000010000000000000002), 8 KiB
/// blocks, a `backup_label` naming its start. Tests fill in the files, the bundle and the
/// tablespaces.
pub fn base_manifest() -> BackupManifest {
    let at = "2025-01-01T00:00:00Z".parse().expect("a timestamp");
    BackupManifest {
        format: 1,
        backup_id: "backup_20250101_000000".into(),
        service: storage::Service::Postgresql,
        kind: storage::BackupKind::Base,
        system_identifier: 1,
        server_version: "15".into(),
        major_version: 15,
        catalog_version: 202_209_061,
        source: storage::BackupSource::Primary,
        database: "postgres".into(),
        timeline: storage::wal::TimelineId(1),
        start_lsn: "0/2000028".parse().expect("an LSN"),
        stop_lsn: "0/2000100".parse().expect("an LSN"),
        start_wal: "000000010000000000000002".into(),
        stop_wal: "000000010000000000000002".into(),
        segment_size: 16 << 20,
        started_at: at,
        finished_at: at,
        block_size: 8192,
        files: Vec::new(),
        bundle: Vec::new(),
        backup_label: "START WAL LOCATION: 0/2000028\n".into(),
        tablespace_map: None,
        tablespaces: Vec::new(),
        row_counts: Default::default(),
        row_estimates: Default::default(),
        size_bytes: 0,
        new_bytes: 0,
    }
}

/// An entry of a base-backup manifest, empty: no size, no data, no link target.
pub fn file_entry(path: &str, kind: EntryKind, mode: u32) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind,
        mode,
        size: 0,
        mtime: 0,
        link_target: None,
        blocks: Vec::new(),
        bundle_offset: None,
    }
}

/// `path` itself (not what a link points to) belongs to `uid:gid`; the failure names it.
pub fn assert_owned_by(path: &std::path::Path, uid: u32, gid: u32) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path).expect("stat the restored path");
    assert_eq!(
        (meta.uid(), meta.gid()),
        (uid, gid),
        "{} belongs to {}:{}",
        path.display(),
        meta.uid(),
        meta.gid()
    );
}
