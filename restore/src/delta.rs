//! Delta restore (`--delta`): restore onto a stopped data directory of the same cluster (an
//! old primary, a replica that fell behind, a copy that was damaged), rewriting only what
//! differs from the backup.
//!
//! The directory must belong to the backup's cluster (the system identifier in
//! `global/pg_control`, or in the marker an unfinished restore left) and no server may run on
//! it (`postmaster.pid` absent). Tablespaces and a `pg_wal` elsewhere go where the operator
//! maps them (`--tablespace-map`, `--waldir`): such a directory is reused only where the data
//! directory's own link leads and no running server's does, and otherwise must be empty or
//! new. Before anything changes, the marker is made durable and
//! `global/pg_control` removed, so that a half-restored directory never starts; a delta
//! restore that fails or is stopped leaves it so, and running it again finishes it. Then what
//! the backup does not hold is removed (links unlinked, never followed), missing directories
//! and files are created, every relation block is hashed and compared with the manifest's
//! chunk id (keyed in an encrypted repository), and only the blocks that differ are fetched
//! and written; small files are rewritten from the bundle. A file with a second hard link
//! (`pg_upgrade --link`) is replaced, never written through. `pg_control` comes last, as in
//! a full restore.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use storage::manifest::{BackupManifest, ChunkRef, EntryKind};
use storage::private::Owner;
use storage::{ChunkIds, Storage};
use tracing::debug;

use crate::RestoreError;
use crate::block_lists::BlockLists;
use crate::error::blocking;
use crate::mounts::mount_root;
use crate::opening::{no_follow, no_follow_nonblocking, read_small};
use crate::places::{CONTROL_FILE, CONTROL_PARTIAL, Place, Places, split_tablespace};
use crate::restore_base::{
    MARKER, RestoreOptions, RestoreReport, create_files, fsync_path, marker_text, restored_indexed,
    run_all,
};
use crate::validate::{DIR_MODE, file_mode};

/// By destination: which of a relation file's blocks already hold the backup's content.
pub(crate) type Unchanged = HashMap<PathBuf, Vec<bool>>;

/// What a delta restore found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeltaReport {
    /// Bytes of relation blocks already in place: neither fetched nor written.
    pub kept_bytes: u64,
    /// Bytes fetched and written.
    pub written_bytes: u64,
    /// Files, directories and links removed because the backup does not hold them.
    pub removed: usize,
    /// Files created: missing, of another kind, or with a second hard link.
    pub created: usize,
}

/// The marker while it is written, and `pg_control` moved aside until the walk removes it.
const MARKER_PARTIAL: &str = ".lifeline-restore-incomplete.partial";
const CONTROL_ASIDE: &str = "global/pg_control.lifeline-old";

/// The larger blocks a (forged) manifest claims are not read: they cannot match.
const MAX_BLOCK: u64 = 16 << 20;

/// Blocks hashed by one task: big files are shared between the cores.
const BLOCKS_PER_UNIT: usize = 32;

/// Comparison tasks per core: while one task waits for its blocks to be read, another hashes.
/// At scale 200 on two cores, two tasks kept them 150 % busy, four 175 %, eight no more
/// (`benches/README.md`, "Delta restore: two comparisons per core").
const COMPARISONS_PER_CORE: usize = 2;

/// A stopped data directory of the backup's cluster and its tablespaces' directories,
/// checked and claimed (a second restore into them is refused until this one ends); nothing
/// written yet.
pub(crate) struct Existing {
    places: Places,
}

impl Existing {
    /// Where the tablespaces go, by oid.
    pub(crate) fn tablespaces(&self) -> Vec<(u32, PathBuf)> {
        self.places
            .tablespaces
            .iter()
            .map(|(oid, p)| (*oid, p.dir.clone()))
            .collect()
    }

    /// Where `pg_wal` goes when it is not inside the data directory.
    pub(crate) fn waldir(&self) -> Option<PathBuf> {
        self.places.waldir.as_ref().map(|p| p.dir.clone())
    }
}

