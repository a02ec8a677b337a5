//! A manifest is checked as a whole before the first write: whoever can write to the
//! repository must not be able to make a restore write outside its target, follow a link, set
//! setuid bits or write more than the backup holds. The checksum of a manifest proves only that
//! it was stored intact, not who stored it.

use std::collections::{HashMap, HashSet};

use storage::manifest::{BackupManifest, ChunkRef, EntryKind, FileEntry, StreamManifest};

use crate::RestoreError;
use crate::block_lists::BlockLists;

/// The largest chunk any lifeline writes is a relation block (`block-size`, at most 16 MiB) or a
/// content-defined chunk (at most 1 MiB); anything larger is a forged length.
const MAX_CHUNK_LEN: u64 = 16 << 20;

/// Names the restore writes itself, or uses while it runs.
const RESERVED: &[&str] = &[
    "backup_label",
    "tablespace_map",
    "recovery.signal",
    ".lifeline-restore-incomplete",
];

/// Private, whatever the manifest says: never setuid, setgid or sticky, never a bit for the
/// group or others (tablespaces and `--waldir` lie outside the 0700 data directory); the owner
/// can always read and write what the restore creates.
pub(crate) fn file_mode(mode: u32) -> u32 {
    (mode & 0o700) | 0o600
}

/// Every directory the restore creates is the owner's alone, whatever mode the manifest
/// records (PostgreSQL refuses a data directory open to others).
pub(crate) const DIR_MODE: u32 = 0o700;

/// Whether `path` is `pg_tblspc/<oid>`, and the oid. Only the oid as PostgreSQL writes it: a
/// forged `pg_tblspc/016385` would otherwise reach tablespace 16385's directory past the checks
/// made on `pg_tblspc/16385/`.
pub(crate) fn tablespace_link_oid(path: &str) -> Option<u32> {
    let oid = path.strip_prefix("pg_tblspc/")?;
    if oid.is_empty() || !oid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    oid.parse().ok().filter(|n: &u32| n.to_string() == oid)
}

fn refused(backup_id: &str, what: String) -> RestoreError {
    RestoreError::Refused(format!(
        "backup {backup_id} has a manifest that cannot be trusted: {what}; nothing was written. \
         Restore another backup (--from BACKUP_ID) and run `lifeline verify --read-data`"
    ))
}

/// A relative, normalised path: no leading `/`, no empty, `.` or `..` component, no NUL.
pub(crate) fn check_relative(path: &str) -> Result<(), String> {
    if path.is_empty()
        || path.starts_with('/')
        || path.contains('\0')
        || path
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
    {
        return Err(format!("unsafe path {path:?}"));
    }
    Ok(())
}

/// A chunk's hash and pack id are 32 bytes each by their type (a manifest naming anything
/// else does not parse): only its sizes and place remain to check.
fn check_chunk(chunk: &ChunkRef) -> Result<(), String> {
    if chunk.len == 0 || chunk.len > MAX_CHUNK_LEN || chunk.stored == 0 {
        return Err(format!(
            "chunk {} has an impossible size ({} bytes, {} stored)",
            chunk.hash, chunk.len, chunk.stored
        ));
    }
    if chunk.offset.checked_add(chunk.stored).is_none() || chunk.stored > MAX_CHUNK_LEN * 2 {
        return Err(format!(
            "chunk {} has an impossible place in its pack",
            chunk.hash
        ));
    }
    Ok(())
}

fn total_len(chunks: &[ChunkRef]) -> Result<u64, String> {
    chunks.iter().try_fold(0u64, |sum, c| {
        check_chunk(c)?;
        sum.checked_add(c.len)
            .ok_or_else(|| "chunk lengths overflow".to_string())
    })
}

/// A relation file's blocks, if the entry holds them: each of a possible size and place, and
/// together the file's size.
pub(crate) fn check_blocks(entry: &FileEntry) -> Result<(), String> {
    if entry.blocks.is_empty() {
        return Ok(());
    }
    let len = total_len(&entry.blocks)?;
    if len == entry.size {
        return Ok(());
    }
    Err(format!(
        "{:?} claims {} bytes but its blocks hold {len}",
        entry.path, entry.size
    ))
}

