//! Put a base backup into a data directory, ready to recover when PostgreSQL starts.
//!
//! Nothing that looks complete is left behind by a failed restore: a marker file is written
//! first, `global/pg_control` (without which PostgreSQL will not start) is written under a
//! temporary name and renamed last, and on any error every worker is joined and then
//! everything written is removed. Chunks are fetched, decompressed and verified `parallelism`
//! at a time. Where each file goes is decided by [`Places`]; what may be written at all, by
//! the manifest's validation.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::{StreamExt, TryStreamExt};
use storage::manifest::{BackupManifest, ChunkRef, EntryKind, FileEntry};
use storage::private::Owner;
use storage::progress::Progress;
use storage::{Storage, StorageExt, layout};
use tracing::debug;

use crate::RestoreError;
use crate::block_lists::BlockLists;
use crate::error::blocking;
use crate::file_writes::{SharedWrites, TaskFiles};
use crate::opening::no_follow;
use crate::places::{CONTROL_FILE, CONTROL_PARTIAL, Places};
use crate::validate::{DIR_MODE, file_mode, tablespace_link_oid};

pub(crate) const MARKER: &str = ".lifeline-restore-incomplete";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// Stop as soon as the backup is consistent.
    Immediate,
    /// Replay up to and including this instant, on the chosen timeline.
    Time(jiff::Timestamp),
    /// Replay everything the archive holds on the chosen timeline (a failover or a drill).
    EndOfArchive,
}

/// Whether the restored server archives WAL (`archive_mode` in `postgresql.auto.conf`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveMode {
    /// `archive_mode = 'off'`: a copy started for a test never writes into the repository.
    #[default]
    Off,
    /// Keep the backed-up server's setting: the restore makes the new primary (failover).
    Preserve,
}

impl std::str::FromStr for ArchiveMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "off" => Ok(ArchiveMode::Off),
            "preserve" => Ok(ArchiveMode::Preserve),
            _ => Err(format!(
                "--archive-mode {s:?}: use off (the restored server archives nothing) or preserve"
            )),
        }
    }
}

/// Where the backup's tablespaces go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TablespaceMapping {
    /// `--tablespace-map NAME=DIR`: NAME is the tablespace's name or oid.
    pub each: Vec<(String, PathBuf)>,
    /// `--tablespace-map-all DIR`: every other tablespace into `DIR/<name>`.
    pub all: Option<PathBuf>,
}