/// The directory `--delta` may reuse, or `None` when it is missing or empty (then the restore
/// is a full one). Everything is checked before anything is written.
pub(crate) fn existing_cluster(
    manifest: &BackupManifest,
    opts: &RestoreOptions,
) -> Result<Option<Existing>, RestoreError> {
    let root = crate::places::normal(&opts.data_dir, "--data-dir")?;
    let refuse = |why: String| {
        Err(RestoreError::Refused(format!(
            "--delta: {why}; nothing was written"
        )))
    };
    let meta = match std::fs::metadata(&root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RestoreError::io(&root, e)),
    };
    if !meta.is_dir() {
        return refuse(format!("{} is not a directory", root.display()));
    }
    let mut entries = std::fs::read_dir(&root).map_err(|e| RestoreError::io(&root, e))?;
    if entries.next().is_none() {
        return Ok(None);
    }
    // Before any look inside: what is checked must stay so until the restore ends.
    let claim = crate::places::claim_directory(&root, "the data directory", true)?;
    if let Some(owner) = swappable_by_another_user(&root) {
        return refuse(format!(
            "run as root, it would change files by name in {}, which {owner} can replace \
             meanwhile: run it as the data directory's owner (runuser -u {owner} -- lifeline ...)",
            root.display()
        ));
    }
    if server_may_run(&root) {
        return refuse(format!(
            "a server may be running on {} (postmaster.pid exists): stop it first (pg_ctl stop). \
             If it crashed and `pg_ctl status -D {}` says no server is running, remove \
             postmaster.pid and restore again",
            root.display(),
            root.display()
        ));
    }
    if let Some(pid) = postgres_working_in(&root) {
        return refuse(format!(
            "a PostgreSQL process (pid {pid}) works in {}: a server runs on it although its \
             postmaster.pid is gone. Put postmaster.pid back and stop the server (pg_ctl stop), \
             or stop it by its pid (kill -INT {pid}), then restore again",
            root.display()
        ));
    }
    let pg_wal = root.join("pg_wal");
    let waiting = unarchived_wal(&pg_wal);
    if let Some(first) = waiting.first()
        && !opts.discard_unarchived_wal
    {
        return refuse(format!(
            "{} WAL file(s) in {} were never archived (e.g. {first}, marked .ready), and a delta \
             restore removes pg_wal: they may hold the last commits. Archive each (`lifeline wal \
             push {}/pg_wal/NAME`) or copy it elsewhere, then remove its .ready file; or, to give \
             them up (as after a failover to another server), restore again with \
             --discard-unarchived-wal",
            waiting.len(),
            pg_wal.display(),
            root.display()
        ));
    }
    // pg_control is read and later moved aside by its path: through a link named `global`,
    // that would be another directory's.
    if let Ok(global) = std::fs::symlink_metadata(root.join("global"))
        && !global.is_dir()
    {
        return refuse(format!(
            "{} is not a directory (a link?): a delta restore follows no link in a data \
             directory; restore into an empty or new directory instead",
            root.join("global").display()
        ));
    }
    // pg_control's first 20 bytes: the cluster (8) and the state its server ended in (at 16).
    let control = read_small(&root.join(CONTROL_FILE), 20)?;
    if let Some(short) = control.as_deref().filter(|c| c.len() < 20) {
        return refuse(format!(
            "{} is damaged ({} bytes): a delta restore cannot tell which cluster the directory \
             belongs to or how its server stopped, and PostgreSQL cannot start on it; restore \
             into an empty or new directory instead (copy its pg_wal aside first if it may hold \
             commits never archived)",
            root.join(CONTROL_FILE).display(),
            short.len()
        ));
    }
    let Some(found) = system_identifier(&root, control.as_deref())? else {
        return refuse(format!(
            "{} is not a PostgreSQL data directory (no global/pg_control) nor one an unfinished \
             lifeline restore left: restore into an empty or new directory instead",
            root.display()
        ));
    };
    if found != manifest.system_identifier {
        return refuse(format!(
            "{} belongs to cluster {found}, and backup {} to cluster {}: a delta restore reuses \
             only a directory of the backup's own cluster; restore into an empty or new \
             directory instead",
            root.display(),
            manifest.backup_id,
            manifest.system_identifier
        ));
    }
    if !opts.discard_unarchived_wal
        && let Some(state) = unclean_shutdown(&root, control.as_deref())
    {
        return refuse(format!(
            "the server on {} did not shut down cleanly (pg_control says {state}): its pg_wal may \
             hold commits after the last archived segment, found nowhere else, and a delta \
             restore removes pg_wal. Start it and stop it cleanly first, with archive_mode on \
             (its last WAL is then archived), then restore again; or, once its pg_wal is copied \
             elsewhere, or if another server took over and those commits are to be given up, \
             restore again with --discard-unarchived-wal",
            root.display()
        ));
    }
    let tablespaces = crate::places::delta_tablespace_places(manifest, &opts.tablespaces, &root)?;
    let waldir = crate::places::delta_waldir(&root, opts.waldir.as_deref())?;
    for place in tablespaces.values().chain(&waldir) {
        // A directory to be made: the one it is made in, which its owner could swap.
        let made_in = place
            .dir
            .ancestors()
            .find(|d| std::fs::symlink_metadata(d).is_ok());
        if let Some(owner) = made_in.and_then(swappable_by_another_user) {
            return refuse(format!(
                "run as root, it would change files by name in {}, which {owner} can replace \
                 meanwhile: run it as that directory's owner (runuser -u {owner} -- lifeline ...)",
                place.dir.display()
            ));
        }
    }
    let places = Places::for_delta(Place::claimed(root, claim), tablespaces, waldir, opts.owner)?;
    // Found now rather than after the seal, when the directory no longer starts.
    places.check_creatable()?;
    Ok(Some(Existing { places }))
}

/// Run as root, the owner of the data directory or of a directory above it, when that is
/// another user: one who could swap it for a link between the checks and the writes.
fn swappable_by_another_user(root: &Path) -> Option<String> {
    if !storage::private::running_as_root() {
        return None;
    }
    let real = std::fs::canonicalize(root).ok()?;
    real.ancestors()
        .filter_map(|dir| std::fs::metadata(dir).ok())
        .find(|meta| meta.uid() != 0)
        .map(|meta| storage::private::user_name(meta.uid()))
}

/// The pid of a PostgreSQL process whose working directory is `root`: a server and its
/// children work in their data directory, and one still runs there when its postmaster.pid was
/// removed by hand. Only the processes this user may see are looked at (all of them as root,
/// the server's own as its user).
fn postgres_working_in(root: &Path) -> Option<String> {
    let ours = std::fs::metadata(root).ok()?;
    for process in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = process.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cwd) = std::fs::metadata(process.path().join("cwd")) else {
            continue;
        };
        if (cwd.dev(), cwd.ino()) != (ours.dev(), ours.ino()) {
            continue;
        }
        let name = std::fs::read_to_string(process.path().join("comm")).unwrap_or_default();
        if matches!(name.trim_end(), "postgres" | "postmaster") {
            return Some(pid);
        }
    }
    None
}

fn server_may_run(root: &Path) -> bool {
    std::fs::symlink_metadata(root.join("postmaster.pid")).is_ok()
}

