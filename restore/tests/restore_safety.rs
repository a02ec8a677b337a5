//! A base restore against a real local repository: forged manifests are refused before the
//! first write and change nothing outside the target; a restore that fails part way (a missing
//! pack, a chunk whose content is wrong, a size the data cannot have) stops every worker and
//! leaves nothing behind; tablespaces and `--waldir` go exactly where they were mapped.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use restore::RestoreOptions;
use storage::LocalStorage;
use storage::manifest::{BackupManifest, ChunkRef, EntryKind, FileEntry, Tablespace};
use storage::{PutMode, Storage, layout};
use testing::fixtures::file_entry;

/// Builds a repository of packs, one pack per `seal`.
struct Repo {
    storage: Arc<LocalStorage>,
    /// Chunks of the pack being built, stored by `seal`.
    pending: Vec<Vec<u8>>,
    chunks: Vec<ChunkRef>,
}

impl Repo {
    fn new(dir: &Path) -> Repo {
        // The repository's directory must exist: lifeline never creates it.
        std::fs::create_dir_all(dir).expect("repository directory");
        Repo {
            storage: Arc::new(LocalStorage::open(dir).expect("repository")),
            pending: Vec::new(),
            chunks: Vec::new(),
        }
    }

    /// Add `data` as a chunk of the pack being built; its reference is completed by `seal`.
    fn chunk(&mut self, data: &[u8]) -> usize {
        self.pending.push(data.to_vec());
        self.chunks.len() + self.pending.len() - 1
    }

    async fn seal(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        let refs = testing::store_pack(self.storage.as_ref(), &pending).await;
        self.chunks.extend(refs);
    }
}

/// Contents of the files of the test backup.
fn relation(i: usize) -> Vec<u8> {
    (0..16384).map(|b| ((b * 7 + i * 13) % 251) as u8).collect()
}

/// A backup of a small data directory: 300 small files in the bundle (several per chunk, so
/// one write task touches many files), a few relation files in two packs, a tablespace and a
/// `pg_wal` directory. The relation files' chunks are in the second pack.
async fn backup(repo: &mut Repo) -> BackupManifest {
    let small: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("small file {i}\n").repeat(i % 7 + 1).into_bytes())
        .collect();
    let bundle: Vec<u8> = small.concat();
    // The bundle cut into 4 KiB chunks.
    let bundle_chunks: Vec<usize> = bundle.chunks(4096).map(|c| repo.chunk(c)).collect();
    let control = repo.chunk(b"pg_control bytes");
    repo.seal().await;
    let relations: Vec<usize> = (0..6)
        .map(|i| {
            let data = relation(i);
            repo.chunk(&data)
        })
        .collect();
    repo.seal().await;

    let mut files = vec![
        file_entry("base", EntryKind::Dir, 0o700),
        file_entry("base/1", EntryKind::Dir, 0o700),
        file_entry("global", EntryKind::Dir, 0o700),
        file_entry("pg_tblspc", EntryKind::Dir, 0o700),
        file_entry("pg_tblspc/16385", EntryKind::Dir, 0o700),
        file_entry("pg_tblspc/16385/PG_15_202209061", EntryKind::Dir, 0o700),
        file_entry("pg_tblspc/16385/PG_15_202209061/5", EntryKind::Dir, 0o700),
        file_entry("pg_wal", EntryKind::Dir, 0o700),
        file_entry("small", EntryKind::Dir, 0o700),
    ];
    let mut offset = 0u64;
    for (i, data) in small.iter().enumerate() {
        let mut f = file_entry(&format!("small/{i:04}"), EntryKind::File, 0o600);
        f.size = data.len() as u64;
        f.bundle_offset = Some(offset);
        offset += f.size;
        files.push(f);
    }
    let mut pg_control = file_entry("global/pg_control", EntryKind::File, 0o600);
    pg_control.size = 16;
    pg_control.blocks = vec![repo.chunks[control]];
    files.push(pg_control);
    for (i, chunk) in relations.iter().enumerate() {
        let dir = if i < 3 {
            "base/1"
        } else {
            "pg_tblspc/16385/PG_15_202209061/5"
        };
        // setuid on a relation: a forged mode that must never reach the disk.
        let mut f = file_entry(&format!("{dir}/{}", 1000 + i), EntryKind::File, 0o4755);
        f.size = 16384;
        f.blocks = vec![repo.chunks[*chunk]];
        files.push(f);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut manifest = testing::fixtures::base_manifest();
    manifest.block_size = 16384;
    manifest.files = files;
    manifest.bundle = bundle_chunks.iter().map(|i| repo.chunks[*i]).collect();
    manifest.tablespaces = vec![Tablespace {
        oid: 16385,
        name: "fast space".into(),
        location: "/nonexistent/lifeline-test/original".into(),
    }];
    manifest
}

