//! A consistent copy of Redis 7's multi-part AOF: the manifest, the base file and the
//! incremental files it names, read from Redis's data directory (which Redis itself is asked
//! for: `CONFIG GET dir`, `appenddirname`, `appendfilename`).
//!
//! Consistency: the files named by the manifest are opened (pinned: a rewrite that deletes
//! them later cannot take their bytes away) and the size of each incremental file is taken;
//! then the manifest is read again. If it changed, a rewrite switched files in between, and
//! the whole pinning is retried; a rewrite in progress is waited out first. The copy is the
//! base plus every incremental file up to its pinned size, which Redis loads as the dataset at
//! that moment (a command cut at the end is dropped by `aof-load-truncated`, on by default).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::ArchiveError;
use crate::redis::{RedisOptions, config_value, info_value};

/// How long to keep trying for a moment with no rewrite switching files.
const PATIENCE: Duration = Duration::from_secs(60);

/// One AOF file pinned for copying: its name (relative to Redis's `dir`) and bytes to copy.
#[derive(Debug)]
pub struct PinnedFile {
    pub name: String,
    pub file: File,
    pub size: u64,
}

/// The pinned files of one consistent AOF, the manifest first.
#[derive(Debug)]
pub struct PinnedAof {
    pub files: Vec<PinnedFile>,
}

fn refused(what: impl Into<String>) -> ArchiveError {
    ArchiveError::Precondition(what.into())
}

/// Pin a consistent set of AOF files of the Redis at `opts`.
pub fn pin_aof(opts: &RedisOptions) -> Result<PinnedAof, ArchiveError> {
    if info_value(opts, "persistence", "aof_enabled")?.as_deref() != Some("1") {
        return Err(refused(
            "Redis has appendonly off: back it up with --kind rdb, or CONFIG SET appendonly yes",
        ));
    }
    let dir = PathBuf::from(config_value(opts, "dir")?);
    let subdir = config_value(opts, "appenddirname")?;
    let base_name = config_value(opts, "appendfilename")?;
    // Redis itself allows only plain names here; anything else is not a Redis answering.
    for (setting, value) in [("appenddirname", &subdir), ("appendfilename", &base_name)] {
        if value.is_empty() || value.contains('/') || value == "." || value == ".." {
            return Err(refused(format!(
                "Redis answered CONFIG GET {setting} with {value:?}, which is not a file name"
            )));
        }
    }
    let aof_dir = dir.join(&subdir);
    let manifest_path = aof_dir.join(format!("{base_name}.manifest"));
    let started = std::time::Instant::now();
    while started.elapsed() < PATIENCE {
        if info_value(opts, "persistence", "aof_rewrite_in_progress")?.as_deref() == Some("1") {
            // pin_aof runs on a blocking thread (run_aof_backup), as its Redis connection does.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let before = read_manifest(&manifest_path)?;
        let mut files = vec![pin(
            &manifest_path,
            format!("{subdir}/{base_name}.manifest"),
        )?];
        for name in manifest_files(&before)? {
            files.push(pin(&aof_dir.join(&name), format!("{subdir}/{name}"))?);
        }
        let after = read_manifest(&manifest_path)?;
        if before == after {
            // The manifest's own pinned size is what was read: the same text.
            return Ok(PinnedAof { files });
        }
        // On a blocking thread, as above.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(refused(format!(
        "the AOF in {} kept changing for a minute (rewrites back to back); try again, or use --kind rdb",
        aof_dir.display()
    )))
}

/// A manifest names a few files in a few hundred bytes; anything far larger is not one.
const MAX_MANIFEST: u64 = 1 << 20;

fn read_manifest(path: &Path) -> Result<String, ArchiveError> {
    let cannot = |e: std::io::Error| {
        refused(format!(
            "cannot read the AOF manifest {} ({e}): run the backup on the Redis host as a user that can read Redis's data directory",
            path.display()
        ))
    };
    let mut text = String::new();
    File::open(path)
        .map_err(cannot)?
        .take(MAX_MANIFEST + 1)
        .read_to_string(&mut text)
        .map_err(cannot)?;
    if text.len() as u64 > MAX_MANIFEST {
        return Err(refused(format!(
            "the AOF manifest {} is larger than {} KiB: it is not a Redis AOF manifest",
            path.display(),
            MAX_MANIFEST >> 10
        )));
    }
    Ok(text)
}

fn pin(path: &Path, name: String) -> Result<PinnedFile, ArchiveError> {
    let file = File::open(path).map_err(|e| {
        refused(format!(
            "cannot open {} ({e}); a rewrite may have removed it",
            path.display()
        ))
    })?;
    let size = file
        .metadata()
        .map_err(|e| refused(format!("cannot stat {}: {e}", path.display())))?
        .len();
    Ok(PinnedFile { name, file, size })
}

/// The base and incremental file names of a manifest (history files are being deleted).
pub fn manifest_files(manifest: &str) -> Result<Vec<String>, ArchiveError> {
    let mut files = Vec::new();
    for line in manifest.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let value = |key: &str| {
            fields
                .chunks(2)
                .find(|pair| pair.first() == Some(&key))
                .and_then(|pair| pair.get(1).copied())
        };
        let (Some(name), Some(kind)) = (value("file"), value("type")) else {
            return Err(refused(format!(
                "the AOF manifest has a line lifeline cannot read: {line:?}"
            )));
        };
        if name.contains('/') || name.starts_with('.') {
            return Err(refused(format!(
                "the AOF manifest names an odd file: {name:?}"
            )));
        }
        if matches!(kind, "b" | "i") {
            files.push(name.to_string());
        }
    }
    if files.is_empty() {
        return Err(refused("the AOF manifest names no files"));
    }
    Ok(files)
}

impl PinnedFile {
    /// The pinned bytes: the whole file as it was when pinned, nothing appended since.
    pub fn reader(self) -> impl Read + Send + 'static {
        self.file.take(self.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_name_their_base_and_incremental_files() {
        let text = "file appendonly.aof.2.base.rdb seq 2 type b\nfile appendonly.aof.1.incr.aof seq 1 type h\nfile appendonly.aof.3.incr.aof seq 3 type i\nfile appendonly.aof.4.incr.aof seq 4 type i\n";
        assert_eq!(
            manifest_files(text).expect("parse"),
            [
                "appendonly.aof.2.base.rdb",
                "appendonly.aof.3.incr.aof",
                "appendonly.aof.4.incr.aof"
            ]
        );
        assert!(manifest_files("").is_err());
        assert!(manifest_files("file ../x seq 1 type b").is_err());
        assert!(manifest_files("garbage").is_err());
    }
}
