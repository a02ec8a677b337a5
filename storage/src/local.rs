//! The local filesystem backend: a repository is a directory, a key is a relative path.
//!
//! Crash safety: every put writes a uniquely named temporary file (`.tmp.*`, ignored by
//! `list`) in the target directory, then renames it into place (`Overwrite`) or hard-links it
//! (`Create`, so an existing object is never replaced). Immediate puts fsync the file before
//! the rename and the directory after; deferred puts are made durable by one `syncfs` in
//! [`Storage::sync`].

use std::io::ErrorKind;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::atomic::{StagedFile, WriteOptions};
use crate::private::{self, Owner};
use crate::storage::{ObjectReader, TEMP_PREFIX, validate_key};
use crate::{Durability, ObjectMeta, PutMode, Storage, StorageError};

#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    /// Whom every file and directory created here is given to: the repository's owner.
    owner: Owner,
}

/// The one-line refusal for a repository directory that is not there.
fn missing_repository(root: &Path) -> StorageError {
    let shown = root.display();
    StorageError::Unavailable {
        path: root.to_path_buf(),
        reason: format!(
            "BACKUP_DIR {shown} does not exist: create it, owned by the user that runs \
             PostgreSQL (mkdir -m 700 {shown} && chown postgres: {shown}), or fix BACKUP_DIR"
        ),
    }
}

/// The repository directory's metadata, or why it cannot be one.
fn repository_dir(root: &Path) -> Result<std::fs::Metadata, StorageError> {
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => Ok(meta),
        Ok(_) => Err(StorageError::Unavailable {
            path: root.to_path_buf(),
            reason: "it is not a directory; point BACKUP_DIR at the repository's directory".into(),
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Err(missing_repository(root)),
        Err(e) => Err(StorageError::Unavailable {
            path: root.to_path_buf(),
            reason: format!("{e}; check BACKUP_DIR and its permissions"),
        }),
    }
}

impl LocalStorage {
    /// Open a repository for writing. Its directory must exist (an unmounted volume or a typo
    /// must not become a new, empty repository); what goes inside is created on first use.
    /// Only its owner, or root on the owner's behalf, may write: every file keeps one owner.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        use std::os::unix::fs::MetadataExt;
        let root = root.into();
        let meta = repository_dir(&root)?;
        let me = private::effective_uid();
        if me != 0 && meta.uid() != me {
            let owner = private::user_name(meta.uid());
            return Err(StorageError::Unavailable {
                reason: format!(
                    "it belongs to {owner} and lifeline runs as {}: run it as {owner} \
                     (runuser -u {owner} -- lifeline ...) so that the repository keeps one owner",
                    private::user_name(me)
                ),
                path: root,
            });
        }
        let owner = Owner::of(&root);
        Ok(LocalStorage { root, owner })
    }

    /// Open an existing repository for reading (a restore still writes its lease, given to
    /// the repository's owner).
    pub fn open_existing(root: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let root = root.into();
        repository_dir(&root)?;
        let owner = Owner::of(&root);
        Ok(LocalStorage { root, owner })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

fn map_open_error(key: &str, path: &Path, e: std::io::Error) -> StorageError {
    if e.kind() == ErrorKind::NotFound {
        StorageError::NotFound {
            key: key.to_string(),
        }
    } else {
        StorageError::io(path, e)
    }
}

#[async_trait]
impl Storage for LocalStorage {
    async fn put_stream(
        &self,
        key: &str,
        payload: ObjectReader,
        mode: PutMode,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        let root = self.root.clone();
        let owner = self.owner;
        let setup = (root.clone(), path.clone());
        let staged = tokio::task::spawn_blocking(move || {
            let (root, path) = setup;
            ensure_dir(&root, path.parent().unwrap_or(&root), owner, durability)?;
            let staged = StagedFile::create(&path, put_options(owner, durability))?;
            let file = staged
                .as_file()
                .try_clone()
                .map_err(|e| StorageError::io(staged.temp_path(), e))?;
            Ok::<_, StorageError>((staged, file))
        })
        .await
        .map_err(|e| StorageError::io(&root, std::io::Error::other(e)))?;
        let (staged, file) = staged?;
        let written =
            write_temp(staged.temp_path(), tokio::fs::File::from_std(file), payload).await;
        let key = key.to_string();
        tokio::task::spawn_blocking(move || {
            // On an error, dropping the staged file removes it.
            written?;
            finish(staged, &key, mode)
        })
        .await
        .map_err(|e| StorageError::io(&root, std::io::Error::other(e)))?
    }

    async fn put_bytes(
        &self,
        key: &str,
        bytes: Vec<u8>,
        mode: PutMode,
        durability: Durability,
    ) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        let root = self.root.clone();
        let key = key.to_string();
        let owner = self.owner;
        // One blocking task for the whole write: an async write per buffer costs a thread hop
        // each, which is most of the time `wal push` spends writing.
        tokio::task::spawn_blocking(move || {
            put_blocking(&root, owner, &path, &key, &bytes, mode, durability)
        })
        .await
        .map_err(|e| StorageError::io(&self.root, std::io::Error::other(e)))?
    }

    async fn get_stream(&self, key: &str) -> Result<ObjectReader, StorageError> {
        let path = self.path_of(key)?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| map_open_error(key, &path, e))?;
        Ok(Box::new(tokio::io::BufReader::with_capacity(1 << 20, file)))
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Vec<u8>, StorageError> {
        let path = self.path_of(key)?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| map_open_error(key, &path, e))?;
        file.seek(std::io::SeekFrom::Start(range.start))
            .await
            .map_err(|e| StorageError::io(&path, e))?;
        let mut bytes = Vec::new();
        file.take(range.end.saturating_sub(range.start))
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| StorageError::io(&path, e))?;
        Ok(bytes)
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StorageError> {
        let path = self.path_of(key)?;
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|e| map_open_error(key, &path, e))?;
        Ok(ObjectMeta {
            key: key.to_string(),
            size: meta.len(),
            last_modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || list_blocking(&root, &prefix))
            .await
            .map_err(|e| StorageError::io(&self.root, std::io::Error::other(e)))?
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(&path, e)),
        }
    }

    async fn sync(&self) -> Result<(), StorageError> {
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let dir = std::fs::File::open(&root).map_err(|e| StorageError::io(&root, e))?;
            rustix::fs::syncfs(&dir).map_err(|e| StorageError::io(&root, e.into()))
        })
        .await
        .map_err(|e| StorageError::io(&self.root, std::io::Error::other(e)))?
    }

    async fn sync_object(&self, key: &str) -> Result<(), StorageError> {
        let (path, key) = (self.path_of(key)?, key.to_string());
        tokio::task::spawn_blocking(move || {
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| map_open_error(&key, &path, e))?;
            match path.parent() {
                Some(dir) => fsync_dir(dir),
                None => Ok(()),
            }
        })
        .await
        .map_err(|e| StorageError::io(&self.root, std::io::Error::other(e)))?
    }

    fn describe(&self) -> String {
        self.root.display().to_string()
    }
}

fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| StorageError::io(dir, e))
}

/// Create `dir` if needed (private, given to the repository's owner); for durable puts, fsync
/// the parents of what was created.
fn ensure_dir(
    root: &Path,
    dir: &Path,
    owner: Owner,
    durability: Durability,
) -> Result<(), StorageError> {
    if std::fs::metadata(dir).is_ok() {
        return Ok(());
    }
    if !dir.starts_with(root) {
        return Err(StorageError::io(
            dir,
            std::io::Error::other("outside the repository"),
        ));
    }
    // The repository's own directory is never created here: it vanished since `open`.
    if std::fs::metadata(root).is_err() {
        return Err(missing_repository(root));
    }
    private::create_dir_all(dir, owner).map_err(|e| StorageError::io(dir, e))?;
    if durability == Durability::Immediate {
        let mut current = dir;
        while let Some(parent) = current.parent() {
            fsync_dir(parent)?;
            if parent == root || !parent.starts_with(root) {
                break;
            }
            current = parent;
        }
    }
    Ok(())
}

/// Durable puts are fsynced; deferred ones wait for [`Storage::sync`].
fn put_options(owner: Owner, durability: Durability) -> WriteOptions {
    WriteOptions::private(owner).durability(durability)
}

fn put_blocking(
    root: &Path,
    owner: Owner,
    path: &Path,
    key: &str,
    bytes: &[u8],
    mode: PutMode,
    durability: Durability,
) -> Result<(), StorageError> {
    let dir = path.parent().unwrap_or(root);
    ensure_dir(root, dir, owner, durability)?;
    let mut staged = StagedFile::create(path, put_options(owner, durability))?;
    staged.write_all(bytes)?;
    finish(staged, key, mode)
}