/// The shared options, with four transfers.
fn options(data_dir: &Path) -> RestoreOptions {
    RestoreOptions {
        transfers: 4,
        direct_io: true,
        ..common::options(data_dir)
    }
}

/// Every path under `dir`, with its kind and size, links not followed.
fn listing(dir: &Path) -> Vec<(PathBuf, String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let meta = std::fs::symlink_metadata(e.path()).expect("meta");
            let kind = if meta.file_type().is_symlink() {
                "link"
            } else if meta.is_dir() {
                stack.push(e.path());
                "dir"
            } else {
                "file"
            };
            out.push((e.path(), kind.to_string(), meta.len()));
        }
    }
    out.sort();
    out
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    repo: Repo,
    manifest: BackupManifest,
}

async fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().to_path_buf();
    let mut repo = Repo::new(&root.join("repo"));
    let manifest = backup(&mut repo).await;
    Setup {
        _tmp: tmp,
        root,
        repo,
        manifest,
    }
}

fn mapped(opts: &mut RestoreOptions, dir: &Path) {
    opts.tablespaces.each = vec![("fast space".into(), dir.to_path_buf())];
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_puts_every_byte_where_it_was_mapped() {
    let s = setup().await;
    let data = s.root.join("data");
    let ts = s.root.join("ts dir");
    let wal = s.root.join("wal");
    let mut opts = options(&data);
    mapped(&mut opts, &ts);
    opts.waldir = Some(wal.clone());
    let storage: Arc<dyn Storage> = s.repo.storage.clone();
    restore::restore_base(storage, &s.manifest, &opts)
        .await
        .expect("restore");
    for i in 0..3 {
        let path = data.join(format!("base/1/{}", 1000 + i));
        assert_eq!(std::fs::read(&path).expect("relation"), relation(i));
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(
            mode & 0o7777,
            0o700,
            "setuid, group and other bits masked off"
        );
    }
    for i in 3..6 {
        let path = ts.join(format!("PG_15_202209061/5/{}", 1000 + i));
        assert_eq!(std::fs::read(&path).expect("tablespace file"), relation(i));
    }
    assert_eq!(
        std::fs::read_link(data.join("pg_tblspc/16385")).expect("link"),
        ts
    );
    assert_eq!(std::fs::read_link(data.join("pg_wal")).expect("link"), wal);
    assert!(wal.join("archive_status").is_dir());
    let map = std::fs::read_to_string(data.join("tablespace_map")).expect("map");
    assert_eq!(map, format!("16385 {}\n", ts.display()));
    for i in [0usize, 17, 299] {
        let text = std::fs::read_to_string(data.join(format!("small/{i:04}"))).expect("small");
        assert_eq!(text, format!("small file {i}\n").repeat(i % 7 + 1));
    }
    assert!(data.join("global/pg_control").exists());
    assert!(!data.join(".lifeline-restore-incomplete").exists());
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).expect("auto.conf");
    assert!(auto.contains("archive_mode = 'off'"), "{auto}");
    // Every link in the restored directory points at a place the restore was given.
    for (path, kind, _) in listing(&data) {
        if kind == "link" {
            let target = std::fs::read_link(&path).expect("link");
            assert!(target == ts || target == wal, "{path:?} -> {target:?}");
        }
    }
}

