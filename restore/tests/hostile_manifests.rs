//! Forged manifests (someone with write access to the repository) and operator inputs that once
//! made a restore write, chmod or leave things where it should not (found by an attacker's
//! review of issue 11). Each test is named for what it now guarantees; its comment tells the
//! attack or mistake it answers.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use common::options;

use storage::LocalStorage;
use storage::manifest::{BackupManifest, ChunkRef, EntryKind, FileEntry, Tablespace};
use storage::{Durability, PutMode, Storage};
use testing::fixtures::file_entry;

/// One pack holding `chunks`, stored in a new local repository at `dir`.
async fn repository(dir: &Path, chunks: &[&[u8]]) -> (Arc<LocalStorage>, Vec<ChunkRef>) {
    // The repository's directory must exist: lifeline never creates it.
    std::fs::create_dir_all(dir).expect("repository directory");
    let storage = Arc::new(LocalStorage::open(dir).expect("repository"));
    let refs = testing::store_pack(storage.as_ref(), chunks).await;
    (storage, refs)
}

fn file(path: &str, mode: u32, chunk: &ChunkRef) -> FileEntry {
    FileEntry {
        size: chunk.len,
        blocks: vec![*chunk],
        ..file_entry(path, EntryKind::File, mode)
    }
}

/// A data directory with `global/pg_control`, a tablespace directory and `extra` entries.
fn manifest(control: &ChunkRef, tablespace: Tablespace, extra: Vec<FileEntry>) -> BackupManifest {
    let mut m = testing::fixtures::base_manifest();
    m.files = vec![
        file_entry("global", EntryKind::Dir, 0o700),
        file("global/pg_control", 0o600, control),
        file_entry("pg_tblspc", EntryKind::Dir, 0o700),
        file_entry(
            &format!("pg_tblspc/{}", tablespace.oid),
            EntryKind::Dir,
            0o700,
        ),
    ];
    m.files.extend(extra);
    m.tablespaces = vec![tablespace];
    m
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("meta").permissions().mode() & 0o7777
}

/// A forged manifest names any missing or empty absolute directory as a tablespace's original
/// location and puts files straight into it (not under a `PG_<major>_<catversion>` directory,
/// the only thing PostgreSQL keeps there). Restored as root, `~root/.ssh/authorized_keys`,
/// `/var/spool/cron/crontabs/root` (empty by default on Debian) or `/etc/sudoers.d/x` are one
/// manifest away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_tablespace_location_receives_nothing_outside_a_version_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = b"ssh-ed25519 AAAA attacker\n";
    let (storage, chunks) = repository(&tmp.path().join("repo"), &[b"pg_control", key]).await;
    // An existing, empty, private directory that is nobody's tablespace.
    let ssh = tmp.path().join("home/.ssh");
    std::fs::create_dir_all(&ssh).expect("mkdir");
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let m = manifest(
        &chunks[0],
        Tablespace {
            oid: 16385,
            name: "t".into(),
            location: ssh.display().to_string(),
        },
        vec![file("pg_tblspc/16385/authorized_keys", 0o644, &chunks[1])],
    );
    let data = tmp.path().join("data");
    let storage: Arc<dyn Storage> = storage;
    let result = restore::restore_base(storage, &m, &options(&data)).await;
    assert!(
        !ssh.join("authorized_keys").exists(),
        "the restore wrote {} (result: {result:?})",
        ssh.join("authorized_keys").display()
    );
}

/// The manifest's mode of `pg_tblspc/<oid>` is applied to the tablespace's place itself: an
/// existing empty directory (the operator's --tablespace-map DIR, or an original location)
/// becomes world-writable, and the tablespace's files, outside the 0700 data directory, become
/// readable and writable by every local user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tablespace_places_and_files_stay_private_whatever_the_modes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (storage, chunks) = repository(
        &tmp.path().join("repo"),
        &[b"pg_control", b"relation bytes"],
    )
    .await;
    let place = tmp.path().join("ts");
    std::fs::create_dir(&place).expect("mkdir");
    std::fs::set_permissions(&place, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let mut m = manifest(
        &chunks[0],
        Tablespace {
            oid: 16385,
            name: "t".into(),
            location: "/nonexistent/original".into(),
        },
        vec![
            file_entry("pg_tblspc/16385/PG_15_202209061", EntryKind::Dir, 0o777),
            file("pg_tblspc/16385/PG_15_202209061/1259", 0o666, &chunks[1]),
        ],
    );
    // The link entry itself, as forged.
    m.files[3].mode = 0o777;
    let data = tmp.path().join("data");
    let mut opts = options(&data);
    opts.tablespaces.each = vec![("t".into(), place.clone())];
    let storage: Arc<dyn Storage> = storage;
    restore::restore_base(storage, &m, &opts)
        .await
        .expect("restore");
    let relation = place.join("PG_15_202209061/1259");
    assert_eq!(
        (
            mode(&place),
            mode(&place.join("PG_15_202209061")),
            mode(&relation) & 0o077
        ),
        (0o700, 0o700, 0),
        "outside the data directory, the restore gave others access"
    );
}

