//! Which PostgreSQL server binaries (`postgres`, `pg_ctl`) start a restored backup: those of
//! the backup's major, never another's (PostgreSQL refuses a data directory of another major,
//! and at 3 a.m. that refusal should come before the restore, with the fix).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where the server binaries of each major may be, as configured.
#[derive(Debug, Clone, Default)]
pub struct ServerBinaries {
    /// `[pg-bin-dirs]`: the directory of each major, by major.
    pub per_major: BTreeMap<u32, PathBuf>,
    /// `pg-bin-dir` / `PG_BIN_DIR`: used for the major its `postgres` is.
    pub configured: Option<PathBuf>,
    /// Where a distribution installs them, `<root>/<major>/bin` (Debian's /usr/lib/postgresql).
    pub installed_root: PathBuf,
}

impl ServerBinaries {
    /// The settings' directories, with Debian's layout as the installed root.
    pub fn new(per_major: BTreeMap<u32, PathBuf>, configured: Option<PathBuf>) -> Self {
        ServerBinaries {
            per_major,
            configured,
            installed_root: PathBuf::from("/usr/lib/postgresql"),
        }
    }

    /// What `backup` needs to be started: its major and that major's binaries, or why none
    /// were found. A restore goes on without them (the directory may be started elsewhere)
    /// but says so.
    pub async fn for_backup(
        &self,
        storage: &dyn storage::Storage,
        backup: &catalog::BackupRecord,
    ) -> Result<BackupBinaries, storage::StorageError> {
        let major = major_of_backup(storage, backup).await?;
        let dir = match major {
            Some(major) => self.for_major(major).await,
            None => Err("it does not record its PostgreSQL major".into()),
        };
        Ok(BackupBinaries {
            backup_id: backup.backup_id.clone(),
            major,
            dir,
        })
    }

    /// The directory whose `postgres` is of `major`, or why there is none (with the fix).
    pub async fn for_major(&self, major: u32) -> Result<PathBuf, String> {
        if let Some(dir) = self.per_major.get(&major) {
            return match major_of(dir).await {
                Ok(found) if found == major => Ok(dir.clone()),
                Ok(found) => Err(format!(
                    "pg-bin-dirs.{major} = {} holds PostgreSQL {found}, not {major}: point it at PostgreSQL {major}'s bin directory",
                    dir.display()
                )),
                Err(why) => Err(format!("pg-bin-dirs.{major} = {}: {why}", dir.display())),
            };
        }
        let installed = self.installed_root.join(major.to_string()).join("bin");
        // RHEL's layout, then whatever PATH names.
        let rhel = PathBuf::from(format!("/usr/pgsql-{major}/bin"));
        let path_dirs = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default();
        let candidates = self.configured.iter().chain([&installed, &rhel]);
        let mut tried = Vec::new();
        for dir in candidates.chain(path_dirs.iter().filter(|d| d.join("postgres").is_file())) {
            match major_of(dir).await {
                Ok(found) if found == major => return Ok(dir.clone()),
                Ok(found) => tried.push(format!("{} is PostgreSQL {found}", dir.display())),
                Err(why) => tried.push(format!("{}: {why}", dir.display())),
            }
        }
        Err(format!(
            "the backup is PostgreSQL {major} and no server binaries of {major} were found ({}): install PostgreSQL {major}'s server, or set [pg-bin-dirs] {major} = \"/path/to/its/bin\" in the configuration",
            tried.join("; ")
        ))
    }
}

/// A backup's major and where its server binaries are. `Display` is the line a restore prints.
#[derive(Debug, Clone)]
pub struct BackupBinaries {
    pub backup_id: String,
    pub major: Option<u32>,
    pub dir: Result<PathBuf, String>,
}

impl std::fmt::Display for BackupBinaries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.major, &self.dir) {
            (Some(major), Ok(dir)) => write!(
                f,
                "{} needs PostgreSQL {major}: its server is in {}",
                self.backup_id,
                dir.display()
            ),
            (Some(major), Err(why)) => write!(
                f,
                "{} needs PostgreSQL {major}; warning: {why}",
                self.backup_id
            ),
            (None, _) => write!(
                f,
                "{} does not record its PostgreSQL major: start it with the major it was taken from",
                self.backup_id
            ),
        }
    }
}

