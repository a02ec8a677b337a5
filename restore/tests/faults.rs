//! A base restore from a repository that misbehaves (an in-memory repository behind a
//! `Faulty` wrapper): whichever read fails, transiently or for good, the restore fails and
//! leaves nothing in the target; a pack that reads short is reported as corrupt.

use std::path::Path;
use std::sync::Arc;

use restore::{ArchiveMode, RecoveryTarget, RestoreError, RestoreOptions, TablespaceMapping};
use storage::manifest::{BackupManifest, ChunkRef, EntryKind, FileEntry};
use storage::{StorageError, layout};
use testing::{Fault, Faulty, MemoryStorage, Op};

/// Puts `chunks` into one pack in `store` and returns their references.
async fn pack(store: &MemoryStorage, chunks: &[Vec<u8>]) -> Vec<ChunkRef> {
    testing::store_pack(store, chunks).await
}

fn entry(path: &str, kind: EntryKind, size: u64) -> FileEntry {
    FileEntry {
        path: path.into(),
        kind,
        mode: if kind == EntryKind::Dir { 0o700 } else { 0o600 },
        size,
        mtime: 0,
        link_target: None,
        blocks: Vec::new(),
        bundle_offset: None,
    }
}

fn relation(i: usize) -> Vec<u8> {
    (0..16384).map(|b| ((b * 7 + i * 13) % 251) as u8).collect()
}

/// A small backup in three packs: small files in the bundle, `pg_control`, four relation
/// files.
async fn backup(store: &MemoryStorage) -> BackupManifest {
    let small: Vec<Vec<u8>> = (0..40)
        .map(|i| format!("small file {i}\n").repeat(i % 5 + 1).into_bytes())
        .collect();
    let bundle_data = small.concat();
    let bundle = pack(
        store,
        &bundle_data
            .chunks(1024)
            .map(<[u8]>::to_vec)
            .collect::<Vec<_>>(),
    )
    .await;
    let control = pack(store, &[b"pg_control bytes".to_vec()]).await;
    let relations = pack(store, &(0..4).map(relation).collect::<Vec<_>>()).await;

    let mut files = vec![
        entry("base", EntryKind::Dir, 0),
        entry("base/1", EntryKind::Dir, 0),
        entry("global", EntryKind::Dir, 0),
        entry("pg_wal", EntryKind::Dir, 0),
        entry("small", EntryKind::Dir, 0),
    ];
    let mut offset = 0;
    for (i, data) in small.iter().enumerate() {
        let mut f = entry(&format!("small/{i:04}"), EntryKind::File, data.len() as u64);
        f.bundle_offset = Some(offset);
        offset += f.size;
        files.push(f);
    }
    let mut pg_control = entry("global/pg_control", EntryKind::File, 16);
    pg_control.blocks = control;
    files.push(pg_control);
    for (i, chunk) in relations.into_iter().enumerate() {
        let mut f = entry(&format!("base/1/{}", 1000 + i), EntryKind::File, 16384);
        f.blocks = vec![chunk];
        files.push(f);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let json = serde_json::json!({
        "format": 1, "backup_id": "backup_20250101_000000", "service": "postgresql",
        "kind": "base", "system_identifier": 1, "server_version": "15", "database": "postgres",
        "timeline": 1, "start_lsn": "0/2000028", "stop_lsn": "0/2000100",
        "start_wal": "000000010000000000000002", "stop_wal": "000000010000000000000002",
        "segment_size": 16777216, "started_at": "2025-01-01T00:00:00Z",
        "finished_at": "2025-01-01T00:00:00Z", "block_size": 16384, "files": [], "bundle": [],
        "backup_label": "START WAL LOCATION: 0/2000028\n", "row_counts": {}, "size_bytes": 0,
        "new_bytes": 0
    });
    let mut manifest: BackupManifest = serde_json::from_value(json).expect("manifest");
    manifest.files = files;
    manifest.bundle = bundle;
    manifest
}

fn options(data_dir: &Path) -> RestoreOptions {
    RestoreOptions {
        data_dir: data_dir.to_path_buf(),
        parallelism: 2,
        downloads: 2,
        verify_first: false,
        target: RecoveryTarget::Immediate,
        restore_command: "lifeline wal fetch %f %p".into(),
        tablespaces: TablespaceMapping::default(),
        waldir: None,
        archive_mode: ArchiveMode::Off,
        timeline: restore::TargetTimeline::Latest,
        interrupted: Arc::default(),
    }
}

/// The reads a successful restore of `manifest` makes.
async fn gets_of_a_clean_restore(memory: &MemoryStorage, manifest: &BackupManifest) -> u64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let store = Arc::new(Faulty::builder(memory.clone()).build());
    restore::restore_base(store.clone(), manifest, &options(&data))
        .await
        .expect("a restore without faults succeeds");
    assert_eq!(
        std::fs::read(data.join("base/1/1002")).expect("relation"),
        relation(2)
    );
    store.calls(Op::Get)
}

#[tokio::test]
async fn whichever_read_fails_the_restore_fails_and_leaves_nothing() {
    let memory = MemoryStorage::new();
    let manifest = backup(&memory).await;
    let gets = gets_of_a_clean_restore(&memory, &manifest).await;
    assert!(gets >= 3, "one read per pack at least, got {gets}");
    for n in 1..=gets {
        for fault in [Fault::Transient, Fault::Rejected] {
            let dir = tempfile::tempdir().expect("tempdir");
            let data = dir.path().join("data");
            let store = Arc::new(
                Faulty::builder(memory.clone())
                    .fail_nth_get(n, fault.clone())
                    .build(),
            );
            let err = restore::restore_base(store.clone(), &manifest, &options(&data))
                .await
                .expect_err("a failed read fails the restore");
            assert_eq!(store.injected(), 1, "read {n} was made");
            assert!(
                matches!(
                    (&err, &fault),
                    (
                        RestoreError::Storage(StorageError::Transient { .. }),
                        Fault::Transient
                    ) | (
                        RestoreError::Storage(StorageError::Rejected { .. }),
                        Fault::Rejected
                    )
                ),
                "read {n}, {fault:?}: the error that reached the caller is {err:?}"
            );
            assert!(
                !data.exists(),
                "read {n} failed ({fault:?}) and the target was left behind"
            );
        }
    }
}

#[tokio::test]
async fn a_pack_that_reads_short_is_reported_corrupt_and_nothing_is_left() {
    let memory = MemoryStorage::new();
    let manifest = backup(&memory).await;
    let relations = &manifest
        .files
        .iter()
        .find(|f| f.path == "base/1/1000")
        .expect("relation")
        .blocks[0]
        .pack;
    let key = layout::pack_key(relations);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let store = Arc::new(
        Faulty::builder(memory.clone())
            .truncate_gets_under(&key, 100)
            .build(),
    );
    let err = restore::restore_base(store, &manifest, &options(&data))
        .await
        .expect_err("a short pack fails the restore");
    match &err {
        RestoreError::Storage(StorageError::Corrupt { key: bad, reason }) => {
            assert_eq!(bad, &key);
            assert!(reason.contains("shorter"), "{reason}");
        }
        other => panic!("a short pack must be reported corrupt, got {other:?}"),
    }
    assert!(!data.exists(), "the target was left behind");
}