impl TablespaceMapping {
    /// One `--tablespace-map NAME=DIR`.
    pub fn parse_entry(text: &str) -> Result<(String, PathBuf), String> {
        match text.split_once('=') {
            Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
                Ok((name.to_string(), PathBuf::from(dir)))
            }
            _ => Err(format!(
                "{text:?} is not NAME=DIR: give the tablespace's name or oid and the directory to put it in"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub data_dir: PathBuf,
    pub parallelism: usize,
    /// Chunk groups read from the repository at once.
    pub transfers: usize,
    /// Write relation blocks with `O_DIRECT` where the file system takes it (see
    /// `file_writes`); false: everything through the page cache.
    pub direct_io: bool,
    /// Check that every chunk exists before writing anything.
    pub verify_first: bool,
    pub target: RecoveryTarget,
    /// The `restore_command` to write (absolute binary path, no secrets).
    pub restore_command: String,
    pub tablespaces: TablespaceMapping,
    /// `--waldir`: `pg_wal` becomes a link to this empty or new directory (with `--delta`, or
    /// the one the data directory's `pg_wal` leads to); otherwise a real directory inside the
    /// data directory.
    pub waldir: Option<PathBuf>,
    pub archive_mode: ArchiveMode,
    pub timeline: crate::TargetTimeline,
    /// Set (by a signal handler) to stop the restore: the workers stop, are joined, and what
    /// was written is removed.
    pub interrupted: Arc<AtomicBool>,
    /// Whom every file, directory and link the restore creates (and the data, tablespace and
    /// WAL directories it takes over) is given to: PostgreSQL's user when root restores for
    /// it. `Owner::KEEP` keeps the process's own.
    pub owner: Owner,
    /// Bytes written of the backup's size.
    pub progress: Arc<dyn Progress>,
    /// `--delta`: reuse a stopped data directory of the same cluster, rewriting only what
    /// differs from the backup (an empty or missing directory is restored in full).
    pub delta: bool,
    /// With `delta`: the WAL of the directory's pg_wal that was never archived may be given up.
    pub discard_unarchived_wal: bool,
    /// Chunk writes planned at a time ([`PLAN_WINDOW`]): a larger cluster is written in
    /// windows of whole files, one after the other.
    pub plan_window: usize,
}

/// Chunk writes planned at a time: about 64 GiB of relation blocks in a plan of 10 MiB. The
/// plan (40 bytes a write) is what grew with the cluster besides the manifest; in windows, a
/// 1 TiB cluster holds 10 MiB of it rather than 160 MiB. A window ends with a file, so each
/// file is written within one.
pub const PLAN_WINDOW: usize = 1 << 18;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    pub files: usize,
    pub bytes: u64,
    /// What a delta restore kept, rewrote and removed; `None` for a full restore.
    pub delta: Option<crate::delta::DeltaReport>,
}

pub async fn read_manifest(
    storage: &dyn Storage,
    backup_id: &str,
) -> Result<BackupManifest, RestoreError> {
    Ok(BackupManifest::load(storage, backup_id).await?)
}

/// Restore `manifest` into `opts.data_dir` and write the recovery settings. Every check (the
/// manifest as a whole, every place, every pack) runs before the first write; a failure after
/// it stops and joins every worker, then removes everything written.
pub async fn restore_base(
    storage: Arc<dyn Storage>,
    manifest: &BackupManifest,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    restore_with(storage, manifest, BlockLists::whole(), opts).await
}

/// [`restore_base`] of a manifest whose block lists `lists` keeps.
pub(crate) async fn restore_with(
    storage: Arc<dyn Storage>,
    manifest: &BackupManifest,
    lists: BlockLists,
    opts: &RestoreOptions,
) -> Result<RestoreReport, RestoreError> {
    crate::validate::validate_with(manifest, &lists)?;
    if opts.delta
        && let Some(existing) = crate::delta::existing_cluster(manifest, opts)?
    {
        return crate::delta::restore_delta(storage, manifest, lists, opts, existing).await;
    }
    let places = Arc::new(Places::plan(manifest, opts)?);
    if opts.verify_first {
        check_packs_exist(
            storage.as_ref(),
            &manifest.backup_id,
            lists.packs(manifest),
            opts.parallelism,
        )
        .await?;
        debug!("every pack the backup needs is present");
    }
    if opts.interrupted.load(Ordering::Relaxed) {
        return Err(RestoreError::Interrupted);
    }
    let created = {
        let places = places.clone();
        blocking("directory creation task", move || places.create()).await
    };
    let result = match created {
        Ok(()) => restore_into(storage, manifest, lists, opts, &places).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        // Every writer has stopped (run_all joins them): nothing writes while this removes.
        let places = places.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || places.clean_up()).await {
            tracing::warn!("the clean-up after the failed restore stopped: {e}");
        }
    }
    result
}

/// Where `restore_base` would write, found by the checks it runs before its first write.
#[derive(Debug)]
pub(crate) struct Destinations {
    /// Onto the existing data directory of the backup's cluster (`--delta`), removing this
    /// many entries it does not hold.
    pub delta: Option<usize>,
    /// Tablespace oid -> its directory.
    pub tablespaces: Vec<(u32, PathBuf)>,
    pub waldir: Option<PathBuf>,
}

/// Every check `restore_base` runs before its first write, for `SIMULATE_MODE`; nothing is
/// written.
pub(crate) async fn preview_base(
    storage: &dyn Storage,
    manifest: &BackupManifest,
    lists: &BlockLists,
    opts: &RestoreOptions,
) -> Result<Destinations, RestoreError> {
    crate::validate::validate_with(manifest, lists)?;
    let existing = match opts.delta {
        true => crate::delta::existing_cluster(manifest, opts)?,
        false => None,
    };
    let destinations = if let Some(existing) = existing {
        Destinations {
            delta: Some(crate::delta::preview_delta(manifest, lists, &existing).await?),
            tablespaces: existing.tablespaces(),
            waldir: existing.waldir(),
        }
    } else {
        let places = Places::plan(manifest, opts)?;
        places.check_creatable()?;
        Destinations {
            delta: None,
            tablespaces: places
                .tablespaces
                .iter()
                .map(|(oid, p)| (*oid, p.dir.clone()))
                .collect(),
            waldir: places.waldir.as_ref().map(|p| p.dir.clone()),
        }
    };
    if opts.verify_first {
        check_packs_exist(
            storage,
            &manifest.backup_id,
            lists.packs(manifest),
            opts.parallelism,
        )
        .await?;
    }
    Ok(destinations)
}

/// Every one of `packs` exists, or the backup is refused before anything is written.
pub(crate) async fn check_packs_exist(
    storage: &dyn Storage,
    backup_id: &str,
    packs: std::collections::BTreeSet<storage::PackId>,
    parallelism: usize,
) -> Result<(), RestoreError> {
    let missing: Vec<storage::PackId> = futures::stream::iter(packs)
        .map(|pack| async move {
            match storage.exists(&layout::pack_key(&pack)).await {
                Ok(true) => Ok(None),
                Ok(false) => Ok(Some(pack)),
                Err(e) => Err(e),
            }
        })
        .buffer_unordered(parallelism.max(1) * 4)
        .try_filter_map(|m| async move { Ok(m) })
        .try_collect()
        .await?;
    if let Some(first) = missing.first() {
        return Err(RestoreError::Refused(format!(
            "backup {} is damaged: {} pack(s) missing from the repository, e.g. {}; nothing was written. \
             Restore an older backup (--from BACKUP_ID) and run `lifeline verify --read-data`",
            backup_id,
            missing.len(),
            layout::pack_key(first)
        )));
    }
    Ok(())
}

/// Run `work` on every item, `limit` at a time, to the end: after the first failure the items
/// not yet started are skipped, but every one already running is waited for, so that nothing
/// writes after the caller cleans up. Returns the first failure.
pub(crate) async fn run_all<T, F, Fut>(
    items: impl IntoIterator<Item = T>,
    limit: usize,
    interrupted: &AtomicBool,
    work: F,
) -> Result<(), RestoreError>
where
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<(), RestoreError>>,
{
    let failed = AtomicBool::new(false);
    let failed = &failed;
    let work = &work;
    let mut results = futures::stream::iter(items)
        .map(|item| async move {
            if failed.load(Ordering::Relaxed) || interrupted.load(Ordering::Relaxed) {
                return Ok(());
            }
            work(item).await
        })
        .buffer_unordered(limit.max(1));
    let mut first = None;
    while let Some(result) = results.next().await {
        if let Err(e) = result {
            failed.store(true, Ordering::Relaxed);
            first.get_or_insert(e);
        }
    }
    if let Some(e) = first {
        return Err(e);
    }
    if interrupted.load(Ordering::Relaxed) {
        return Err(RestoreError::Interrupted);
    }
    Ok(())
}

/// The link `pg_tblspc/<oid>` or `pg_wal` in the data directory to the place chosen for it.
fn link_place(places: &Places, rel: &str) -> Option<PathBuf> {
    if rel == "pg_wal" {
        return places.waldir.as_ref().map(|w| w.dir.clone());
    }
    tablespace_link_oid(rel).and_then(|oid| places.tablespaces.get(&oid).map(|p| p.dir.clone()))
}

/// A directory the restore makes, or a link to the place chosen for a tablespace or
/// `--waldir`.
enum Dir {
    Make(PathBuf),
    /// The link at `at` to `to`, the place it stands for (made 0700 too).
    Link {
        at: PathBuf,
        to: PathBuf,
    },
}

/// What the restore creates before any data is written, decided without touching the disk:
/// the directories and links in manifest order (every parent before its children), and the
/// files (created empty at their size, with their mode).
struct Skeleton {
    dirs: Vec<Dir>,
    files: Vec<(PathBuf, u64, u32)>,
    /// `pg_wal/archive_status`, where PostgreSQL marks segments ready for archiving.
    archive_status: PathBuf,
}

fn skeleton(manifest: &BackupManifest, places: &Places) -> Skeleton {
    let root = &places.root.dir;
    let dir = |rel: &str| match link_place(places, rel) {
        Some(to) => Dir::Link {
            at: root.join(rel),
            to,
        },
        None => Dir::Make(places.destination(rel)),
    };
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    let mut wal_seen = false;
    for entry in restored_entries(manifest) {
        let rel = entry.path.as_str();
        if entry.kind == EntryKind::File {
            files.push((places.destination(rel), entry.size, file_mode(entry.mode)));
            continue;
        }
        // A link recorded by an older backup is only ever `pg_wal` (validated): a directory.
        wal_seen |= rel == "pg_wal";
        dirs.push(dir(rel));
    }
    if !wal_seen {
        dirs.push(dir("pg_wal"));
    }
    Skeleton {
        dirs,
        files,
        archive_status: places.destination("pg_wal/archive_status"),
    }
}

/// Make the directories and links of `skeleton`, each 0700 and given to `owner`, on a
/// blocking thread.
fn create_directories(skeleton: &Skeleton, owner: Owner) -> Result<(), RestoreError> {
    let io = |p: &Path, e| RestoreError::io(p, e);
    for dir in &skeleton.dirs {
        let made = match dir {
            Dir::Link { at, to } => {
                std::os::unix::fs::symlink(to, at).map_err(|e| io(at, e))?;
                owner.apply_path(at).map_err(|e| io(at, e))?;
                to
            }
            Dir::Make(at) => {
                std::fs::DirBuilder::new()
                    .mode(DIR_MODE)
                    .create(at)
                    .map_err(|e| io(at, e))?;
                at
            }
        };
        std::fs::set_permissions(made, std::fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| io(made, e))?;
        owner.apply_path(made).map_err(|e| io(made, e))?;
    }
    let status = &skeleton.archive_status;
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(status) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(status, e)),
        Err(_) => {}
        Ok(()) => owner.apply_path(status).map_err(|e| io(status, e))?,
    }
    Ok(())
}