/// WAL files PostgreSQL marked ready for archiving and never saw archived.
fn unarchived_wal(pg_wal: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(pg_wal.join("archive_status")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".ready")
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// How pg_control says the server on `root` ended, when that may have left WAL of its own
/// never archived: it was a primary (or had become one) and did not shut down cleanly. `None`
/// when it shut down cleanly, stopped while replaying WAL that came from elsewhere (a standby,
/// a recovery), or never started since it was restored (its `backup_label` and signal file are
/// still there: its pg_control is the backup's copy); also when pg_control is missing (an
/// unfinished restore).
fn unclean_shutdown(root: &Path, control: Option<&[u8]>) -> Option<String> {
    let control = control?;
    // A restore leaves a signal file beside backup_label; a primary of PostgreSQL 13 or 14
    // that crashed in an exclusive backup leaves backup_label alone.
    let is_file = |name| {
        std::fs::symlink_metadata(root.join(name)).is_ok_and(|m: std::fs::Metadata| m.is_file())
    };
    let restored_not_started =
        is_file("backup_label") && (is_file("recovery.signal") || is_file("standby.signal"));
    if restored_not_started {
        return None;
    }
    match storage::wal::parse_control_file_state(control) {
        Some(state) => primary_not_shut_down(state),
        None => Some("nothing: it is shorter than 20 bytes".into()),
    }
}

/// PostgreSQL's `DBState` (pg_control.h, the same from 9.x to 18) when it means a primary that
/// did not shut down cleanly.
fn primary_not_shut_down(state: u32) -> Option<String> {
    let said = match state {
        // shut down; shut down in recovery; in archive recovery (replaying others' WAL)
        1 | 2 | 5 => return None,
        0 => "starting up",
        3 => "shutting down",
        4 => "in crash recovery",
        6 => "in production",
        _ => return Some(format!("state {state}, unknown")),
    };
    Some(said.to_string())
}

/// The cluster a data directory belongs to: the first field of its `global/pg_control`
/// (`control`), or, once an unfinished restore moved that away, the one its marker records.
fn system_identifier(root: &Path, control: Option<&[u8]>) -> Result<Option<u64>, RestoreError> {
    if let Some(control) = control {
        return Ok(storage::wal::parse_control_file_system_identifier(control).ok());
    }
    let Some(marker) = read_small(&root.join(MARKER), 4096)? else {
        return Ok(None);
    };
    Ok(crate::restore_base::marker_system_identifier(
        &String::from_utf8_lossy(&marker),
    ))
}

/// Restore `manifest` onto the checked directory `existing`. A failure once the directory has
/// begun to change leaves it unable to start, and says how to finish.
pub(crate) async fn restore_delta(
    storage: Arc<dyn Storage>,
    manifest: &BackupManifest,
    mut lists: BlockLists,
    opts: &RestoreOptions,
    existing: Existing,
) -> Result<RestoreReport, RestoreError> {
    if opts.verify_first {
        crate::restore_base::check_packs_exist(
            storage.as_ref(),
            &manifest.backup_id,
            lists.packs(manifest),
            opts.parallelism,
        )
        .await?;
    }
    if opts.interrupted.load(Ordering::Relaxed) {
        return Err(RestoreError::Interrupted);
    }
    let places = Arc::new(existing.places);
    let trees = trees(manifest, &lists, &places);
    // Refused here, before anything is written, rather than midway.
    check_walk(&trees).await?;
    // Before the seal: a second read that fails or finds the manifest changed leaves the
    // directory as it was (the file has no name, and the walk never sees it).
    lists.keep_in(storage.as_ref(), &places.root.dir).await?;
    let sealed = {
        let (root, marker, owner) = (places.root.dir.clone(), marker_text(manifest), opts.owner);
        blocking("delta restore start", move || seal(&root, &marker, owner)).await
    };
    let work = async {
        sealed?;
        reconcile_and_write(storage, manifest, &lists, opts, &places, trees).await
    };
    work.await.map_err(|e| match e {
        // Refused by the second look for a server: pg_control is back, nothing changed.
        RestoreError::Refused(_) => e,
        e => RestoreError::DeltaUnfinished {
            source: Box::new(match e {
                RestoreError::Interrupted => {
                    RestoreError::Failed("stopped by a signal; every worker was joined".into())
                }
                e => e,
            }),
        },
    })
}

/// The walk of what is there, refused before anything is written; the number of entries the
/// backup does not hold (a delta restore removes them).
async fn check_walk(trees: &Arc<Vec<Tree>>) -> Result<usize, RestoreError> {
    let trees = trees.clone();
    blocking("delta restore check", move || {
        let mut extra = 0;
        for tree in trees.iter().filter(|t| t.existed) {
            extra += walk(tree)?.0.len();
        }
        Ok(extra)
    })
    .await
    .map_err(|e| match e {
        RestoreError::Refused(_) => e,
        e => RestoreError::Refused(format!("--delta: {e}; nothing was changed")),
    })
}

/// What a delta restore onto `existing` would remove, checked as `restore_delta` checks it
/// before its first write (`SIMULATE_MODE`).
pub(crate) async fn preview_delta(
    manifest: &BackupManifest,
    lists: &BlockLists,
    existing: &Existing,
) -> Result<usize, RestoreError> {
    check_walk(&trees(manifest, lists, &existing.places)).await
}

/// Make the marker durable (written aside and renamed: a crash never leaves it half
/// written), then move `pg_control` aside: from here until the end the directory cannot
/// start, and the marker still names its cluster. A server started since the first look has
/// written `postmaster.pid` before it read `pg_control`: then `pg_control` goes back and the
/// restore is refused; one starting later finds no `pg_control` and stops.
fn seal(root: &Path, marker: &str, owner: Owner) -> Result<(), RestoreError> {
    let io = |p: &Path, e| RestoreError::io(p, e);
    let (path, temporary) = (root.join(MARKER), root.join(MARKER_PARTIAL));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(no_follow())
        .open(&temporary)
        .map_err(|e| io(&temporary, e))?;
    owner.apply(&file).map_err(|e| io(&temporary, e))?;
    file.write_all(marker.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| io(&temporary, e))?;
    std::fs::rename(&temporary, &path).map_err(|e| io(&path, e))?;
    fsync_path(root)?;
    let (control, aside) = (root.join(CONTROL_FILE), root.join(CONTROL_ASIDE));
    match std::fs::rename(&control, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&control, e)),
    }
    if server_may_run(root) {
        std::fs::rename(&aside, &control).map_err(|e| io(&control, e))?;
        let _ = std::fs::remove_file(&path);
        return Err(RestoreError::Refused(format!(
            "--delta: a server started on {} while the restore was checking (postmaster.pid \
             appeared): stop it first; nothing was changed",
            root.display()
        )));
    }
    fsync_path(&root.join("global"))
}

