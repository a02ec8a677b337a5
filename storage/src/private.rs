//! Files and directories that stay private and keep one owner: everything lifeline creates in
//! and beside a repository (objects, catalog, logs, spool, status files) is 0600, every
//! directory 0700, whatever the umask; and when lifeline runs as root, what it creates is given
//! to the owner of the place it belongs to, so that the next run as that user can use it.
//!
//! The mode is given at creation and set again on the open file: the umask may remove bits
//! (`umask 0277` would leave a file its owner cannot write), it never adds any, and the file is
//! not visible under its final name before both are done (callers create temporary names).

use std::fs::{DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub const FILE_MODE: u32 = 0o600;
pub const DIR_MODE: u32 = 0o700;

/// Whom what lifeline creates must belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Owner {
    /// Uid and gid to give new files; `None` keeps the process's own.
    ids: Option<(u32, u32)>,
}

impl Owner {
    /// Keep the process's own user and group (not root, or root in root's place).
    pub const KEEP: Owner = Owner { ids: None };

    /// The owner for what is created under `path` (or under its nearest existing ancestor):
    /// its owner and group when the process runs as root, else the process's own.
    pub fn of(path: &Path) -> Owner {
        if !running_as_root() {
            return Owner::KEEP;
        }
        let mut current = Some(path);
        while let Some(dir) = current {
            if let Ok(meta) = std::fs::metadata(dir) {
                return Owner::from_ids(meta.uid(), meta.gid());
            }
            current = dir.parent();
        }
        Owner::KEEP
    }

    fn from_ids(uid: u32, gid: u32) -> Owner {
        if uid == 0 && gid == 0 {
            Owner::KEEP
        } else {
            Owner {
                ids: Some((uid, gid)),
            }
        }
    }

    /// The uid new files get, if not the process's.
    pub fn uid(&self) -> Option<u32> {
        self.ids.map(|(uid, _)| uid)
    }

    /// Give the open `file` to this owner.
    pub fn apply(&self, file: &File) -> io::Result<()> {
        match self.ids {
            Some((uid, gid)) => std::os::unix::fs::fchown(file, Some(uid), Some(gid)),
            None => Ok(()),
        }
    }

    /// Give `path` itself (never what a symbolic link there points to) to this owner.
    pub fn apply_path(&self, path: &Path) -> io::Result<()> {
        match self.ids {
            Some((uid, gid)) => std::os::unix::fs::lchown(path, Some(uid), Some(gid)),
            None => Ok(()),
        }
    }
}

pub fn running_as_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The login name of `uid` from /etc/passwd, else `uid N`.
pub fn user_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let id: u32 = fields.nth(1)?.parse().ok()?;
                (id == uid && !name.is_empty()).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Make the open `file` private (0600) and give it to `owner`.
fn finish_file(file: File, owner: Owner) -> io::Result<File> {
    file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    owner.apply(&file)?;
    Ok(file)
}

/// Create `path`, which must not exist, for writing: 0600, owned by `owner`.
pub fn create_new_file(path: &Path, owner: Owner) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)?;
    finish_file(file, owner)
}

/// Create or truncate `path` for writing: 0600, owned by `owner` (for temporary names only:
/// a file that existed is made private too).
pub fn create_file(path: &Path, owner: Owner) -> io::Result<File> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    finish_file(file, owner)
}

/// Open `path` for writing without truncating it, creating it 0600 and owned by `owner` when
/// it does not exist (lock files, SQLite databases); an existing file is left as it is.
pub fn open_or_create_file(path: &Path, owner: Owner) -> io::Result<File> {
    match create_new_file(path, owner) {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => OpenOptions::new().write(true).open(path),
        other => other,
    }
}

/// Create the directory `path` (its parent must exist): 0700, owned by `owner`. True when it
/// was created, false when a directory was already there.
pub fn create_dir(path: &Path, owner: Owner) -> io::Result<bool> {
    match DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::AlreadyExists && path.is_dir() => return Ok(false),
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(path, Permissions::from_mode(DIR_MODE))?;
    owner.apply_path(path)?;
    Ok(true)
}

/// Create `path` and its missing parents, each 0700 and owned by `owner`; the directories
/// that were created, outermost first.
pub fn create_dir_all(path: &Path, owner: Owner) -> io::Result<Vec<std::path::PathBuf>> {
    let mut missing = Vec::new();
    let mut current = Some(path);
    while let Some(dir) = current {
        if dir.as_os_str().is_empty() || dir.is_dir() {
            break;
        }
        missing.push(dir);
        current = dir.parent();
    }
    let mut created = Vec::new();
    for dir in missing.into_iter().rev() {
        if create_dir(dir, owner)? {
            created.push(dir.to_path_buf());
        }
    }
    Ok(created)
}

/// Tighten an existing file lifeline owns to 0600 when it is readable by others (a file left
/// by an older version); a file of another user is left alone.
pub fn tighten_file(path: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_file()
        && meta.mode() & 0o077 != 0
        && (meta.uid() == effective_uid() || running_as_root())
    {
        std::fs::set_permissions(path, Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).expect("stat").mode() & 0o777
    }

    #[test]
    fn files_and_directories_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("a/b/c");
        let created = create_dir_all(&nested, Owner::KEEP).expect("mkdir");
        assert_eq!(created.len(), 3);
        assert!(
            create_dir_all(&nested, Owner::KEEP)
                .expect("again")
                .is_empty()
        );
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&dir.path().join(d)), 0o700, "{d}");
        }
        let file = nested.join("f");
        drop(create_new_file(&file, Owner::KEEP).expect("create"));
        assert_eq!(mode(&file), 0o600);
        assert!(create_new_file(&file, Owner::KEEP).is_err());
        drop(open_or_create_file(&file, Owner::KEEP).expect("reopen"));
        std::fs::set_permissions(&file, Permissions::from_mode(0o644)).expect("chmod");
        tighten_file(&file).expect("tighten");
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn user_names_come_from_passwd() {
        assert_eq!(user_name(0), "root");
        assert_eq!(user_name(4_000_000_000), "uid 4000000000");
    }
}