async fn restore_into(
    storage: Arc<dyn Storage>,
    manifest: &BackupManifest,
    mut lists: BlockLists,
    opts: &RestoreOptions,
    places: &Arc<Places>,
) -> Result<RestoreReport, RestoreError> {
    let root = places.root.dir.clone();

    // Directories and links first, then the files (empty, at their final size) in parallel:
    // creating an inode is slow enough on some filesystems (0.5 ms measured here) that a
    // thousand files in a row cost more than writing their data.
    let skeleton = skeleton(manifest, places);
    let owner = opts.owner;
    let files = {
        let marker = marker_text(manifest);
        blocking("directory creation task", move || {
            write_new(&root.join(MARKER), marker.as_bytes(), owner)?;
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(DIR_MODE))
                .map_err(|e| RestoreError::io(&root, e))?;
            owner
                .apply_path(&root)
                .map_err(|e| RestoreError::io(&root, e))?;
            create_directories(&skeleton, owner)?;
            Ok(skeleton.files)
        })
        .await?
    };
    let parallelism = opts.parallelism.max(1);
    let batch = files.len().div_ceil(parallelism * 2).max(1);
    let batches: Vec<Vec<_>> = files.chunks(batch).map(<[_]>::to_vec).collect();
    run_all(batches, parallelism * 2, &opts.interrupted, |batch| {
        blocking("file creation task", move || create_files(&batch, owner))
    })
    .await?;
    debug!("directories and files created");
    lists.keep_in(storage.as_ref(), &places.root.dir).await?;
    // Every window planned before the first is written: a plan that cannot be made is found
    // before any data is.
    let total = planned_bytes(manifest, &lists, places, None, opts.plan_window)?;
    opts.progress.set_total(total);
    write_windows(storage, manifest, &lists, places, None, opts).await?;
    finish(manifest, opts, places).await?;
    Ok(RestoreReport {
        files: manifest
            .files
            .iter()
            .filter(|f| f.kind == EntryKind::File)
            .count(),
        bytes: manifest.size_bytes,
        delta: None,
    })
}

/// What the marker of an unfinished restore says: the backup, and the cluster a `--delta` run
/// may finish it for once `pg_control` is gone.
pub(crate) fn marker_text(manifest: &BackupManifest) -> String {
    format!(
        "{}\nsystem_identifier {}\n",
        manifest.backup_id, manifest.system_identifier
    )
}

/// The cluster a marker written by [`marker_text`] names, if it names one.
pub(crate) fn marker_system_identifier(marker: &str) -> Option<u64> {
    marker
        .lines()
        .find_map(|l| l.strip_prefix("system_identifier "))
        .and_then(|n| n.trim().parse().ok())
}

/// Fetch, decode and write every chunk the restore writes (but the relation blocks a delta
/// restore found `unchanged`), one window of files at a time.
pub(crate) async fn write_windows(
    storage: Arc<dyn Storage>,
    manifest: &BackupManifest,
    lists: &BlockLists,
    places: &Places,
    unchanged: Option<&crate::delta::Unchanged>,
    opts: &RestoreOptions,
) -> Result<(), RestoreError> {
    // One for the whole restore: a file system found to refuse O_DIRECT is not tried again.
    let shared = SharedWrites::new(opts.direct_io);
    let windows = windows(manifest, lists, opts.plan_window);
    let of = windows.len();
    for (n, window) in windows.iter().enumerate() {
        debug!(
            window = n + 1,
            of,
            files = window.files.len(),
            "writing a window of files"
        );
        let entries = lists.entries(manifest, window.files.clone())?;
        let plan = plan_writes(&entries, &manifest.bundle, places, unchanged)?;
        write_data(storage.clone(), plan, &shared, opts).await?;
    }
    Ok(())
}

/// Bytes [`write_windows`] writes; planning every window first also finds a manifest whose
/// plan cannot be made before anything is written.
pub(crate) fn planned_bytes(
    manifest: &BackupManifest,
    lists: &BlockLists,
    places: &Places,
    unchanged: Option<&crate::delta::Unchanged>,
    window: usize,
) -> Result<u64, RestoreError> {
    let windows = windows(manifest, lists, window);
    windows.iter().try_fold(0u64, |sum, w| {
        let entries = lists.entries(manifest, w.files.clone())?;
        let plan = plan_writes(&entries, &manifest.bundle, places, unchanged)?;
        Ok(sum.saturating_add(plan.bytes()))
    })
}