/// Run as root for PostgreSQL (a failover), the restore gives everything it creates to the
/// server's user: a root-owned file in the data directory stops the server from starting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_run_restore_gives_everything_it_creates_to_the_owner() {
    if !storage::private::running_as_root() {
        // Only root can give files away; Owner::of is KEEP for anyone else.
        return;
    }
    let nobody = 65534;
    let s = setup().await;
    // Directories the restore creates, with their new parents, under one the owner has.
    let home = s.root.join("home");
    std::fs::create_dir(&home).expect("mkdir");
    std::os::unix::fs::chown(&home, Some(nobody), Some(nobody)).expect("chown");
    let owner = storage::private::Owner::of(&home);
    assert_eq!(owner.uid(), Some(nobody));
    let data = home.join("new/data");
    let ts = home.join("new/ts");
    let wal = home.join("wal");
    let mut opts = options(&data);
    opts.owner = owner;
    mapped(&mut opts, &ts);
    opts.waldir = Some(wal.clone());
    let storage: Arc<dyn Storage> = s.repo.storage.clone();
    restore::restore_base(storage, &s.manifest, &opts)
        .await
        .expect("restore");
    let mut paths: Vec<PathBuf> = [&data, &ts, &wal]
        .iter()
        .flat_map(|dir| listing(dir).into_iter().map(|(path, _, _)| path))
        .collect();
    paths.extend([home.join("new"), data.clone(), ts.clone(), wal.clone()]);
    for name in [
        "global/pg_control",
        "backup_label",
        "tablespace_map",
        "recovery.signal",
        "postgresql.auto.conf",
        "pg_tblspc/16385",
        "pg_wal",
    ] {
        assert!(paths.contains(&data.join(name)), "{name} not restored");
    }
    assert!(paths.contains(&wal.join("archive_status")));
    for path in &paths {
        testing::fixtures::assert_owned_by(path, nobody, nobody);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tablespace_in_use_or_a_busy_waldir_is_refused_before_any_write() {
    let s = setup().await;
    let data = s.root.join("data");
    let storage: Arc<dyn Storage> = s.repo.storage.clone();
    // The original location holds a live tablespace.
    let live = s.root.join("live");
    std::fs::create_dir(&live).expect("mkdir");
    std::fs::write(live.join("PG_15_202209061"), "production").expect("write");
    let mut manifest = s.manifest.clone();
    manifest.tablespaces[0].location = live.display().to_string();
    let err = restore::restore_base(storage.clone(), &manifest, &options(&data))
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("fast space") && text.contains("--tablespace-map"),
        "{text}"
    );
    assert!(!data.exists(), "nothing written");
    // A mapping that names no tablespace of the backup is a typo.
    let mut opts = options(&data);
    opts.tablespaces.each = vec![("nosuch".into(), s.root.join("x"))];
    let err = restore::restore_base(storage.clone(), &s.manifest, &opts)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("nosuch"), "{err}");
    // A waldir that is not empty.
    let mut opts = options(&data);
    mapped(&mut opts, &s.root.join("ts"));
    opts.waldir = Some(live.clone());
    let err = restore::restore_base(storage.clone(), &s.manifest, &opts)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("--waldir"), "{err}");
    // A tablespace mapped inside the data directory.
    let mut opts = options(&data);
    mapped(&mut opts, &data.join("ts"));
    let err = restore::restore_base(storage, &s.manifest, &opts)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("overlap"), "{err}");
    assert!(!data.exists(), "nothing written");
    assert_eq!(
        std::fs::read_to_string(live.join("PG_15_202209061")).expect("live"),
        "production"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_manifests_are_refused_and_change_nothing_outside_the_target() {
    let s = setup().await;
    let storage: Arc<dyn Storage> = s.repo.storage.clone();
    let outside = s.root.join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("victim"), "untouched").expect("write");
    let before = listing(&outside);
    let data_file = |path: &str| {
        let mut f = s
            .manifest
            .files
            .iter()
            .find(|f| f.path == "base/1/1000")
            .cloned()
            .expect("a relation");
        f.path = path.into();
        f
    };
    let mut link = file_entry("base/evil", EntryKind::Symlink, 0o777);
    link.link_target = Some(outside.display().to_string());
    let tricks: Vec<(&str, Vec<FileEntry>)> = vec![
        (
            "a link, then a file beneath it",
            vec![link.clone(), data_file("base/evil/victim")],
        ),
        (
            "a link, then a directory beneath it",
            vec![
                link.clone(),
                file_entry("base/evil/sub", EntryKind::Dir, 0o777),
            ],
        ),
        (
            "a path climbing out",
            vec![data_file("base/../../outside/victim")],
        ),
        ("an absolute path", vec![data_file("/tmp/lifeline-victim")]),
        ("the same path twice", vec![data_file("base/1/1000")]),
        (
            "a link to the live tablespace",
            vec![{
                let mut l = file_entry("pg_tblspc/16999", EntryKind::Symlink, 0o777);
                l.link_target = Some(outside.display().to_string());
                l
            }],
        ),
    ];
    for (trick, extra) in tricks {
        let mut manifest = s.manifest.clone();
        manifest.files.extend(extra);
        let data = s.root.join("data");
        let mut opts = options(&data);
        mapped(&mut opts, &s.root.join("ts"));
        let err = restore::restore_base(storage.clone(), &manifest, &opts)
            .await
            .expect_err(trick);
        assert!(
            err.to_string().contains("cannot be trusted"),
            "{trick}: {err}"
        );
        assert!(!data.exists(), "{trick}: the target was written");
        assert!(
            !s.root.join("ts").exists(),
            "{trick}: the tablespace was written"
        );
        assert_eq!(listing(&outside), before, "{trick}");
    }
    // A size the data cannot have.
    let mut manifest = s.manifest.clone();
    let f = manifest
        .files
        .iter_mut()
        .find(|f| f.path == "base/1/1000")
        .expect("relation");
    f.size = 1 << 50;
    let data = s.root.join("data");
    let err = restore::restore_base(storage, &manifest, &options(&data))
        .await
        .expect_err("impossible size");
    assert!(err.to_string().contains("claims"), "{err}");
    assert!(!data.exists());
}