/// Check a base backup's manifest as a whole; see the module documentation.
pub fn validate_base(manifest: &BackupManifest) -> Result<(), RestoreError> {
    validate_with(manifest, &BlockLists::whole())
}

/// [`validate_base`] for a manifest whose block lists `lists` keeps.
pub(crate) fn validate_with(
    manifest: &BackupManifest,
    lists: &BlockLists,
) -> Result<(), RestoreError> {
    check_base(manifest, lists).map_err(|what| refused(&manifest.backup_id, what))
}

fn check_base(manifest: &BackupManifest, lists: &BlockLists) -> Result<(), String> {
    let bundle_len = total_len(&manifest.bundle)?;
    let mut kinds: HashMap<&str, EntryKind> = HashMap::new();
    for entry in &manifest.files {
        let path = entry.path.as_str();
        check_relative(path)?;
        if kinds.insert(path, entry.kind).is_some() {
            return Err(format!("{path:?} is listed twice"));
        }
        if RESERVED.contains(&path) || path.ends_with(".lifeline-partial") {
            return Err(format!(
                "{path:?} is a name the restore writes itself, never one a backup holds"
            ));
        }
    }
    for (index, entry) in manifest.files.iter().enumerate() {
        let path = entry.path.as_str();
        let blocks = lists.count(manifest, index);
        // Everything but the top level sits in a directory the manifest lists: never beneath a
        // link, never beneath a file.
        if let Some((parent, _)) = path.rsplit_once('/')
            && kinds.get(parent) != Some(&EntryKind::Dir)
        {
            return Err(format!(
                "{path:?} lies beneath {parent:?}, which the backup does not list as a directory"
            ));
        }
        match entry.kind {
            EntryKind::Symlink => check_link(manifest, path)?,
            EntryKind::Dir => {
                if entry.size != 0 || blocks != 0 || entry.bundle_offset.is_some() {
                    return Err(format!("directory {path:?} claims data"));
                }
            }
            EntryKind::File => check_file_data(entry, blocks, bundle_len)?,
        }
    }
    if let Some(reason) = lists.refusal() {
        return Err(reason.to_string());
    }
    check_bundle_ranges(manifest)?;
    check_tablespaces(manifest, &kinds)
}

/// Small files cut the bundle stream into consecutive ranges: two that overlap are forged.
fn check_bundle_ranges(manifest: &BackupManifest) -> Result<(), String> {
    let mut ranges: Vec<(u64, u64, &str)> = manifest
        .files
        .iter()
        .filter(|f| f.size > 0)
        .filter_map(|f| Some((f.bundle_offset?, f.size, f.path.as_str())))
        .collect();
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        let ((start, size, first), (next, _, second)) = (pair[0], pair[1]);
        if start.saturating_add(size) > next {
            return Err(format!(
                "{first:?} and {second:?} claim the same bytes of the small-file bundle"
            ));
        }
    }
    Ok(())
}

fn check_link(manifest: &BackupManifest, path: &str) -> Result<(), String> {
    if path == "pg_wal" {
        return Ok(());
    }
    if let Some(oid) = tablespace_link_oid(path) {
        if manifest.tablespaces.iter().any(|t| t.oid == oid) {
            return Err(format!("tablespace {oid} is both a link and a directory"));
        }
        return Err(format!(
            "tablespace {oid} was recorded as a link only (this backup predates tablespace \
             backups), so its contents are not in the backup and restoring it would point at \
             the live tablespace. Take a new backup with this lifeline"
        ));
    }
    Err(format!(
        "{path:?} is a link, and links are allowed only for pg_wal and pg_tblspc/<oid>"
    ))
}