/// Fetch, decode and write every chunk of `plan`, `transfers` groups at a time.
async fn write_data(
    storage: Arc<dyn Storage>,
    plan: WritePlan<'_>,
    shared: &Arc<SharedWrites>,
    opts: &RestoreOptions,
) -> Result<(), RestoreError> {
    let groups = write_groups(&plan, opts.transfers.max(1));
    // More reads than cores: a task waiting on a read or a flush leaves the cores busy.
    run_all(groups, opts.transfers.max(1), &opts.interrupted, |group| {
        let (storage, shared, progress) = (storage.clone(), shared.clone(), opts.progress.clone());
        async move {
            let bytes = fetch_group(storage.as_ref(), &group).await?;
            let ids = storage.chunk_ids();
            blocking("write task", move || {
                write_group(&group, &ids, &bytes, &shared, progress.as_ref())
            })
            .await
        }
    })
    .await?;
    debug!("all files written");
    Ok(())
}

/// Write the recovery settings, make everything durable, then publish `pg_control` and
/// remove the marker: until then the directory cannot start.
pub(crate) async fn finish(
    manifest: &BackupManifest,
    opts: &RestoreOptions,
    places: &Arc<Places>,
) -> Result<(), RestoreError> {
    let root = places.root.dir.clone();
    let owner = opts.owner;
    let recovery = recovery_files(manifest, opts, places);
    {
        let root = root.clone();
        blocking("recovery file task", move || {
            write_recovery_files(&root, &recovery, owner)
        })
        .await?;
    }

    // fsync exactly what was written (a syncfs would also flush every other writer's dirty
    // data on the filesystem), then publish pg_control and sync its directory.
    let mut written: Vec<PathBuf> = manifest
        .files
        .iter()
        .map(|f| places.destination(&f.path))
        .collect();
    written.extend(
        [
            "backup_label",
            "tablespace_map",
            "recovery.signal",
            "postgresql.auto.conf",
            "pg_tblspc",
        ]
        .map(|f| root.join(f)),
    );
    written.push(places.destination("pg_wal/archive_status"));
    written.push(places.destination("pg_wal"));
    for place in places.tablespaces.values().chain(places.waldir.iter()) {
        written.extend(place.dir.parent().map(Path::to_path_buf));
    }
    written.push(root.clone());
    run_all(
        written,
        opts.parallelism.max(1) * 4,
        &opts.interrupted,
        |path| blocking("fsync task", move || fsync_path(&path)),
    )
    .await?;
    {
        let places = places.clone();
        blocking("file system sync task", move || places.sync_file_systems()).await?;
    }
    debug!("data directory durable");
    blocking("pg_control publication task", move || {
        let io = |p: &Path, e| RestoreError::io(p, e);
        let control = root.join(CONTROL_FILE);
        std::fs::rename(root.join(CONTROL_PARTIAL), &control).map_err(|e| io(&control, e))?;
        std::fs::remove_file(root.join(MARKER)).map_err(|e| io(&root.join(MARKER), e))?;
        fsync_path(&root.join("global"))?;
        fsync_path(&root)
    })
    .await
}

/// Damage found while writing: a storage-level corruption of `key`, not a refusal (something
/// may already be written, and the clean-up removes it).
fn corrupt(key: &str, reason: String) -> RestoreError {
    RestoreError::Storage(storage::StorageError::Corrupt {
        key: key.to_string(),
        reason,
    })
}

pub(crate) fn decode_chunk(
    pack_key: &str,
    chunk: &ChunkRef,
    ids: &storage::ChunkIds,
    framed: &[u8],
) -> Result<Vec<u8>, RestoreError> {
    Ok(storage::pack::open_chunk(
        pack_key,
        framed,
        ids,
        &chunk.hash,
        chunk.len,
    )?)
}

pub(crate) fn create_files(
    files: &[(PathBuf, u64, u32)],
    owner: Owner,
) -> Result<(), RestoreError> {
    for (path, size, mode) in files {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(*mode)
            .custom_flags(no_follow())
            .open(path)
            .map_err(|e| RestoreError::io(path, e))?;
        file.set_len(*size).map_err(|e| RestoreError::io(path, e))?;
        // The umask may have taken bits the backup recorded.
        file.set_permissions(std::fs::Permissions::from_mode(*mode))
            .map_err(|e| RestoreError::io(path, e))?;
        owner.apply(&file).map_err(|e| RestoreError::io(path, e))?;
    }
    Ok(())
}

/// Write a new private file (never an existing one, never through a link), given to `owner`.
fn write_new(path: &Path, bytes: &[u8], owner: Owner) -> Result<(), RestoreError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(no_follow())
        .open(path)
        .map_err(|e| RestoreError::io(path, e))?;
    owner.apply(&file).map_err(|e| RestoreError::io(path, e))?;
    file.write_all(bytes).map_err(|e| RestoreError::io(path, e))
}

/// fsync a file or directory that may not exist (tablespace_map is optional).
pub(crate) fn fsync_path(path: &Path) -> Result<(), RestoreError> {
    // Non-blocking: a FIFO put in a file's place fails the fsync instead of hanging the open.
    let open = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path);
    match open {
        Ok(file) => file.sync_all().map_err(|e| RestoreError::io(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(RestoreError::io(path, e)),
    }
}

/// `range` of a chunk's plaintext belongs at `offset` of `path`.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    path: Arc<PathBuf>,
    offset: u64,
    range: std::ops::Range<usize>,
}

/// Every write the restore makes, in pack order (by pack, then place in the pack): neighbours
/// are read with one request, and a chunk used twice (by two places) is fetched and decoded
/// once. One entry of 40 bytes per write, referring to the manifest's chunk rather than a copy.
pub(crate) struct WritePlan<'a> {
    writes: Vec<(&'a ChunkRef, Target)>,
}

impl WritePlan<'_> {
    /// Bytes it writes.
    pub(crate) fn bytes(&self) -> u64 {
        bytes_of(&self.writes)
    }
}

/// Bytes `writes` write, saturating: the lengths come from the manifest.
fn bytes_of(writes: &[(&ChunkRef, Target)]) -> u64 {
    writes
        .iter()
        .fold(0u64, |sum, (_, t)| sum.saturating_add(t.range.len() as u64))
}

/// The manifest's entries the restore puts back: all but `standby.signal`, since the restore
/// decides how the server recovers (it writes `recovery.signal`).
pub(crate) fn restored_entries(manifest: &BackupManifest) -> impl Iterator<Item = &FileEntry> {
    restored(&manifest.files)
}

/// [`restored_entries`], each with its place in the manifest's files.
pub(crate) fn restored_indexed(
    manifest: &BackupManifest,
) -> impl Iterator<Item = (usize, &FileEntry)> {
    let files = manifest.files.iter().enumerate();
    files.filter(|(_, e)| is_restored(e))
}