/// `std::path::absolute` keeps `..`, so the overlap check compares `x/../data/ts` with `data`
/// and lets a tablespace land inside the data directory (and the restore leaves `x` behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dotdot_in_a_tablespace_map_dir_is_caught_by_the_overlap_check() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (storage, chunks) = repository(&tmp.path().join("repo"), &[b"pg_control"]).await;
    let m = manifest(
        &chunks[0],
        Tablespace {
            oid: 16385,
            name: "t".into(),
            location: "/nonexistent/original".into(),
        },
        vec![file_entry(
            "pg_tblspc/16385/PG_15_202209061",
            EntryKind::Dir,
            0o700,
        )],
    );
    let data = tmp.path().join("data");
    let mut opts = options(&data);
    opts.tablespaces.each = vec![("t".into(), tmp.path().join("x/../data/ts"))];
    let storage: Arc<dyn Storage> = storage;
    let result = restore::restore_base(storage, &m, &opts).await;
    assert!(
        result
            .as_ref()
            .is_err_and(|e| e.to_string().contains("overlap")),
        "a tablespace mapped inside the data directory was accepted: {result:?}; \
         data/ts exists: {}",
        data.join("ts").exists()
    );
}

/// PostgreSQL accepts any quoted name (`CREATE TABLESPACE "fast/ssd" ...`), and the name is
/// used as a path only by --tablespace-map-all. Refusing it in the manifest check makes the
/// whole backup unrestorable, even with the tablespace mapped by name or oid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablespace_named_with_a_slash_restores_when_mapped_by_oid() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (storage, chunks) = repository(&tmp.path().join("repo"), &[b"pg_control"]).await;
    let m = manifest(
        &chunks[0],
        Tablespace {
            oid: 16385,
            name: "fast/ssd".into(),
            location: "/mnt/fast".into(),
        },
        vec![file_entry(
            "pg_tblspc/16385/PG_15_202209061",
            EntryKind::Dir,
            0o700,
        )],
    );
    let data = tmp.path().join("data");
    let mut opts = options(&data);
    opts.tablespaces.each = vec![("16385".into(), tmp.path().join("ts"))];
    let storage: Arc<dyn Storage> = storage;
    let result = restore::restore_base(storage, &m, &opts).await;
    assert!(
        result.is_ok(),
        "a backup of a tablespace named \"fast/ssd\", mapped by oid: {result:?}"
    );
}

/// Small files whose bundle ranges overlap (only a forged manifest has them) once passed
/// validation, and the bundle cutter then skipped the rest of the longer file: the restore
/// succeeded with zeros where the data should be. Now the manifest is refused before anything
/// is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_bundle_ranges_never_restore_zeros_with_success() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (storage, chunks) = repository(
        &tmp.path().join("repo"),
        &[b"pg_control", b"AAAAAAAA", b"BBBBBBBB"],
    )
    .await;
    let mut m = manifest(
        &chunks[0],
        Tablespace {
            oid: 16385,
            name: "t".into(),
            location: "/nonexistent/original".into(),
        },
        vec![file_entry("small", EntryKind::Dir, 0o700)],
    );
    m.bundle = vec![chunks[1], chunks[2]];
    // "a" is the whole 16-byte bundle; "b" is bytes 2..4 of it.
    m.files.push(FileEntry {
        size: 16,
        bundle_offset: Some(0),
        ..file_entry("small/a", EntryKind::File, 0o600)
    });
    m.files.push(FileEntry {
        size: 2,
        bundle_offset: Some(2),
        ..file_entry("small/b", EntryKind::File, 0o600)
    });
    let data = tmp.path().join("data");
    let mut opts = options(&data);
    opts.tablespaces.each = vec![("t".into(), tmp.path().join("ts"))];
    let storage: Arc<dyn Storage> = storage;
    let refused = restore::restore_base(storage, &m, &opts)
        .await
        .expect_err("overlapping bundle ranges are refused")
        .to_string();
    assert!(
        refused
            .contains("\"small/a\" and \"small/b\" claim the same bytes of the small-file bundle"),
        "{refused}"
    );
    assert!(
        !data.exists(),
        "the refused restore wrote {}",
        data.display()
    );
}

/// A failed restore into a data directory whose parents did not exist removes the data
/// directory and the parents it created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_removes_the_parent_directories_it_created() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (storage, chunks) = repository(&tmp.path().join("repo"), &[b"pg_control"]).await;
    let mut missing = chunks[0];
    missing.pack = storage::PackId::from_bytes([0xab; 32]);
    let m = manifest(
        &missing,
        Tablespace {
            oid: 16385,
            name: "t".into(),
            location: "/nonexistent/original".into(),
        },
        vec![],
    );
    let data = tmp.path().join("new/parents/data");
    let mut opts = options(&data);
    opts.tablespaces.each = vec![("t".into(), tmp.path().join("also/new/ts"))];
    let storage: Arc<dyn Storage> = storage;
    restore::restore_base(storage, &m, &opts)
        .await
        .expect_err("the pack is missing");
    assert!(
        !tmp.path().join("new").exists() && !tmp.path().join("also").exists(),
        "left behind: {:?} {:?}",
        tmp.path().join("new/parents").exists(),
        tmp.path().join("also/new").exists()
    );
}

