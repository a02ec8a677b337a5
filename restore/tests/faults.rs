//! A base restore from a repository that misbehaves (an in-memory repository behind a
//! `Faulty` wrapper): whichever read fails, transiently or for good, the restore fails and
//! leaves nothing in the target; a pack that reads short is reported as corrupt.

mod common;

use std::sync::Arc;

use common::options;
use restore::RestoreError;
use storage::manifest::{BackupManifest, EntryKind};
use storage::{StorageError, layout};
use testing::fixtures::file_entry;
use testing::{Fault, Faulty, MemoryStorage, Op};

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
    let bundle = testing::store_pack(
        store,
        &bundle_data
            .chunks(1024)
            .map(<[u8]>::to_vec)
            .collect::<Vec<_>>(),
    )
    .await;
    let control = testing::store_pack(store, &[b"pg_control bytes".to_vec()]).await;
    let relations = testing::store_pack(store, &(0..4).map(relation).collect::<Vec<_>>()).await;

    let mut files = vec![
        file_entry("base", EntryKind::Dir, 0o700),
        file_entry("base/1", EntryKind::Dir, 0o700),
        file_entry("global", EntryKind::Dir, 0o700),
        file_entry("pg_wal", EntryKind::Dir, 0o700),
        file_entry("small", EntryKind::Dir, 0o700),
    ];
    let mut offset = 0;
    for (i, data) in small.iter().enumerate() {
        let mut f = file_entry(&format!("small/{i:04}"), EntryKind::File, 0o600);
        f.size = data.len() as u64;
        f.bundle_offset = Some(offset);
        offset += f.size;
        files.push(f);
    }
    let mut pg_control = file_entry("global/pg_control", EntryKind::File, 0o600);
    pg_control.size = 16;
    pg_control.blocks = control;
    files.push(pg_control);
    for (i, chunk) in relations.into_iter().enumerate() {
        let mut f = file_entry(&format!("base/1/{}", 1000 + i), EntryKind::File, 0o600);
        f.size = 16384;
        f.blocks = vec![chunk];
        files.push(f);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut manifest = testing::fixtures::base_manifest();
    manifest.block_size = 16384;
    manifest.files = files;
    manifest.bundle = bundle;
    manifest
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

/// Every file and directory under `dir`, by relative path, with a file's bytes; the time of
/// the restore that `postgresql.auto.conf` records is left out (two restores may straddle a
/// second).
fn contents(dir: &std::path::Path) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    let mut found = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(dir)
                .expect("under dir")
                .display()
                .to_string();
            if e.file_type().expect("type").is_dir() {
                stack.push(path);
                found.insert(rel, None);
            } else {
                let mut bytes = std::fs::read(&path).expect("read");
                if rel == "postgresql.auto.conf" {
                    bytes = without_restore_time(&bytes);
                }
                found.insert(rel, Some(bytes));
            }
        }
    }
    found
}

fn without_restore_time(conf: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(conf);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|line| match line.split_once(" at ") {
            Some((added, _)) if line.starts_with("# Added by lifeline restore") => added,
            _ => line,
        })
        .collect();
    lines.join("\n").into_bytes()
}

/// In windows of one chunk (each relation file planned and written on its own), a restore
/// writes the same directory, and a read that fails in its last window leaves nothing.
#[tokio::test]
async fn a_restore_in_windows_writes_the_same_and_a_late_failure_leaves_nothing() {
    let memory = MemoryStorage::new();
    let manifest = backup(&memory).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (whole, windowed) = (dir.path().join("whole"), dir.path().join("windowed"));
    let gets_whole = gets_of_a_clean_restore(&memory, &manifest).await;
    restore::restore_base(
        Arc::new(Faulty::builder(memory.clone()).build()),
        &manifest,
        &options(&whole),
    )
    .await
    .expect("restore in one window");
    let in_windows = |data: &std::path::Path| restore::RestoreOptions {
        plan_window: 1,
        ..options(data)
    };
    let store = Arc::new(Faulty::builder(memory.clone()).build());
    restore::restore_base(store.clone(), &manifest, &in_windows(&windowed))
        .await
        .expect("restore in windows");
    assert_eq!(contents(&windowed), contents(&whole));
    assert_eq!(
        std::fs::read(windowed.join("base/1/1003")).expect("relation"),
        relation(3)
    );
    // The four relation files share a pack: read in more pieces when each is planned alone.
    let gets = store.calls(Op::Get);
    assert!(
        gets > gets_whole,
        "{gets} reads in windows, {gets_whole} in one"
    );
    let data = dir.path().join("failed");
    let store = Arc::new(
        Faulty::builder(memory.clone())
            .fail_nth_get(gets, Fault::Rejected)
            .build(),
    );
    restore::restore_base(store.clone(), &manifest, &in_windows(&data))
        .await
        .expect_err("the last read fails the restore");
    assert_eq!(store.injected(), 1);
    assert!(!data.exists(), "the target was left behind");
}