fn restored(entries: &[FileEntry]) -> impl Iterator<Item = &FileEntry> {
    entries.iter().filter(|e| is_restored(e))
}

fn is_restored(entry: &FileEntry) -> bool {
    entry.path != "standby.signal"
}

/// Files of the manifest planned and written together: their relation blocks and their
/// pieces of the bundle of small files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    files: std::ops::Range<usize>,
}

/// The manifest's files in windows of at least `writes` writes each (the last may hold
/// fewer; a small file counts as one), cut between files; always one window at least.
fn windows(manifest: &BackupManifest, lists: &BlockLists, writes: usize) -> Vec<Window> {
    let mut windows = Vec::new();
    let (mut start, mut count) = (0, 0usize);
    for (i, entry) in manifest.files.iter().enumerate() {
        let small = usize::from(entry.bundle_offset.is_some());
        count = count
            .saturating_add(lists.count(manifest, i))
            .saturating_add(small);
        if count >= writes.max(1) {
            windows.push(Window {
                files: start..i + 1,
            });
            (start, count) = (i + 1, 0);
        }
    }
    if start < manifest.files.len() || windows.is_empty() {
        windows.push(Window {
            files: start..manifest.files.len(),
        });
    }
    windows
}

/// Every chunk the files `entries` (a window, with their blocks) write, by pack; `bundle` is
/// the manifest's. `unchanged` holds, by destination, the relation blocks a delta restore
/// found already in place: those are not fetched.
fn plan_writes<'a>(
    entries: &'a [FileEntry],
    bundle: &'a [ChunkRef],
    places: &Places,
    unchanged: Option<&crate::delta::Unchanged>,
) -> Result<WritePlan<'a>, RestoreError> {
    let mut writes = Vec::new();
    let mut add = |chunk, target| writes.push((chunk, target));
    for entry in restored(entries).filter(|e| !e.blocks.is_empty()) {
        let path = Arc::new(places.destination(&entry.path));
        let kept = unchanged.and_then(|u| u.get(path.as_ref()));
        let mut offset = 0u64;
        for (index, chunk) in entry.blocks.iter().enumerate() {
            if kept.is_some_and(|k| k.get(index).copied().unwrap_or(false)) {
                offset = offset.saturating_add(chunk.len);
                continue;
            }
            add(
                chunk,
                Target {
                    path: path.clone(),
                    offset,
                    range: 0..chunk.len as usize,
                },
            );
            offset = offset.saturating_add(chunk.len);
        }
    }
    cut_bundle(bundle, entries, places, &mut add)?;
    writes.sort_unstable_by_key(|(c, _)| (c.pack, c.offset, c.hash, c.len, c.stored));
    Ok(WritePlan { writes })
}

/// The small files among `entries`: the bundle stream cut back into files at their recorded
/// offsets.
fn cut_bundle<'a>(
    bundle: &'a [ChunkRef],
    entries: &[FileEntry],
    places: &Places,
    add: &mut impl FnMut(&'a ChunkRef, Target),
) -> Result<(), RestoreError> {
    let mut small: Vec<(u64, u64, Arc<PathBuf>)> = Vec::new();
    for f in restored(entries) {
        if let Some(start) = f.bundle_offset {
            small.push((start, f.size, Arc::new(places.destination(&f.path))));
        }
    }
    small.sort_by_key(|f| f.0);
    let mut stream_offset = 0u64;
    let mut first = 0;
    for chunk in bundle {
        // Saturating: the lengths and offsets come from the manifest.
        let chunk_end = stream_offset.saturating_add(chunk.len);
        let mut i = first;
        while i < small.len() && small[i].0 < chunk_end {
            let (start, size, path) = &small[i];
            let end = start.saturating_add(*size);
            let (from, to) = ((*start).max(stream_offset), end.min(chunk_end));
            if to > from {
                let range = (from - stream_offset) as usize..(to - stream_offset) as usize;
                add(
                    chunk,
                    Target {
                        path: path.clone(),
                        offset: from - start,
                        range,
                    },
                );
            }
            if end <= chunk_end {
                first = i + 1;
            }
            i += 1;
        }
        stream_offset = chunk_end;
    }
    if let Some((_, _, path)) = small.iter().skip(first).find(|f| f.1 > 0) {
        return Err(corrupt(
            "the manifest",
            format!(
                "the backup's bundle of small files ends before {}",
                path.display()
            ),
        ));
    }
    Ok(())
}

/// Neighbouring chunks of one pack, read with one ranged request and decoded and written by
/// one task: memory stays at a few groups in flight however large the packs are.
struct WriteGroup {
    pack_key: String,
    /// The byte range of the pack that holds the chunks.
    start: u64,
    end: u64,
    chunks: Vec<(ChunkRef, Vec<Target>)>,
}

const CHUNKS_PER_GROUP: usize = 16;

/// A group reads one range of its pack into memory: neighbours only, however far apart a
/// (forged) manifest places chunks.
const MAX_GROUP_SPAN: u64 = 64 << 20;

/// The groups of `plan`, made as they are asked for (only the groups in flight hold copies),
/// taken in turn from `lanes` stretches of the plan of about equal bytes. Groups next to each
/// other in pack order mostly write the same file, and writes to one file go one at a time
/// (the kernel's inode lock, and ours in front of it): tasks that took consecutive groups
/// waited on each other while a core stood idle. Stretches far apart write different files.
fn write_groups<'p>(
    plan: &'p WritePlan<'_>,
    lanes: usize,
) -> impl Iterator<Item = WriteGroup> + 'p {
    let mut lanes: Vec<_> = lane_bounds(&plan.writes, lanes)
        .windows(2)
        .map(|w| groups_of(&plan.writes[w[0]..w[1]]))
        .collect();
    let mut next = 0;
    std::iter::from_fn(move || {
        while !lanes.is_empty() {
            next %= lanes.len();
            if let Some(group) = lanes[next].next() {
                next += 1;
                return Some(group);
            }
            // The lane after the finished one moves into its index.
            drop(lanes.remove(next));
        }
        None
    })
}