async fn reconcile_and_write(
    storage: Arc<dyn Storage>,
    manifest: &BackupManifest,
    lists: &BlockLists,
    opts: &RestoreOptions,
    places: &Arc<Places>,
    trees: Arc<Vec<Tree>>,
) -> Result<RestoreReport, RestoreError> {
    let owner = opts.owner;
    let (removed, files) = {
        let (places, trees) = (places.clone(), trees.clone());
        blocking("delta restore directories", move || {
            // The tablespaces' directories that were missing, created and claimed. Past the
            // seal, a refusal (a directory written to since the check) leaves it unfinished.
            places.create().map_err(past_the_seal)?;
            let (mut removed, mut files) = (0, Vec::new());
            for tree in trees.iter() {
                removed += reconcile_tree(tree, owner, &mut files)?;
            }
            Ok((removed, files))
        })
        .await?
    };
    debug!(removed, "extra entries removed, directories in place");

    let parallelism = opts.parallelism.max(1);
    let batch = files.len().div_ceil(parallelism * 2).max(1);
    let batches: Vec<Vec<_>> = files.chunks(batch).map(<[_]>::to_vec).collect();
    let to_hash = Arc::new(Mutex::new(Vec::new()));
    let created = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    run_all(batches, parallelism * 2, &opts.interrupted, |batch| {
        let (to_hash, created) = (to_hash.clone(), created.clone());
        blocking("delta restore files", move || {
            let (reused, made) = prepare_files(&batch, owner)?;
            created.fetch_add(made, Ordering::Relaxed);
            lock(&to_hash).extend(reused);
            Ok(())
        })
    })
    .await?;

    let to_hash = std::mem::take(&mut *lock(&to_hash));
    let (unchanged, kept_bytes) =
        hash_blocks(to_hash, manifest, lists, storage.chunk_ids(), opts).await?;
    debug!(kept_bytes, "relation blocks compared");

    let unchanged = Some(&unchanged);
    let window = opts.plan_window;
    let written_bytes =
        crate::restore_base::planned_bytes(manifest, lists, places, unchanged, window)?;
    opts.progress.set_total(written_bytes);
    crate::restore_base::write_windows(storage, manifest, lists, places, unchanged, opts).await?;
    crate::restore_base::finish(manifest, opts, places).await?;
    Ok(RestoreReport {
        files: trees.iter().map(|t| t.wanted.files.len()).sum(),
        bytes: manifest.size_bytes,
        delta: Some(DeltaReport {
            kept_bytes,
            written_bytes,
            removed,
            created: created.load(Ordering::Relaxed),
        }),
    })
}

/// Make one tree as the backup holds it (what it does not hold removed, its directories and
/// links made), adding its files, by destination, to `files`; the number of entries removed.
fn reconcile_tree(
    tree: &Tree,
    owner: Owner,
    files: &mut Vec<(PathBuf, FileWanted)>,
) -> Result<usize, RestoreError> {
    // A mount that appeared since the first walk: too late to be a clean refusal.
    let (extra, kept) = walk(tree).map_err(past_the_seal)?;
    for (rel, is_dir) in &extra {
        remove(&tree.dir.join(rel), *is_dir)?;
    }
    prepare_directories(tree, &kept, owner)?;
    files.extend(
        tree.wanted
            .files
            .iter()
            .map(|(rel, f)| (tree.dir.join(rel), f.with_state(kept.get(rel).copied()))),
    );
    Ok(extra.len())
}