/// Move the staged object into place: replacing (`Overwrite`) or never (`Create`).
fn finish(staged: StagedFile, key: &str, mode: PutMode) -> Result<(), StorageError> {
    match mode {
        PutMode::Overwrite => Ok(staged.commit()?),
        PutMode::Create => staged.commit_new().map_err(|e| {
            if e.source.kind() == ErrorKind::AlreadyExists {
                StorageError::AlreadyExists {
                    key: key.to_string(),
                }
            } else {
                e.into()
            }
        }),
    }
}

async fn write_temp(
    temp: &Path,
    mut file: tokio::fs::File,
    payload: ObjectReader,
) -> Result<(), StorageError> {
    let mut reader = tokio::io::BufReader::with_capacity(1 << 20, payload);
    tokio::io::copy_buf(&mut reader, &mut file)
        .await
        .map_err(|e| StorageError::io(temp, e))?;
    file.flush().await.map_err(|e| StorageError::io(temp, e))
}

fn list_blocking(root: &Path, prefix: &str) -> Result<Vec<ObjectMeta>, StorageError> {
    // Start from the deepest directory the prefix names, so listing one timeline does not walk
    // the whole repository.
    let start_rel = match prefix.rfind('/') {
        Some(i) => &prefix[..i],
        None => "",
    };
    let start = if start_rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(start_rel)
    };
    let mut out = Vec::new();
    let mut stack = vec![start];
    while let Some(dir) = stack.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(StorageError::io(&dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let path = entry.path();
            let meta = entry.metadata().map_err(|e| StorageError::io(&path, e))?;
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            let Ok(rel) = path.strip_prefix(root) else {
                continue;
            };
            let key = rel.to_string_lossy().replace('\\', "/");
            if key.starts_with(prefix) && validate_key(&key).is_ok() {
                out.push(ObjectMeta {
                    key,
                    size: meta.len(),
                    last_modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                });
            }
        }
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keeps_the_backend_contract() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalStorage::open(dir.path()).expect("open");
        crate::conformance::check_backend(&store).await;
        let leftovers: Vec<_> = walk(dir.path())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(TEMP_PREFIX))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temporary files left behind: {leftovers:?}"
        );
        assert_private(dir.path());
    }

    /// Every file and directory under `root` (not `root` itself) is its owner's only.
    fn assert_private(root: &Path) {
        use std::os::unix::fs::MetadataExt;
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).expect("read_dir") {
                let path = entry.expect("entry").path();
                let meta = std::fs::symlink_metadata(&path).expect("stat");
                let expected = if meta.is_dir() { 0o700 } else { 0o600 };
                assert_eq!(meta.mode() & 0o777, expected, "{}", path.display());
                if meta.is_dir() {
                    stack.push(path);
                }
            }
        }
    }

    #[test]
    fn a_missing_repository_is_never_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("unmounted");
        let err = LocalStorage::open(&root).expect_err("opened a missing repository");
        let message = err.to_string();
        assert!(
            message.contains(&format!("BACKUP_DIR {} does not exist", root.display()))
                && message.contains("mkdir -m 700"),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
        assert!(LocalStorage::open_existing(&root).is_err());
        assert!(!root.exists(), "the repository directory was created");
    }

    #[tokio::test]
    async fn a_repository_removed_after_open_is_not_recreated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("repo");
        std::fs::create_dir(&root).expect("mkdir");
        let store = LocalStorage::open(&root).expect("open");
        store
            .put_bytes(
                "wal/x",
                b"a".to_vec(),
                PutMode::Create,
                Durability::Immediate,
            )
            .await
            .expect("put");
        std::fs::remove_dir_all(&root).expect("unmount");
        assert!(
            store
                .put_bytes(
                    "wal/y",
                    b"b".to_vec(),
                    PutMode::Create,
                    Durability::Immediate
                )
                .await
                .is_err()
        );
        assert!(!root.exists(), "the repository directory was created again");
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    #[test]
    fn keys_cannot_escape_the_repository() {
        for key in ["", "/etc/passwd", "a/../b", "a//b", "a/.tmp.x", "a b"] {
            assert!(validate_key(key).is_err(), "{key:?} accepted");
        }
        assert!(validate_key("wal/7312/00000001/000000010000000000000001").is_ok());
    }
}