/// Where `writes` is cut into `lanes` stretches of about equal bytes: each cut moved forward to
/// where the chunk changes, so that a chunk with several places is still decoded once.
fn lane_bounds(writes: &[(&ChunkRef, Target)], lanes: usize) -> Vec<usize> {
    // Saturating: a cut in the wrong place only costs speed.
    let share = bytes_of(writes) / lanes.max(1) as u64;
    let mut bounds = vec![0];
    let mut bytes = 0u64;
    for (i, (chunk, target)) in writes.iter().enumerate() {
        let cut = bytes >= share.saturating_mul(bounds.len() as u64) && bounds.len() < lanes.max(1);
        if i > 0 && cut && writes[i - 1].0 != *chunk {
            bounds.push(i);
        }
        bytes = bytes.saturating_add(target.range.len() as u64);
    }
    bounds.push(writes.len());
    bounds
}

/// The groups of one stretch of the plan, in its order.
fn groups_of<'p>(writes: &'p [(&ChunkRef, Target)]) -> impl Iterator<Item = WriteGroup> + 'p {
    let mut writes = writes.iter().peekable();
    std::iter::from_fn(move || {
        let &(first, _) = writes.peek()?;
        let (pack, start) = (first.pack, first.offset);
        let mut end = start;
        let mut chunks: Vec<(ChunkRef, Vec<Target>)> = Vec::new();
        while let Some((next, target)) = writes.peek() {
            // Only the very same reference is decoded once: two that share a place but name
            // different chunks (a forged manifest) are each checked against their own hash.
            if let Some((last, targets)) = chunks.last_mut()
                && last == *next
            {
                targets.push(target.clone());
                writes.next();
                continue;
            }
            let next_end = next.offset.saturating_add(next.stored);
            let full =
                chunks.len() == CHUNKS_PER_GROUP || next_end.saturating_sub(start) > MAX_GROUP_SPAN;
            if next.pack != pack || (!chunks.is_empty() && full) {
                break;
            }
            end = end.max(next_end);
            chunks.push((**next, vec![target.clone()]));
            writes.next();
        }
        Some(WriteGroup {
            pack_key: layout::pack_key(&pack),
            start,
            end,
            chunks,
        })
    })
}

async fn fetch_group(storage: &dyn Storage, group: &WriteGroup) -> Result<Vec<u8>, RestoreError> {
    let bytes = storage
        .get_range(&group.pack_key, group.start..group.end)
        .await?;
    if (bytes.len() as u64) < group.end - group.start {
        return Err(RestoreError::Storage(storage::StorageError::Corrupt {
            key: group.pack_key.clone(),
            reason: "the pack is shorter than the manifest says".into(),
        }));
    }
    Ok(bytes)
}

/// Decode one chunk at a time and write it to each of its places: one decoded chunk per task
/// (and its aligned copy for a direct write) is all the plaintext held in memory.
fn write_group(
    group: &WriteGroup,
    ids: &storage::ChunkIds,
    bytes: &[u8],
    shared: &SharedWrites,
    progress: &dyn Progress,
) -> Result<(), RestoreError> {
    let mut files = TaskFiles::new(shared);
    for (chunk, targets) in &group.chunks {
        // The manifest is checksummed, but a slice of its numbers must still never panic.
        let framed = usize::try_from(chunk.offset - group.start)
            .ok()
            .and_then(|from| bytes.get(from..from.checked_add(chunk.stored as usize)?))
            .ok_or_else(|| {
                corrupt(
                    &group.pack_key,
                    format!("chunk {} lies outside what was read", chunk.hash),
                )
            })?;
        let plain = decode_chunk(&group.pack_key, chunk, ids, framed)?;
        for target in targets {
            let slice = plain.get(target.range.clone()).ok_or_else(|| {
                corrupt(
                    &group.pack_key,
                    format!("chunk {} is shorter than the manifest says", chunk.hash),
                )
            })?;
            files.write(&target.path, target.offset, slice)?;
            progress.advance(slice.len() as u64);
        }
    }
    Ok(())
}

/// A string value for PostgreSQL's configuration files (recovery settings, a drill's
/// settings): inside single quotes, `'` doubled and
/// `\` escaped (the parser reads backslash escapes in quoted values).
pub fn quote(value: &str) -> String {
    let mut quoted = String::from("'");
    for c in value.chars() {
        match c {
            '\\' => quoted.push_str("\\\\"),
            '\'' => quoted.push_str("''"),
            '\n' => quoted.push_str("\\n"),
            '\r' => quoted.push_str("\\r"),
            c => quoted.push(c),
        }
    }
    quoted.push('\'');
    quoted
}

/// The recovery files, decided: `backup_label`, `tablespace_map` (with tablespaces) and an
/// empty `recovery.signal` are new; the settings are appended to `postgresql.auto.conf`.
struct RecoveryFiles {
    backup_label: String,
    tablespace_map: Option<String>,
    settings: String,
}

fn recovery_files(
    manifest: &BackupManifest,
    opts: &RestoreOptions,
    places: &Places,
) -> RecoveryFiles {
    let mut settings = format!(
        "\n# Added by lifeline restore of {} at {}\nrestore_command = {}\n",
        manifest.backup_id,
        jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ"),
        quote(&opts.restore_command)
    );
    // Every recovery setting is written, not only the ones this restore needs: the backed-up
    // server's own postgresql.auto.conf may carry targets from an earlier restore (a second
    // target makes PostgreSQL refuse to start; an old 'immediate' would stop recovery at the
    // backup), a replay delay, or commands that act on production's archive. The last line
    // of a setting wins, so the target chosen here comes after the cleared ones.
    settings.push_str(
        "recovery_target = ''\nrecovery_target_lsn = ''\nrecovery_target_name = ''\n\
         recovery_target_time = ''\nrecovery_target_xid = ''\nrecovery_target_inclusive = on\n\
         recovery_min_apply_delay = 0\nrecovery_end_command = ''\narchive_cleanup_command = ''\n\
         recovery_target_action = 'promote'\n",
    );
    let timeline = quote(&opts.timeline.setting());
    match &opts.target {
        RecoveryTarget::Immediate => {
            settings
                .push_str("recovery_target = 'immediate'\nrecovery_target_timeline = 'current'\n");
        }
        RecoveryTarget::Time(t) => {
            settings.push_str(&format!(
                "recovery_target_time = {}\nrecovery_target_timeline = {timeline}\n",
                quote(&t.strftime("%Y-%m-%d %H:%M:%S%.6f+00").to_string())
            ));
        }
        RecoveryTarget::EndOfArchive => {
            settings.push_str(&format!("recovery_target_timeline = {timeline}\n"));
        }
    }
    if opts.archive_mode == ArchiveMode::Off {
        // A copy started for a test must never archive into production's repository.
        settings.push_str(
            "# restored with --archive-mode off: remove this line once this server is the primary\narchive_mode = 'off'\n",
        );
    }
    RecoveryFiles {
        backup_label: manifest.backup_label.clone(),
        tablespace_map: places.tablespace_map(),
        settings,
    }
}