/// A refusal once the directory is sealed is a failure: the directory was changed, and only
/// running the restore again finishes it.
fn past_the_seal(e: RestoreError) -> RestoreError {
    match e {
        RestoreError::Refused(why) => RestoreError::Failed(why),
        e => e,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A file of the backup: its size, mode and relation blocks, and what is there now.
#[derive(Debug, Clone)]
struct FileWanted {
    size: u64,
    mode: u32,
    /// A relation file's place in the manifest's files, where its blocks are listed.
    relation: Option<usize>,
    /// The hard links of the regular file there now, if one is.
    links: Option<u64>,
}

impl FileWanted {
    fn with_state(&self, found: Option<Found>) -> FileWanted {
        let links = match found {
            Some(Found::File { links }) => Some(links),
            _ => None,
        };
        FileWanted {
            links,
            ..self.clone()
        }
    }
}

/// What the backup holds in one directory tree, by path relative to it (`pg_control` under
/// its temporary name), in manifest order: every directory before what it holds.
#[derive(Debug, Clone, Default)]
struct Wanted {
    dirs: Vec<PathBuf>,
    files: Vec<(PathBuf, FileWanted)>,
    kinds: HashMap<PathBuf, bool>,
    /// `pg_tblspc/<oid>` and, with `--waldir`, `pg_wal` in the data directory: the links to
    /// the directories they stand for.
    links: HashMap<PathBuf, PathBuf>,
}

/// The data directory, a tablespace's directory or `--waldir`, and what the backup holds there.
#[derive(Debug)]
struct Tree {
    dir: PathBuf,
    wanted: Wanted,
    /// Whether the directory was there when checked (a tablespace's may be made anew).
    existed: bool,
    /// A tablespace's directory: what lies at its top that the backup does not hold (another
    /// major's version directory, after pg_upgrade) is another cluster's, and left alone.
    leave_others: bool,
}

/// The data directory's tree first, then one per tablespace, by oid, then `--waldir`'s.
fn trees(manifest: &BackupManifest, lists: &BlockLists, places: &Places) -> Arc<Vec<Tree>> {
    let tree = |dir: &PathBuf, existed, leave_others| Tree {
        dir: dir.clone(),
        wanted: Wanted::default(),
        existed,
        leave_others,
    };
    let mut root = tree(&places.root.dir, true, false);
    let mut tablespaces: BTreeMap<u32, Tree> = places
        .tablespaces
        .iter()
        .map(|(oid, p)| (*oid, tree(&p.dir, p.existed, true)))
        .collect();
    for (oid, place) in &places.tablespaces {
        root.wanted.links.insert(
            Path::new("pg_tblspc").join(oid.to_string()),
            place.dir.clone(),
        );
    }
    // The backup holds nothing beneath pg_wal (validated); `--waldir` holds what it holds.
    let wal = places.waldir.as_ref().map(|place| {
        root.wanted
            .links
            .insert(PathBuf::from("pg_wal"), place.dir.clone());
        let mut wal = tree(&place.dir, place.existed, false);
        wal.wanted.want_dir(PathBuf::from("archive_status"));
        wal
    });
    for (index, entry) in restored_indexed(manifest) {
        let in_tablespace = split_tablespace(&entry.path)
            .and_then(|(oid, rest)| Some((tablespaces.get_mut(&oid)?, rest)));
        let (wanted, rel) = match in_tablespace {
            // `pg_tblspc/<oid>` itself is the link, made apart.
            Some((_, None)) => continue,
            Some((tree, Some(rest))) => (&mut tree.wanted, rest),
            None if entry.path == "pg_wal" && wal.is_some() => continue,
            None if entry.path == CONTROL_FILE => (&mut root.wanted, CONTROL_PARTIAL),
            None => (&mut root.wanted, entry.path.as_str()),
        };
        let relation = (lists.count(manifest, index) != 0).then_some(index);
        wanted.add(PathBuf::from(rel), relation, entry);
    }
    if wal.is_none() {
        for dir in ["pg_wal", "pg_wal/archive_status"] {
            root.wanted.want_dir(PathBuf::from(dir));
        }
    }
    Arc::new(
        std::iter::once(root)
            .chain(tablespaces.into_values())
            .chain(wal)
            .collect(),
    )
}

impl Wanted {
    /// A directory the backup may not list (`pg_wal` and its `archive_status`).
    fn want_dir(&mut self, rel: PathBuf) {
        if self.kinds.insert(rel.clone(), true).is_none() {
            self.dirs.push(rel);
        }
    }

    /// The file or directory `entry` at `rel`; `relation`: the manifest's file number of a
    /// file with blocks.
    fn add(&mut self, rel: PathBuf, relation: Option<usize>, entry: &storage::manifest::FileEntry) {
        // A link an older backup recorded is only ever `pg_wal` (validated): a directory.
        let is_dir = entry.kind != EntryKind::File;
        self.kinds.insert(rel.clone(), is_dir);
        if is_dir {
            self.dirs.push(rel);
            return;
        }
        self.files.push((
            rel,
            FileWanted {
                size: entry.size,
                mode: file_mode(entry.mode),
                relation,
                links: None,
            },
        ));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Dir,
    File {
        links: u64,
    },
    /// A link to the tablespace's directory it stands for.
    Link,
}

/// Walk a tree without following links: what to remove (not in the backup, or of another
/// kind; a directory whole), and what to keep, by relative path.
#[allow(clippy::type_complexity)]
fn walk(tree: &Tree) -> Result<(Vec<(PathBuf, bool)>, HashMap<PathBuf, Found>), RestoreError> {
    let (root, wanted) = (tree.dir.as_path(), &tree.wanted);
    let mut extra = Vec::new();
    let mut kept = HashMap::new();
    let root_device = std::fs::metadata(root)
        .map_err(|e| RestoreError::io(root, e))?
        .dev();
    // The directory itself, wherever a link naming it leads.
    let real_root = std::fs::canonicalize(root).map_err(|e| RestoreError::io(root, e))?;
    let root_is_mount = match real_root.parent() {
        Some(parent) => {
            let parent_device = std::fs::metadata(parent).map_or(root_device, |m| m.dev());
            mount_root(&real_root, parent, Some((parent_device, root_device)))?
        }
        None => false,
    };
    // A mount's own `lost+found` (`pg_wal` on a file system of its own, root's and unreadable)
    // is left alone. The directories to remove are walked too, for a mount deeper inside:
    // removing a directory removes everything below it, across mounts.
    let mut pending = vec![Pending {
        dir: PathBuf::new(),
        device: root_device,
        removed: false,
        is_mount: root_is_mount,
    }];
    while let Some(Pending {
        dir,
        device,
        removed,
        is_mount,
    }) = pending.pop()
    {
        let at = root.join(&dir);
        refuse_unchangeable(&at, !removed)?;
        for entry in std::fs::read_dir(&at).map_err(|e| RestoreError::io(&at, e))? {
            let entry = entry.map_err(|e| RestoreError::io(&at, e))?;
            let rel = dir.join(entry.file_name());
            if rel.as_os_str() == MARKER {
                continue;
            }
            let meta = entry
                .metadata()
                .map_err(|e| RestoreError::io(entry.path(), e))?;
            let kind = meta.file_type();
            // A file can be a mount point too (a bind-mounted configuration file): written in
            // place, the backup's copy would land in the file mounted there.
            let mounted = if kind.is_dir() {
                mount_root(&entry.path(), &at, Some((device, meta.dev())))?
            } else if kind.is_symlink() {
                false
            } else {
                // Not by device: a file's may differ from its directory's without any mount.
                mount_root(&entry.path(), &at, None)?
            };
            if is_mount && kind.is_dir() && entry.file_name() == "lost+found" {
                continue;
            }
            let held = if removed {
                None
            } else {
                wanted.kinds.get(&rel)
            };
            if held.is_none() && !removed && tree.leave_others && dir.as_os_str().is_empty() {
                continue;
            }
            if kind.is_symlink()
                && let Some(to) = wanted.links.get(&rel)
                && crate::places::is_same_dir(to, &entry.path())
            {
                kept.insert(rel, Found::Link);
                continue;
            }
            if mounted && held != Some(&true) {
                return Err(mounted_inside(&entry.path()));
            }
            let below = |removed| Pending {
                dir: rel.clone(),
                device: meta.dev(),
                removed,
                is_mount: mounted,
            };
            if removed {
                if kind.is_dir() {
                    pending.push(below(true));
                }
                continue;
            }
            match held {
                Some(true) if kind.is_dir() => {
                    kept.insert(rel.clone(), Found::Dir);
                    pending.push(below(false));
                }
                Some(false) if kind.is_file() => {
                    refuse_unreadable(&entry.path())?;
                    kept.insert(
                        rel,
                        Found::File {
                            links: meta.nlink(),
                        },
                    );
                }
                _ => {
                    if kind.is_dir() {
                        pending.push(below(true));
                    }
                    extra.push((rel, kind.is_dir()));
                }
            }
        }
    }
    Ok((extra, kept))
}

/// Refuse a directory this user may not change (a read-only mode, another user's, root's made
/// by `sudo mkdir`): found while walking, before the seal, rather than once the directory can
/// no longer start. Every directory `kept` is given PostgreSQL's mode, which only its owner (or
/// root) may do. A check the kernel cannot answer (a sandbox refusing the call) is left to the
/// writes themselves.
fn refuse_unchangeable(dir: &Path, kept: bool) -> Result<(), RestoreError> {
    use rustix::fs::{Access, AtFlags, CWD, accessat};
    let user = rustix::process::geteuid();
    let name = storage::private::user_name(user.as_raw());
    let refuse = |why: String, fix: &str| {
        Err(RestoreError::Refused(format!(
            "--delta: {} {why}, and a delta restore removes and rewrites entries in it and sets \
             its mode: {fix}, then restore again",
            dir.display()
        )))
    };
    let owner = std::fs::symlink_metadata(dir)
        .map_err(|e| RestoreError::io(dir, e))?
        .uid();
    if kept && !user.is_root() && owner != user.as_raw() {
        let other = storage::private::user_name(owner);
        return refuse(
            format!("belongs to {other}, not to {name}"),
            &format!("give it back (chown {name})"),
        );
    }
    let all = Access::READ_OK | Access::WRITE_OK | Access::EXEC_OK;
    match accessat(CWD, dir, all, AtFlags::empty()) {
        Err(rustix::io::Errno::ACCESS) => refuse(
            format!("cannot be changed by {name} (its mode)"),
            "chmod u+rwx it",
        ),
        Err(rustix::io::Errno::ROFS) => refuse(
            "is on a read-only file system".into(),
            "mount it read-write",
        ),
        _ => Ok(()),
    }
}

/// Refuse a file kept for comparison that this user may not read (root's 0600, left by a
/// `sudo cp`): its blocks are hashed after the seal.
fn refuse_unreadable(path: &Path) -> Result<(), RestoreError> {
    use rustix::fs::{Access, AtFlags, CWD, accessat};
    match accessat(CWD, path, Access::READ_OK, AtFlags::SYMLINK_NOFOLLOW) {
        Err(rustix::io::Errno::ACCESS) => Err(RestoreError::Refused(format!(
            "--delta: {} cannot be read by {}, and a delta restore compares it with the backup: \
             give it back to PostgreSQL's user (chown, chmod u+rw), then restore again",
            path.display(),
            storage::private::user_name(rustix::process::geteuid().as_raw())
        ))),
        _ => Ok(()),
    }
}

/// A directory `walk` has yet to read: its device, whether everything in it is to be removed,
/// and whether it is the root of a mount.
struct Pending {
    dir: PathBuf,
    device: u64,
    removed: bool,
    is_mount: bool,
}

fn mounted_inside(path: &Path) -> RestoreError {
    RestoreError::Refused(format!(
        "--delta: {} has another file system mounted on it (or a file or directory bound \
         there) inside the data directory: a delta restore would remove it, or write the backup's \
         copy of a file through it into the file mounted there. Unmount it, then restore again",
        path.display()
    ))
}

/// Remove an entry the backup does not hold: a directory with all it holds, a link itself.
fn remove(path: &Path, is_dir: bool) -> Result<(), RestoreError> {
    let removed = if is_dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RestoreError::io(path, e)),
        _ => Ok(()),
    }
}

/// The tree's directory and every directory of the backup in it: created where missing, 0700
/// and given to `owner` everywhere; then the links to the tablespaces' directories.
fn prepare_directories(
    tree: &Tree,
    kept: &HashMap<PathBuf, Found>,
    owner: Owner,
) -> Result<(), RestoreError> {
    let (root, wanted) = (tree.dir.as_path(), &tree.wanted);
    let io = |p: &Path, e| RestoreError::io(p, e);
    let mut dirs = vec![root.to_path_buf()];
    for rel in &wanted.dirs {
        let path = root.join(rel);
        if !kept.contains_key(rel) {
            std::fs::DirBuilder::new()
                .mode(DIR_MODE)
                .create(&path)
                .map_err(|e| io(&path, e))?;
        }
        dirs.push(path);
    }
    for dir in dirs {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(DIR_MODE))
            .map_err(|e| io(&dir, e))?;
        owner.apply_path(&dir).map_err(|e| io(&dir, e))?;
    }
    for (rel, to) in &wanted.links {
        if kept.get(rel) == Some(&Found::Link) {
            continue;
        }
        let at = root.join(rel);
        std::os::unix::fs::symlink(to, &at).map_err(|e| io(&at, e))?;
        owner.apply_path(&at).map_err(|e| io(&at, e))?;
    }
    Ok(())
}

