//! Operation logs: every operation (backups, restores, prune, verify, failover, drills) writes
//! `BACKUP_DIR/logs/<operation>_YYYYMMDD_HHMMSS.log`, the same events as the terminal plus the
//! report lines, so the incident review has the whole story. `wal push`/`wal fetch` run once
//! per segment and log to PostgreSQL's server log instead.

use std::fs::File;
use std::path::PathBuf;

/// Create the log file of `operation`; None (with a warning on stderr) when it cannot be, as
/// a missing log must not stop a restore.
pub fn open(backup_dir: Option<&std::path::Path>, operation: &str) -> Option<(File, PathBuf)> {
    let dir = backup_dir?.join("logs");
    let stamp = jiff::Zoned::now().strftime("%Y%m%d_%H%M%S").to_string();
    let create = || -> std::io::Result<(File, PathBuf)> {
        std::fs::create_dir_all(&dir)?;
        for n in 0..100 {
            let name = if n == 0 {
                format!("{operation}_{stamp}.log")
            } else {
                format!("{operation}_{stamp}_{n}.log")
            };
            let path = dir.join(name);
            match File::options().write(true).create_new(true).open(&path) {
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