/// Run a restore that must fail part way, into a new and into an existing empty directory,
/// and check that nothing is left in the data directory or the tablespace's place.
async fn fails_leaving_nothing(s: &Setup, manifest: &BackupManifest, expect: &str) {
    let storage: Arc<dyn Storage> = s.repo.storage.clone();
    for existed in [false, true] {
        let data = s.root.join("data");
        let ts = s.root.join("ts");
        if existed {
            std::fs::create_dir(&data).expect("mkdir");
            std::fs::create_dir(&ts).expect("mkdir");
        }
        let mut opts = options(&data);
        mapped(&mut opts, &ts);
        let err = restore::restore_base(storage.clone(), manifest, &opts)
            .await
            .expect_err("the restore fails");
        assert!(err.to_string().contains(expect), "{err:#}");
        // Once the restore has returned, nothing writes any more.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        for dir in [&data, &ts] {
            if existed {
                assert_eq!(listing(dir), vec![], "{} not emptied", dir.display());
                std::fs::remove_dir(dir).expect("rmdir");
            } else {
                assert!(!dir.exists(), "{} left behind", dir.display());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_that_fails_part_way_leaves_nothing_behind() {
    let s = setup().await;
    // A missing pack: the relations' pack, read after the bundle's.
    let relations_pack = s
        .manifest
        .files
        .iter()
        .find(|f| f.path == "base/1/1000")
        .map(|f| f.blocks[0].pack)
        .expect("relation");
    let key = layout::pack_key(&relations_pack);
    let path = s.root.join("repo").join(&key);
    let saved = std::fs::read(&path).expect("pack");
    std::fs::remove_file(&path).expect("remove pack");
    fails_leaving_nothing(&s, &s.manifest, "").await;
    std::fs::write(&path, &saved).expect("put back");

    // A chunk whose bytes are another chunk's: the checksum fails late, on the last relation,
    // whether the forged name sorts before or after the genuine one at the same place.
    for forged in [0x00, 0xff] {
        let mut manifest = s.manifest.clone();
        let other = manifest
            .files
            .iter()
            .find(|f| f.path == "base/1/1001")
            .map(|f| f.blocks[0])
            .expect("relation");
        let last = manifest
            .files
            .iter_mut()
            .find(|f| f.path.ends_with("/1005"))
            .expect("relation");
        last.blocks[0].hash = storage::ChunkHash::from_bytes([forged; 32]);
        last.blocks[0].offset = other.offset;
        last.blocks[0].stored = other.stored;
        fails_leaving_nothing(&s, &manifest, "does not match").await;
    }

    // A size the chunk does not have: the manifest adds up, the content does not.
    let mut manifest = s.manifest.clone();
    let f = manifest
        .files
        .iter_mut()
        .find(|f| f.path == "base/1/1002")
        .expect("relation");
    f.blocks[0].len = 8192;
    f.size = 8192;
    fails_leaving_nothing(&s, &manifest, "does not match").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_stored_under_another_backups_name_is_refused() {
    let s = setup().await;
    storage::manifest::put_manifest(
        s.repo.storage.as_ref(),
        &layout::manifest_key("backup_20990101_000000"),
        &s.manifest,
        PutMode::Create,
    )
    .await
    .expect("put");
    let err = BackupManifest::load(s.repo.storage.as_ref(), "backup_20990101_000000")
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("claims to be backup"), "{err}");
}