/// A relation block as the comparison needs it: a fraction of a chunk reference's memory.
#[derive(Debug, Clone, Copy)]
struct Expected {
    id: storage::ChunkHash,
    len: u64,
}

impl Expected {
    fn of(chunk: &ChunkRef) -> Expected {
        Expected {
            id: chunk.hash,
            len: chunk.len,
        }
    }
}

/// A reused relation file whose blocks are compared with the backup's, and its place in the
/// manifest's files.
type ToHash = (PathBuf, usize);

/// Put every file of `batch` at its size, mode and owner: a regular file with one link is
/// reused, anything else created anew. Returns the reused relation files and how many files
/// were created.
fn prepare_files(
    batch: &[(PathBuf, FileWanted)],
    owner: Owner,
) -> Result<(Vec<ToHash>, usize), RestoreError> {
    let mut reused = Vec::new();
    let mut new = Vec::new();
    for (path, file) in batch {
        let io = |e| RestoreError::io(path, e);
        // A second link shares the data with another file (another cluster after
        // pg_upgrade --link): writing in place would change that one too.
        if file.links == Some(1) && reuse(path, file, owner)? {
            if let Some(index) = file.relation {
                reused.push((path.clone(), index));
            }
            continue;
        }
        if file.links.is_some() {
            std::fs::remove_file(path).map_err(io)?;
        }
        new.push((path.clone(), file.size, file.mode));
    }
    create_files(&new, owner)?;
    Ok((reused, new.len()))
}