/// A file's data: a range of the bundle, or `blocks` blocks (checked by [`check_blocks`] when
/// the manifest keeps them), or nothing when empty.
fn check_file_data(entry: &FileEntry, blocks: usize, bundle_len: u64) -> Result<(), String> {
    let path = &entry.path;
    match (entry.bundle_offset, blocks == 0) {
        (Some(_), false) => Err(format!("{path:?} is both a small and a large file")),
        (Some(offset), true) => match offset.checked_add(entry.size) {
            Some(end) if end <= bundle_len => Ok(()),
            _ => Err(format!(
                "{path:?} claims {} bytes at {offset} of a bundle of {bundle_len} bytes",
                entry.size
            )),
        },
        (None, false) => check_blocks(entry),
        (None, true) if entry.size == 0 => Ok(()),
        (None, true) => Err(format!(
            "{path:?} claims {} bytes but has no data",
            entry.size
        )),
    }
}

fn check_tablespaces(
    manifest: &BackupManifest,
    kinds: &HashMap<&str, EntryKind>,
) -> Result<(), String> {
    let mut oids = HashSet::new();
    let mut names = HashSet::new();
    for ts in &manifest.tablespaces {
        let name = ts.name.as_str();
        if !oids.insert(ts.oid) || !names.insert(name) {
            return Err(format!("tablespace {} ({name:?}) is listed twice", ts.oid));
        }
        let dir = format!("pg_tblspc/{}", ts.oid);
        if kinds.get(dir.as_str()) != Some(&EntryKind::Dir) {
            return Err(format!(
                "tablespace {} ({name:?}) has no directory {dir:?} in the backup",
                ts.oid
            ));
        }
        check_version_directory(manifest, &dir, kinds)?;
    }
    Ok(())
}

/// PostgreSQL keeps one thing in a tablespace's location: its version directory,
/// `PG_<major>_<catversion>`. Anything else there would be written straight into a place the
/// manifest names (the original location), so it is refused.
fn check_version_directory(
    manifest: &BackupManifest,
    dir: &str,
    kinds: &HashMap<&str, EntryKind>,
) -> Result<(), String> {
    let major = manifest
        .server_version
        .split(['.', ' '])
        .next()
        .filter(|m| !m.is_empty() && m.bytes().all(|b| b.is_ascii_digit()));
    let prefix = format!("{dir}/");
    for (path, kind) in kinds {
        let Some(rest) = path.strip_prefix(&prefix) else {
            continue;
        };
        let top = rest.split('/').next().unwrap_or_default();
        let version = top
            .strip_prefix("PG_")
            .and_then(|v| v.split_once('_'))
            .filter(|(m, cat)| {
                major.is_none_or(|major| *m == major)
                    && !cat.is_empty()
                    && cat.bytes().all(|b| b.is_ascii_digit())
            });
        if version.is_none() || (top == rest && *kind != EntryKind::Dir) {
            return Err(format!(
                "{path:?} is not inside the tablespace's version directory (PG_{}_<catalog version>)",
                major.unwrap_or("<major>")
            ));
        }
    }
    let versions: HashSet<&str> = kinds
        .keys()
        .filter_map(|p| p.strip_prefix(&prefix)?.split('/').next())
        .collect();
    if versions.len() > 1 {
        return Err(format!("{dir:?} holds more than one version directory"));
    }
    Ok(())
}

/// Check a Redis or dump stream manifest: plain relative names (one subdirectory at most, as
/// Redis's `appendonlydir`), each once, sizes equal to their chunks.
pub fn validate_stream(manifest: &StreamManifest) -> Result<(), RestoreError> {
    check_stream(manifest).map_err(|what| refused(&manifest.backup_id, what))
}

