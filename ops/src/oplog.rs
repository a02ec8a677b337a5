//! Operation logs: every operation (backups, restores, prune, verify, failover, drills) writes
//! `BACKUP_DIR/logs/<operation>_YYYYMMDD_HHMMSS.log`, the same events as the terminal plus the
//! report lines, so the incident review has the whole story. `wal push`/`wal fetch` run once
//! per segment and log to PostgreSQL's server log instead.

use std::fs::File;
use std::path::PathBuf;

/// Create the log file of `operation` (0600 in a 0700 `logs/`, as root given to the owner of
/// BACKUP_DIR); None (with a warning on stderr) when it cannot be, as a missing log must not
/// stop a restore. A missing BACKUP_DIR is never created here: the command says what to do.
pub fn open(backup_dir: Option<&std::path::Path>, operation: &str) -> Option<(File, PathBuf)> {
    use storage::private::{self, Owner};
    let backup_dir = backup_dir?;
    if !backup_dir.is_dir() {
        return None;
    }
    let owner = Owner::of(backup_dir);
    let dir = backup_dir.join("logs");
    let stamp = jiff::Zoned::now().strftime("%Y%m%d_%H%M%S").to_string();
    let create = || -> std::io::Result<(File, PathBuf)> {
        private::create_dir(&dir, owner)?;
        // A log written through a link would land, owned by the repository's owner, wherever
        // the link points.
        if std::fs::symlink_metadata(&dir)?.file_type().is_symlink() {
            return Err(std::io::Error::other(
                "it is a link, not a directory: make it a directory",
            ));
        }
        for n in 0..100 {
            let name = if n == 0 {
                format!("{operation}_{stamp}.log")
            } else {
                format!("{operation}_{stamp}_{n}.log")
            };
            let path = dir.join(name);
            match private::create_new_file(&path, owner) {
                Ok(file) => return Ok((file, path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other("100 logs in one second"))
    };
    match create() {
        Ok(opened) => Some(opened),
        Err(e) => {
            eprintln!(
                "lifeline: warning: no operation log in {} ({e}); continuing",
                dir.display()
            );
            None
        }
    }
}