/// Write `files` into the data directory `root`, given to `owner`, on a blocking thread.
fn write_recovery_files(
    root: &Path,
    files: &RecoveryFiles,
    owner: Owner,
) -> Result<(), RestoreError> {
    write_new(
        &root.join("backup_label"),
        files.backup_label.as_bytes(),
        owner,
    )?;
    if let Some(map) = &files.tablespace_map {
        write_new(&root.join("tablespace_map"), map.as_bytes(), owner)?;
    }
    write_new(&root.join("recovery.signal"), b"", owner)?;
    // postgresql.auto.conf is the backup's own file, restored by this run (or absent).
    let auto_conf = root.join("postgresql.auto.conf");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(no_follow())
        .open(&auto_conf)
        .map_err(|e| RestoreError::io(&auto_conf, e))?;
    owner
        .apply(&file)
        .map_err(|e| RestoreError::io(&auto_conf, e))?;
    file.write_all(files.settings.as_bytes())
        .map_err(|e| RestoreError::io(&auto_conf, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A chunk named by `hash` in the pack named by `pack`.
    fn chunk(hash: u8, len: u64, pack: u8, offset: u64) -> ChunkRef {
        ChunkRef {
            hash: storage::ChunkHash::from_bytes([hash; 32]),
            len,
            pack: storage::PackId::from_bytes([pack; 32]),
            offset,
            stored: 10,
        }
    }

    /// The places of a restore into `/r`, with no tablespace nor `--waldir`.
    fn places_at_r() -> Places {
        Places {
            root: crate::places::Place::new(PathBuf::from("/r"), true),
            tablespaces: BTreeMap::new(),
            waldir: None,
            owner: Owner::KEEP,
        }
    }

    fn file(
        path: &str,
        size: u64,
        bundle_offset: Option<u64>,
        blocks: Vec<ChunkRef>,
    ) -> storage::manifest::FileEntry {
        storage::manifest::FileEntry {
            path: path.into(),
            kind: EntryKind::File,
            mode: 0o600,
            size,
            mtime: 0,
            link_target: None,
            blocks,
            bundle_offset,
        }
    }

    #[test]
    fn the_bundle_is_cut_back_into_files_and_shared_chunks_are_fetched_once() {
        let mut manifest = testing::fixtures::base_manifest();
        // Files of 5, 0, 12 and 3 bytes in a bundle cut into chunks of 8, 8 and 4 bytes.
        manifest.files = vec![
            file("a", 5, Some(0), vec![]),
            file("empty", 0, Some(5), vec![]),
            file("b", 12, Some(5), vec![]),
            file("c", 3, Some(17), vec![]),
            file(
                "big",
                16,
                None,
                vec![chunk(b'z', 8, 1, 0), chunk(b'z', 8, 1, 0)],
            ),
        ];
        manifest.bundle = vec![
            chunk(b'x', 8, 1, 10),
            chunk(b'y', 8, 2, 0),
            chunk(b'w', 4, 2, 10),
        ];
        let places = places_at_r();
        let plan = plan_of(&manifest, &places, None, &whole(&manifest)).expect("plan");
        let groups: Vec<WriteGroup> = write_groups(&plan, 1).collect();
        let mut written: BTreeMap<String, u64> = BTreeMap::new();
        for group in &groups {
            for (_, targets) in &group.chunks {
                for t in targets {
                    *written.entry(t.path.display().to_string()).or_default() +=
                        t.range.len() as u64;
                }
            }
        }
        let expect = |p: &str| written.get(&format!("/r/{p}")).copied().unwrap_or(0);
        assert_eq!(
            (
                expect("a"),
                expect("empty"),
                expect("b"),
                expect("c"),
                expect("big")
            ),
            (5, 0, 12, 3, 16)
        );
        assert_eq!(plan.bytes(), 5 + 12 + 3 + 16);
        // One group per pack, in pack order, each in order of place in the pack; the zero block
        // used twice is one chunk with two targets.
        let order: Vec<Vec<(u8, u64, usize)>> = groups
            .iter()
            .map(|g| {
                let chunks = g.chunks.iter();
                chunks
                    .map(|(c, t)| (c.hash.as_bytes()[0], c.offset, t.len()))
                    .collect()
            })
            .collect();
        assert_eq!(
            order,
            [
                vec![(b'z', 0, 2), (b'x', 10, 2)],
                vec![(b'y', 0, 1), (b'w', 10, 2)]
            ]
        );
        assert_eq!((groups[0].start, groups[0].end), (0, 20));
        // Two references to one place that name different chunks (a forged manifest) are two
        // chunks, each decoded and checked against its own hash.
        manifest.files[4].blocks[1] = chunk(b'q', 8, 1, 0);
        let plan = plan_of(&manifest, &places, None, &whole(&manifest)).expect("plan");
        let first = write_groups(&plan, 1).next().expect("a group");
        let names: Vec<(u8, u64, usize)> = first
            .chunks
            .iter()
            .map(|(c, t)| (c.hash.as_bytes()[0], c.offset, t.len()))
            .collect();
        assert_eq!(names, [(b'q', 0, 1), (b'z', 0, 1), (b'x', 10, 2)]);
        // A bundle that ends too early is refused.
        manifest.bundle.pop();
        assert!(plan_of(&manifest, &places, None, &whole(&manifest)).is_err());
    }

    #[test]
    fn the_marker_names_the_cluster_it_was_written_for() {
        let manifest = testing::fixtures::base_manifest();
        let marker = marker_text(&manifest);
        assert_eq!(
            marker_system_identifier(&marker),
            Some(manifest.system_identifier)
        );
        // A marker from before the cluster was recorded names none.
        assert_eq!(marker_system_identifier(&manifest.backup_id), None);
    }

    #[test]
    fn lanes_take_turns_on_far_apart_files_and_write_everything_once() {
        let mut manifest = testing::fixtures::base_manifest();
        // Three files of 40 chunks of 8 bytes, each in a pack of its own; the last chunk of
        // "x" is also the first of "y" (one chunk, two places).
        let blocks = |pack: u8| -> Vec<ChunkRef> {
            (0..40u8)
                .map(|i| chunk(pack * 50 + i, 8, pack, u64::from(i) * 10))
                .collect()
        };
        let mut y = blocks(2);
        y[0] = blocks(1)[39];
        manifest.files = vec![
            file("x", 320, None, blocks(1)),
            file("y", 320, None, y),
            file("z", 320, None, blocks(3)),
        ];
        let places = places_at_r();
        let plan = plan_of(&manifest, &places, None, &whole(&manifest)).expect("plan");
        let everything = |lanes| {
            let mut writes: Vec<(String, u64, u8)> = write_groups(&plan, lanes)
                .flat_map(|g| g.chunks)
                .flat_map(|(c, targets)| {
                    let hash = c.hash.as_bytes()[0];
                    targets
                        .into_iter()
                        .map(move |t| (t.path.display().to_string(), t.offset, hash))
                })
                .collect();
            writes.sort();
            writes
        };
        let one_lane = everything(1);
        assert_eq!(one_lane.len(), 120);
        for lanes in [2, 3, 4, 7, 119, 120, 500] {
            assert_eq!(everything(lanes), one_lane, "{lanes} lanes");
            // Each chunk is decoded once: in one group, with all its places.
            let mut decoded: Vec<ChunkRef> = write_groups(&plan, lanes)
                .flat_map(|g| g.chunks.into_iter().map(|(c, _)| c))
                .collect();
            let all = decoded.len();
            decoded.sort_unstable_by_key(|c| (c.pack, c.offset, c.hash));
            decoded.dedup();
            assert_eq!((all, decoded.len()), (119, 119), "{lanes} lanes");
        }
        let empty = WritePlan { writes: Vec::new() };
        assert_eq!(write_groups(&empty, 3).count(), 0);
        // Three lanes: the first groups handed out write three different files.
        let first: Vec<String> = write_groups(&plan, 3)
            .take(3)
            .map(|g| g.chunks[0].1[0].path.display().to_string())
            .collect();
        assert_eq!(first, ["/r/x", "/r/y", "/r/z"]);
    }

    /// The writes of `window` of a manifest that holds its blocks.
    fn plan_of<'a>(
        manifest: &'a BackupManifest,
        places: &Places,
        unchanged: Option<&crate::delta::Unchanged>,
        window: &Window,
    ) -> Result<WritePlan<'a>, RestoreError> {
        let entries = &manifest.files[window.files.clone()];
        plan_writes(entries, &manifest.bundle, places, unchanged)
    }

    /// The whole manifest in one window.
    fn whole(manifest: &BackupManifest) -> Window {
        let mut all = windows(manifest, &BlockLists::whole(), usize::MAX);
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    #[test]
    fn windows_end_with_files_and_together_write_what_one_plan_writes() {
        let mut manifest = testing::fixtures::base_manifest();
        assert_eq!(
            windows(&manifest, &BlockLists::whole(), 1),
            [whole(&manifest)]
        );
        let blocks = |pack: u8, n: u8| -> Vec<ChunkRef> {
            (0..n)
                .map(|i| chunk(pack * 50 + i, 8, pack, u64::from(i) * 10))
                .collect()
        };
        // Relation files of 40, 3 and 40 chunks around small files in a bundle of two chunks.
        manifest.files = vec![
            file("a", 5, Some(0), vec![]),
            file("x", 320, None, blocks(1, 40)),
            file("b", 11, Some(5), vec![]),
            file("y", 24, None, blocks(2, 3)),
            file("z", 320, None, blocks(3, 40)),
            file("c", 0, Some(16), vec![]),
        ];
        manifest.bundle = vec![chunk(b'x', 8, 4, 0), chunk(b'y', 8, 4, 10)];
        let places = places_at_r();
        // A delta restore found the first ten blocks of x and all of z in place.
        let mut found = crate::delta::Unchanged::new();
        found.insert("/r/x".into(), (0..40).map(|i| i < 10).collect());
        found.insert("/r/z".into(), vec![true; 40]);
        let writes = |windows: &[Window], unchanged: Option<&crate::delta::Unchanged>| {
            let mut writes: Vec<(String, u64, usize, usize, u8)> = Vec::new();
            for window in windows {
                let plan = plan_of(&manifest, &places, unchanged, window).expect("plan");
                writes.extend(plan.writes.iter().map(|(c, t)| {
                    let path = t.path.display().to_string();
                    (
                        path,
                        t.offset,
                        t.range.start,
                        t.range.end,
                        c.hash.as_bytes()[0],
                    )
                }));
            }
            writes.sort();
            writes
        };
        let everything = writes(&[whole(&manifest)], None);
        assert_eq!(everything.len(), 40 + 3 + 40 + 3);
        let changed = writes(&[whole(&manifest)], Some(&found));
        assert_eq!(changed.len(), 30 + 3 + 3);
        // A small file counts as one write: 1, 40, 1, 3, 40 and 1.
        for (size, expected) in [
            (1, vec![(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]),
            (40, vec![(0, 2), (2, 5), (5, 6)]),
            (43, vec![(0, 4), (4, 6)]),
            (46, vec![(0, 5), (5, 6)]),
            (86, vec![(0, 6)]),
            (87, vec![(0, 6)]),
        ] {
            let cut = windows(&manifest, &BlockLists::whole(), size);
            let files: Vec<_> = cut.iter().map(|w| (w.files.start, w.files.end)).collect();
            assert_eq!(files, expected, "windows of {size}");
            // Each window writes its own files only, small ones included.
            for window in &cut {
                let plan = plan_of(&manifest, &places, None, window).expect("plan");
                let own: Vec<String> = manifest.files[window.files.clone()]
                    .iter()
                    .map(|f| format!("/r/{}", f.path))
                    .collect();
                for (_, t) in &plan.writes {
                    let path = t.path.display().to_string();
                    assert!(own.contains(&path), "{path} in {window:?}");
                }
            }
            assert_eq!(writes(&cut, None), everything, "windows of {size}");
            assert_eq!(writes(&cut, Some(&found)), changed, "windows of {size}");
            let bytes = planned_bytes(&manifest, &BlockLists::whole(), &places, Some(&found), size)
                .expect("bytes");
            assert_eq!(bytes, 30 * 8 + 3 * 8 + 16, "windows of {size}");
        }
    }

    #[test]
    fn configuration_values_survive_quotes_and_backslashes() {
        assert_eq!(quote(r"it's a \ path"), r"'it''s a \\ path'");
        assert_eq!(quote("two\nlines"), r"'two\nlines'");
    }
}