/// The PostgreSQL major `backup` was taken from: the catalog's row says, or for a row from
/// before versions were listed, its manifest. None when neither records it.
pub async fn major_of_backup(
    storage: &dyn storage::Storage,
    backup: &catalog::BackupRecord,
) -> Result<Option<u32>, storage::StorageError> {
    if let Some(major) = storage::pg_version::major_of_version(&backup.server_version) {
        return Ok(Some(major));
    }
    let manifest = storage::manifest::BackupManifest::load(storage, &backup.backup_id).await?;
    Ok(manifest.major())
}

/// The major of the `postgres` in `dir`, from `postgres --version`: run only when no other
/// user could have put it there (a failover runs as root).
async fn major_of(dir: &Path) -> Result<u32, String> {
    let postgres = dir.join("postgres");
    if !postgres.is_file() {
        return Err("no postgres there".into());
    }
    trusted(&postgres)?;
    trusted(dir)?;
    let run = tokio::process::Command::new(&postgres)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(std::time::Duration::from_secs(10), run)
        .await
        .map_err(|_| "postgres --version did not answer within 10 s".to_string())?
        .map_err(|e| format!("postgres --version did not run ({e})"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "postgres --version failed: {} (are its libraries on LD_LIBRARY_PATH?)",
            stderr.trim()
        ));
    }
    parse_version_output(&text).ok_or_else(|| format!("postgres --version said {:?}", text.trim()))
}

/// Owned by root or by this user, and writable by nobody else.
fn trusted(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != me {
        return Err(format!(
            "{} belongs to uid {}, neither root nor this user: not run",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} is writable by other users: not run (chmod go-w it)",
            path.display()
        ));
    }
    Ok(())
}

/// "postgres (PostgreSQL) 15.4 (Debian 15.4-1)" -> 15.
fn parse_version_output(text: &str) -> Option<u32> {
    let version = text.split(')').nth(1)?.split_whitespace().next()?;
    storage::pg_version::major_of_version(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A directory whose `postgres --version` says `version`.
    fn fake_bin(root: &Path, name: &str, version: &str) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let postgres = dir.join("postgres");
        let script = format!("#!/bin/sh\necho 'postgres (PostgreSQL) {version}'\n");
        std::fs::write(&postgres, script).expect("write");
        std::fs::set_permissions(&postgres, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    }

    #[test]
    fn version_lines_name_their_major() {
        assert_eq!(
            parse_version_output("postgres (PostgreSQL) 15.4 (Debian 15.4-1)\n"),
            Some(15)
        );
        assert_eq!(
            parse_version_output("postgres (PostgreSQL) 18beta1\n"),
            Some(18)
        );
        assert_eq!(parse_version_output("nonsense"), None);
    }

    #[tokio::test]
    async fn the_binaries_of_the_backups_major_are_found_and_no_others() {
        let root = tempfile::tempdir().expect("tempdir");
        let installed = root.path().join("lib");
        fake_bin(&installed, "13/bin", "13.20");
        fake_bin(&installed, "15/bin", "15.4");
        let configured = fake_bin(root.path(), "custom", "16.2");
        let pinned = fake_bin(root.path(), "pinned", "17.1");
        let binaries = ServerBinaries {
            per_major: BTreeMap::from([(17, pinned.clone()), (18, configured.clone())]),
            configured: Some(configured.clone()),
            installed_root: installed.clone(),
        };
        assert_eq!(binaries.for_major(13).await, Ok(installed.join("13/bin")));
        assert_eq!(binaries.for_major(16).await, Ok(configured));
        assert_eq!(binaries.for_major(17).await, Ok(pinned));
        let wrong = binaries.for_major(18).await.expect_err("16 is not 18");
        assert!(wrong.contains("holds PostgreSQL 16, not 18"), "{wrong}");
        let none = binaries.for_major(14).await.expect_err("no 14 anywhere");
        assert!(none.contains("[pg-bin-dirs] 14"), "{none}");
        assert!(none.contains("PostgreSQL 16"), "{none}");
        // A postgres others can replace is never run.
        let open = fake_bin(root.path(), "open", "14.1");
        std::fs::set_permissions(
            open.join("postgres"),
            std::fs::Permissions::from_mode(0o777),
        )
        .expect("chmod");
        let binaries = ServerBinaries {
            configured: Some(open),
            ..binaries
        };
        let refused = binaries.for_major(14).await.expect_err("not trusted");
        assert!(refused.contains("writable by other users"), "{refused}");
    }
}