fn check_stream(manifest: &StreamManifest) -> Result<(), String> {
    let mut seen = HashSet::new();
    for file in &manifest.files {
        let name = file.name.as_str();
        check_relative(name)?;
        if name.split('/').count() > 2 || name.ends_with(".lifeline-partial") {
            return Err(format!("{name:?} is not a file name a backup holds"));
        }
        if !seen.insert(name) {
            return Err(format!("{name:?} is listed twice"));
        }
        let len = total_len(&file.chunks)?;
        if len != file.size {
            return Err(format!(
                "{name:?} claims {} bytes but its chunks hold {len}",
                file.size
            ));
        }
    }
    // A file and a directory of the same name cannot both be restored.
    for name in &seen {
        if let Some((dir, _)) = name.split_once('/')
            && seen.contains(dir)
        {
            return Err(format!("{dir:?} is both a file and a directory"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_tablespace_oid_has_one_spelling() {
        assert_eq!(super::tablespace_link_oid("pg_tblspc/16385"), Some(16385));
        assert_eq!(super::tablespace_link_oid("pg_tblspc/016385"), None);
        assert_eq!(super::tablespace_link_oid("pg_tblspc/00"), None);
        assert_eq!(super::tablespace_link_oid("pg_tblspc/4294967296"), None);
        assert_eq!(super::tablespace_link_oid("pg_tblspc/"), None);
    }

    use super::*;
    use storage::manifest::{FileEntry, StreamFile, Tablespace};

    fn chunk(len: u64) -> ChunkRef {
        ChunkRef {
            hash: storage::ChunkHash::from_bytes([0xab; 32]),
            len,
            pack: storage::PackId::from_bytes([0xcd; 32]),
            offset: 0,
            stored: 10,
        }
    }

    fn entry(path: &str, kind: EntryKind) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind,
            mode: 0o700,
            size: 0,
            mtime: 0,
            link_target: None,
            blocks: Vec::new(),
            bundle_offset: None,
        }
    }

    fn file(path: &str, size: u64, blocks: Vec<ChunkRef>) -> FileEntry {
        FileEntry {
            size,
            blocks,
            ..entry(path, EntryKind::File)
        }
    }

    fn link(path: &str, target: &str) -> FileEntry {
        FileEntry {
            link_target: Some(target.into()),
            ..entry(path, EntryKind::Symlink)
        }
    }

    fn manifest(files: Vec<FileEntry>) -> BackupManifest {
        let mut m = testing::fixtures::base_manifest();
        m.files = files;
        m
    }

    fn good() -> BackupManifest {
        let mut m = manifest(vec![
            entry("base", EntryKind::Dir),
            entry("base/1", EntryKind::Dir),
            file("base/1/1259", 16, vec![chunk(8), chunk(8)]),
            FileEntry {
                bundle_offset: Some(0),
                ..file("PG_VERSION", 3, Vec::new())
            },
            link("pg_wal", "/elsewhere/wal"),
            entry("pg_tblspc", EntryKind::Dir),
            entry("pg_tblspc/16385", EntryKind::Dir),
            entry("pg_tblspc/16385/PG_15_202209061", EntryKind::Dir),
            file("pg_tblspc/16385/PG_15_202209061/5", 8, vec![chunk(8)]),
        ]);
        m.bundle = vec![chunk(3)];
        m.tablespaces = vec![Tablespace {
            oid: 16385,
            name: "fast".into(),
            location: "/mnt/fast".into(),
        }];
        m
    }

    fn refusal(m: &BackupManifest) -> String {
        validate_base(m).expect_err("refused").to_string()
    }

    #[test]
    fn a_manifest_as_lifeline_writes_it_passes() {
        validate_base(&good()).expect("valid");
    }

    #[test]
    fn tricks_are_refused_naming_the_entry() {
        // A link, then a directory or file beneath it: writes would land outside the target.
        let mut m = good();
        m.files.push(link("base/evil", "/etc"));
        assert!(refusal(&m).contains("base/evil"), "{}", refusal(&m));
        let mut m = good();
        m.files.push(file("pg_wal/x", 0, Vec::new()));
        assert!(
            refusal(&m).contains("beneath \"pg_wal\""),
            "{}",
            refusal(&m)
        );
        // The same path twice.
        let mut m = good();
        m.files
            .push(file("base/1/1259", 16, vec![chunk(8), chunk(8)]));
        assert!(refusal(&m).contains("twice"), "{}", refusal(&m));
        // Paths that climb out or are absolute.
        for bad in [
            "../etc/passwd",
            "/etc/passwd",
            "base//x",
            "base/./x",
            "base/1/../../x",
        ] {
            let mut m = good();
            m.files.push(file(bad, 0, Vec::new()));
            assert!(
                refusal(&m).contains("unsafe path"),
                "{bad}: {}",
                refusal(&m)
            );
        }
        // A file without its parent directory.
        let mut m = good();
        m.files.push(file("global/pg_control", 0, Vec::new()));
        assert!(refusal(&m).contains("global"), "{}", refusal(&m));
        // A tablespace recorded as a link only (an old backup, or a forged one).
        let mut m = good();
        m.files.push(link("pg_tblspc/16999", "/var/lib/live"));
        assert!(refusal(&m).contains("link only"), "{}", refusal(&m));
        // Names the restore writes itself.
        let mut m = good();
        m.files.push(file("backup_label", 0, Vec::new()));
        assert!(refusal(&m).contains("backup_label"), "{}", refusal(&m));
    }

    #[test]
    fn sizes_must_match_the_data() {
        let mut m = good();
        m.files[2].size = 1 << 40;
        assert!(refusal(&m).contains("claims"), "{}", refusal(&m));
        let mut m = good();
        m.files[3].size = 4;
        assert!(refusal(&m).contains("bundle"), "{}", refusal(&m));
        let mut m = good();
        m.files[2].blocks[0].len = u64::MAX;
        assert!(refusal(&m).contains("impossible"), "{}", refusal(&m));
        let mut m = good();
        m.files[1].size = 5;
        assert!(refusal(&m).contains("directory"), "{}", refusal(&m));
    }

    #[test]
    fn tablespaces_must_be_directories_with_plain_names() {
        // Anything in a tablespace's location but its version directory.
        let mut m = good();
        m.files
            .push(file("pg_tblspc/16385/authorized_keys", 8, vec![chunk(8)]));
        assert!(refusal(&m).contains("version directory"), "{}", refusal(&m));
        let mut m = good();
        m.files
            .push(entry("pg_tblspc/16385/PG_14_202107181", EntryKind::Dir));
        assert!(refusal(&m).contains("version directory"), "{}", refusal(&m));
        let mut m = good();
        m.tablespaces[0].oid = 17000;
        assert!(refusal(&m).contains("no directory"), "{}", refusal(&m));
        let mut m = good();
        m.tablespaces.push(m.tablespaces[0].clone());
        assert!(refusal(&m).contains("twice"), "{}", refusal(&m));
    }

    #[test]
    fn modes_keep_permission_bits_only() {
        assert_eq!(file_mode(0o104_755), 0o700);
        assert_eq!(file_mode(0o6666), 0o600);
        assert_eq!(file_mode(0o640), 0o600);
        assert_eq!(DIR_MODE, 0o700);
    }

    #[test]
    fn stream_manifests_are_checked_too() {
        let json = serde_json::json!({
            "format": 1, "backup_id": "r", "service": "redis", "kind": "rdb",
            "server_version": "7", "source": "x", "started_at": "2025-01-01T00:00:00Z",
            "finished_at": "2025-01-01T00:00:00Z", "files": [], "size_bytes": 0, "new_bytes": 0
        });
        let mut m: StreamManifest = serde_json::from_value(json).expect("manifest");
        let f = |name: &str, size: u64| StreamFile {
            name: name.into(),
            size,
            chunks: vec![chunk(8)],
        };
        m.files = vec![f("dump.rdb", 8)];
        validate_stream(&m).expect("valid");
        for bad in [
            vec![f("dump.rdb", 8), f("dump.rdb", 8)],
            vec![f("../dump.rdb", 8)],
            vec![f("a/b/c", 8)],
            vec![f("dump.rdb", 9)],
            vec![f("d", 8), f("d/x", 8)],
        ] {
            m.files = bad;
            assert!(validate_stream(&m).is_err(), "{:?}", m.files);
        }
    }
}