/// Put the regular file at `path` at the backup's size, mode and owner; `false` when it may not
/// be written in place (read-only, another user's) and is to be replaced.
fn reuse(path: &Path, file: &FileWanted, owner: Owner) -> Result<bool, RestoreError> {
    let denied = |e: &std::io::Error| e.kind() == std::io::ErrorKind::PermissionDenied;
    let handle = match std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(no_follow_nonblocking())
        .open(path)
    {
        Ok(handle) => handle,
        Err(e) if denied(&e) => return Ok(false),
        Err(e) => return Err(RestoreError::io(path, e)),
    };
    let io = |e| RestoreError::io(path, e);
    let now = handle.metadata().map_err(io)?;
    if !now.is_file() {
        return Ok(false);
    }
    // Only what differs is changed: an untouched inode stays clean, and its fsync is cheap.
    if now.mode() & 0o7777 != file.mode {
        match handle.set_permissions(std::fs::Permissions::from_mode(file.mode)) {
            Err(e) if denied(&e) => return Ok(false),
            other => other.map_err(io)?,
        }
    }
    if now.len() != file.size {
        handle.set_len(file.size).map_err(io)?;
    }
    owner.apply(&handle).map_err(io)?;
    Ok(true)
}

/// Up to [`BLOCKS_PER_UNIT`] blocks of one file, compared by one task.
struct Unit {
    path: PathBuf,
    /// The number of the first block in the file, and where it starts.
    first: usize,
    offset: u64,
    blocks: Vec<Expected>,
}

/// Hash the reused files' blocks, [`COMPARISONS_PER_CORE`] tasks per core at a time, and
/// compare each with the backup's chunk id. The units of work are cut from the block lists as
/// the tasks take them: only those in flight hold copies of their entries. Returns the blocks
/// found in place, and their bytes.
async fn hash_blocks(
    files: Vec<ToHash>,
    manifest: &BackupManifest,
    lists: &BlockLists,
    ids: ChunkIds,
    opts: &RestoreOptions,
) -> Result<(Unchanged, u64), RestoreError> {
    let unchanged: Unchanged = files
        .iter()
        .map(|(path, index)| (path.clone(), vec![false; lists.count(manifest, *index)]))
        .collect();
    let units = files.iter().flat_map(|(path, index)| {
        let blocks = match lists.blocks(manifest, *index) {
            Ok(blocks) => blocks,
            Err(e) => return vec![Err(e)],
        };
        let mut offset = 0u64;
        let parts = blocks.chunks(BLOCKS_PER_UNIT).enumerate();
        parts
            .map(|(n, part)| {
                let unit = Unit {
                    path: path.clone(),
                    first: n * BLOCKS_PER_UNIT,
                    offset,
                    blocks: part.iter().map(Expected::of).collect(),
                };
                // Saturating: the lengths come from the manifest.
                let len = part.iter().fold(0u64, |sum, c| sum.saturating_add(c.len));
                offset = offset.saturating_add(len);
                Ok(unit)
            })
            .collect()
    });
    let (unchanged, ids) = (Arc::new(Mutex::new((unchanged, 0u64))), Arc::new(ids));
    run_all(
        units,
        opts.parallelism.max(1) * COMPARISONS_PER_CORE,
        &opts.interrupted,
        |unit| {
            let (unchanged, ids) = (unchanged.clone(), ids.clone());
            blocking("block comparison task", move || {
                let unit = unit?;
                let same = compare_blocks(&unit.path, &unit.blocks, unit.offset, &ids)?;
                let range = unit.first..unit.first + same.len();
                let found = unit.blocks.iter().zip(&same).filter(|(_, same)| **same);
                let found_bytes = found.fold(0u64, |sum, (b, _)| sum.saturating_add(b.len));
                let (unchanged, kept) = &mut *lock(&unchanged);
                let flags = unchanged.get_mut(&unit.path).and_then(|f| f.get_mut(range));
                if let Some(flags) = flags {
                    flags.copy_from_slice(&same);
                    *kept = kept.saturating_add(found_bytes);
                }
                Ok(())
            })
        },
    )
    .await?;
    let found = std::mem::take(&mut *lock(&unchanged));
    Ok(found)
}