/// A repository that, while the restore checks its packs (`verify_first`, minutes on S3),
/// lets "someone else" create the data directory the plan found missing: a second restore
/// into the same new directory, or the operator starting over.
struct RacingRepo {
    inner: Arc<LocalStorage>,
    then: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for RacingRepo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RacingRepo")
    }
}

#[async_trait::async_trait]
impl Storage for RacingRepo {
    async fn put_stream(
        &self,
        key: &str,
        payload: storage::ObjectReader,
        mode: PutMode,
        durability: Durability,
    ) -> Result<(), storage::StorageError> {
        self.inner.put_stream(key, payload, mode, durability).await
    }
    async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        mode: PutMode,
        durability: Durability,
    ) -> Result<(), storage::StorageError> {
        self.inner.put_bytes(key, bytes, mode, durability).await
    }
    async fn get_stream(&self, key: &str) -> Result<storage::ObjectReader, storage::StorageError> {
        self.inner.get_stream(key).await
    }
    async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Vec<u8>, storage::StorageError> {
        self.inner.get_range(key, range).await
    }
    async fn head(&self, key: &str) -> Result<storage::ObjectMeta, storage::StorageError> {
        let then = self.then.lock().expect("lock").take();
        if let Some(then) = then {
            then();
        }
        self.inner.head(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<storage::ObjectMeta>, storage::StorageError> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<(), storage::StorageError> {
        self.inner.delete(key).await
    }
    async fn sync(&self) -> Result<(), storage::StorageError> {
        self.inner.sync().await
    }
    async fn sync_object(&self, key: &str) -> Result<(), storage::StorageError> {
        self.inner.sync_object(key).await
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A place the plan found missing is "not existed", so when creating it fails because it now
/// exists, the clean-up runs `remove_dir_all` on it: another restore's finished data directory
/// (or a server already started on it) is deleted by a restore that never wrote there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restore_keeps_a_directory_someone_else_created_after_the_check() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (inner, chunks) = repository(&tmp.path().join("repo"), &[b"pg_control"]).await;
    let m = manifest(
        &chunks[0],
        Tablespace {
            oid: 16385,
            name: "t".into(),
            location: "/nonexistent/original".into(),
        },
        vec![],
    );
    let data = tmp.path().join("data");
    let theirs = data.clone();
    let storage: Arc<dyn Storage> = Arc::new(RacingRepo {
        inner,
        then: std::sync::Mutex::new(Some(Box::new(move || {
            std::fs::create_dir(&theirs).expect("mkdir");
            std::fs::write(theirs.join("PG_VERSION"), "15\n").expect("write");
        }))),
    });
    let mut opts = options(&data);
    opts.verify_first = true;
    opts.tablespaces.each = vec![("t".into(), tmp.path().join("ts"))];
    let result = restore::restore_base(storage, &m, &opts).await;
    assert!(result.is_err(), "the directory exists now: {result:?}");
    assert!(
        data.join("PG_VERSION").exists(),
        "the failed restore deleted a directory it did not create ({result:?})"
    );
}

/// A Redis restore moves the files in the way (`dump.rdb`, `appendonlydir`) aside before it
/// has read a byte of the backup. When the backup then cannot be read (a pack missing), the
/// restore fails, the live `dump.rdb` is no longer where Redis looks, and the error does not
/// say where it went: a redis-server restarted there at 3 a.m. starts empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_redis_restore_leaves_the_existing_dump_where_redis_looks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (storage, chunks) = repository(&tmp.path().join("repo"), &[b"REDIS0011 new"]).await;
    let mut missing = chunks[0];
    missing.pack = storage::PackId::from_bytes([0xab; 32]);
    let json = serde_json::json!({
        "format": 1, "backup_id": "redis_20250101_000000", "service": "redis", "kind": "rdb",
        "server_version": "7", "source": "127.0.0.1:6379",
        "started_at": "2025-01-01T00:00:00Z", "finished_at": "2025-01-01T00:00:00Z",
        "files": [{ "name": "dump.rdb", "size": missing.len, "chunks": [missing] }],
        "size_bytes": 0, "new_bytes": 0
    });
    let manifest: storage::manifest::StreamManifest =
        serde_json::from_value(json).expect("manifest");
    let dir = tmp.path().join("redis");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("dump.rdb"), "REDIS0011 live").expect("write");
    let err = restore::restore_redis(
        storage.as_ref(),
        &manifest,
        &dir,
        &restore::RedisRestoreOptions {
            transfers: 2,
            owner: storage::private::Owner::KEEP,
            progress: storage::progress::none(),
        },
    )
    .await
    .expect_err("the pack is missing");
    assert!(
        std::fs::read(dir.join("dump.rdb")).is_ok_and(|d| d == b"REDIS0011 live")
            || err.to_string().contains("lifeline-replaced"),
        "dump.rdb is gone and the error does not say where: {err}"
    );
}