/// Which of `blocks`, the first at `offset` of `path`, already hold the backup's content.
fn compare_blocks(
    path: &Path,
    blocks: &[Expected],
    mut offset: u64,
    ids: &ChunkIds,
) -> Result<Vec<bool>, RestoreError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(no_follow_nonblocking())
        .open(path)
        .map_err(|e| RestoreError::io(path, e))?;
    let mut same = vec![false; blocks.len()];
    let mut buf = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        if block.len > MAX_BLOCK {
            break;
        }
        buf.resize(block.len as usize, 0);
        match file.read_exact_at(&mut buf, offset) {
            Ok(()) => {}
            // The file is shorter now: this block and those after it are written.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(RestoreError::io(path, e)),
        }
        same[i] = block.id == storage::ChunkHash::from(ids.of_checksum(blake3::hash(&buf)));
        offset += block.len;
    }
    debug!(
        path = %path.display(),
        same = same.iter().filter(|s| **s).count(),
        of = blocks.len(),
        "blocks compared"
    );
    Ok(same)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(content: &[u8]) -> Expected {
        Expected::of(&ChunkRef {
            hash: blake3::hash(content).into(),
            len: content.len() as u64,
            pack: storage::PackId::from_bytes([0; 32]),
            offset: 0,
            stored: 0,
        })
    }

    #[test]
    fn blocks_match_only_where_the_bytes_are_the_backups() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relation");
        // On disk: A, B', and half of C.
        let (a, b, c) = ([1u8; 8192], [2u8; 8192], [3u8; 4096]);
        let mut on_disk = a.to_vec();
        on_disk.extend_from_slice(&[9u8; 8192]);
        on_disk.extend_from_slice(&c[..2048]);
        std::fs::write(&path, &on_disk).expect("write");
        let ids = ChunkIds::plain();
        let blocks = [block(&a), block(&b), block(&c)];
        assert_eq!(
            compare_blocks(&path, &blocks, 0, &ids).expect("compare"),
            vec![true, false, false]
        );
        // From an offset, as a unit past the first does.
        assert_eq!(
            compare_blocks(&path, &blocks[..1], 8192, &ids).expect("compare"),
            vec![false]
        );
        // A forged length is not read.
        let mut huge = block(&a);
        huge.len = MAX_BLOCK + 1;
        assert_eq!(
            compare_blocks(&path, &[huge, block(&a)], 0, &ids).expect("compare"),
            vec![false, false]
        );
    }

    #[test]
    fn only_a_clean_stop_or_a_restored_copy_never_started_counts_as_clean() {
        let dir = tempfile::tempdir().expect("temp dir");
        let control = |state: u32| {
            let mut bytes = vec![0u8; 16];
            bytes.extend(state.to_le_bytes());
            bytes
        };
        let says = |state: u32| unclean_shutdown(dir.path(), Some(&control(state)));
        for clean in [1, 2, 5] {
            assert_eq!(says(clean), None, "state {clean}");
        }
        for (state, said) in [
            (0, "starting up"),
            (3, "shutting down"),
            (4, "in crash recovery"),
            (6, "in production"),
            (99, "state 99, unknown"),
        ] {
            assert_eq!(says(state).as_deref(), Some(said));
        }
        // Too short to hold a state: not taken for a clean stop.
        assert!(unclean_shutdown(dir.path(), Some(&control(1)[..19])).is_some());
        // No pg_control at all: an unfinished restore, nothing of its own to lose.
        assert_eq!(unclean_shutdown(dir.path(), None), None);
        // backup_label alone is a primary that crashed in an exclusive backup; beside a signal
        // file, a restored copy never started.
        std::fs::write(dir.path().join("backup_label"), "").expect("label");
        assert_eq!(says(6).as_deref(), Some("in production"));
        std::fs::write(dir.path().join("recovery.signal"), "").expect("signal");
        assert_eq!(says(6), None);
    }

    #[test]
    fn root_refuses_a_directory_another_user_could_swap() {
        if !storage::private::running_as_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("data");
        assert_eq!(swappable_by_another_user(&data), None);
        std::os::unix::fs::chown(dir.path(), Some(65534), None).expect("chown");
        assert!(swappable_by_another_user(&data).is_some());
    }

    #[test]
    fn the_backup_holds_pg_control_under_its_temporary_name_and_pg_wal_always() {
        let mut manifest = testing::fixtures::base_manifest();
        let entry = |path: &str, kind| storage::manifest::FileEntry {
            path: path.into(),
            kind,
            mode: 0o600,
            size: 0,
            mtime: 0,
            link_target: None,
            blocks: Vec::new(),
            bundle_offset: None,
        };
        manifest.files = vec![
            entry("global", EntryKind::Dir),
            entry("global/pg_control", EntryKind::File),
            entry("standby.signal", EntryKind::File),
            entry("pg_tblspc", EntryKind::Dir),
            entry("pg_tblspc/16385", EntryKind::Dir),
            entry("pg_tblspc/16385/PG_15_1", EntryKind::Dir),
            entry("pg_tblspc/16385/PG_15_1/5/100", EntryKind::File),
        ];
        let (data, space) = (PathBuf::from("/nowhere/data"), PathBuf::from("/nowhere/ts"));
        let places = Places::for_delta(
            Place::new(data.clone(), true),
            [(16385, Place::new(space.clone(), false))].into(),
            None,
            Owner::default(),
        )
        .expect("apart");
        let trees = trees(&manifest, &BlockLists::whole(), &places);
        let [root, tablespace] = trees.as_slice() else {
            panic!("two trees: {trees:?}");
        };
        let wanted = &root.wanted;
        assert_eq!(wanted.kinds.get(Path::new(CONTROL_PARTIAL)), Some(&false));
        assert!(!wanted.kinds.contains_key(Path::new(CONTROL_FILE)));
        assert!(!wanted.kinds.contains_key(Path::new("standby.signal")));
        assert_eq!(
            wanted.dirs,
            ["global", "pg_tblspc", "pg_wal", "pg_wal/archive_status"].map(PathBuf::from)
        );
        assert_eq!(
            wanted.links,
            [(PathBuf::from("pg_tblspc/16385"), space.clone())].into()
        );
        assert!(root.dir == data && root.existed && !root.leave_others);
        assert!(tablespace.dir == space && !tablespace.existed && tablespace.leave_others);
        assert_eq!(tablespace.wanted.dirs, [PathBuf::from("PG_15_1")]);
        assert_eq!(tablespace.wanted.files.len(), 1);
        assert_eq!(tablespace.wanted.files[0].0, Path::new("PG_15_1/5/100"));

        // With --waldir, pg_wal is a link to it, and archive_status is made there.
        let wal_dir = PathBuf::from("/nowhere/wal");
        let places = Places::for_delta(
            Place::new(data.clone(), true),
            BTreeMap::new(),
            Some(Place::new(wal_dir.clone(), true)),
            Owner::default(),
        )
        .expect("apart");
        manifest.files.push(entry("pg_wal", EntryKind::Dir));
        let trees = super::trees(&manifest, &BlockLists::whole(), &places);
        let [root, wal] = trees.as_slice() else {
            panic!("two trees: {trees:?}");
        };
        assert!(!root.wanted.kinds.contains_key(Path::new("pg_wal")));
        assert_eq!(
            root.wanted.links.get(Path::new("pg_wal")),
            Some(&wal_dir),
            "{root:?}"
        );
        assert!(wal.dir == wal_dir && wal.existed && !wal.leave_others);
        assert_eq!(wal.wanted.dirs, [PathBuf::from("archive_status")]);
        assert!(wal.wanted.files.is_empty());
    }
}
