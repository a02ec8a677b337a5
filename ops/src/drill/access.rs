//! Who may reach the scratch server, and where: its socket directory and its own
//! authentication files, private to the drill's OS user.

use std::path::{Path, PathBuf};

use crate::DrillError;

/// Where the scratch server's Unix socket lives: the scratch directory when its path fits a
/// socket address and PostgreSQL's list syntax, else a private directory under /tmp.
pub(super) struct SocketDir {
    pub(super) path: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// `sun_path` holds 108 bytes with the closing NUL.
const SOCKET_PATH_MAX: usize = 107;

/// `/.s.PGSQL.65535`
const SOCKET_NAME_MAX: usize = 15;

impl SocketDir {
    /// Blocking: creates a directory when the scratch directory does not fit.
    pub(super) fn for_scratch(scratch: &Path) -> Result<Self, DrillError> {
        if socket_dir_fits(scratch) {
            return Ok(Self {
                path: scratch.to_path_buf(),
                _temp: None,
            });
        }
        let temp = tempfile::Builder::new()
            .prefix("lifeline-drill-")
            .tempdir_in("/tmp")
            .map_err(|source| DrillError::Io {
                doing: "create a socket directory in /tmp for the scratch server (the drill directory's path is too long or odd for a socket)".into(),
                source,
            })?;
        make_private_dir(temp.path())?;
        if !socket_dir_fits(temp.path()) {
            return Err(DrillError::NoSocketDir {
                max: SOCKET_PATH_MAX - SOCKET_NAME_MAX,
            });
        }
        Ok(Self {
            path: temp.path().to_path_buf(),
            _temp: Some(temp),
        })
    }
}

fn socket_dir_fits(dir: &Path) -> bool {
    let Some(text) = dir.to_str() else {
        return false;
    };
    // unix_socket_directories is a comma-separated list with optional double quotes and
    // trimmed blanks: a path that needs any of that goes elsewhere.
    text.len() + SOCKET_NAME_MAX <= SOCKET_PATH_MAX
        && !text.contains([',', '"'])
        && text.trim() == text
        && !text.chars().any(char::is_control)
}

/// The name of the OS user the drill runs as: the only one its server lets in.
pub(super) async fn os_user() -> Result<String, DrillError> {
    let out = tokio::process::Command::new("id")
        .arg("-un")
        .output()
        .await
        .map_err(|source| DrillError::Io {
            doing: "run `id -un` to learn the OS user's name".into(),
            source,
        })?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || name.is_empty() {
        return Err(DrillError::NoOsUser {
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(name)
}

/// The scratch server's own authentication: peer over the Unix socket for this OS user only,
/// as its own name or (when that role does not exist) as the configured DB_USER. No TCP, no
/// trust; the restored pg_hba.conf and pg_ident.conf are never read.
#[derive(Debug, Clone)]
pub(super) struct ScratchAccess {
    pub(super) hba_file: PathBuf,
    pub(super) ident_file: PathBuf,
    pub(super) socket_dir: PathBuf,
    pub(super) roles: Vec<String>,
}

const IDENT_MAP: &str = "lifeline_drill";

impl ScratchAccess {
    /// Blocking: writes the two files into `scratch`.
    pub(super) fn write(
        scratch: &Path,
        socket_dir: &Path,
        os_user: &str,
        db_user: &str,
    ) -> Result<Self, DrillError> {
        let mut roles = vec![os_user.to_string()];
        if !db_user.is_empty() && db_user != os_user {
            roles.push(db_user.to_string());
        }
        let hba_file = scratch.join("pg_hba.drill.conf");
        let ident_file = scratch.join("pg_ident.drill.conf");
        let hba = format!(
            "# lifeline drill: the scratch server accepts only its own OS user, over its socket\nlocal all all peer map={IDENT_MAP}\n"
        );
        let mut ident = String::from("# lifeline drill: the OS user may log in as these roles\n");
        for role in &roles {
            ident.push_str(&format!(
                "{IDENT_MAP} {} {}\n",
                hba_token(os_user)?,
                hba_token(role)?
            ));
        }
        write_private(&hba_file, &hba)?;
        write_private(&ident_file, &ident)?;
        Ok(Self {
            hba_file,
            ident_file,
            socket_dir: socket_dir.to_path_buf(),
            roles,
        })
    }
}

/// A user name as one token of pg_hba.conf / pg_ident.conf.
fn hba_token(name: &str) -> Result<String, DrillError> {
    if name.contains('"') || name.chars().any(|c| c.is_control()) {
        return Err(DrillError::UnwritableUserName(name.to_string()));
    }
    if name.starts_with('/') || name.contains([' ', '\t', ',', '#']) {
        Ok(format!("\"{name}\""))
    } else {
        Ok(name.to_string())
    }
}

/// 0700 whatever the umask: the server's socket and its authentication files live there.
pub(super) fn make_private_dir(path: &Path) -> Result<(), DrillError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        DrillError::Io {
            doing: format!("make {} private (0700)", path.display()),
            source,
        }
    })
}

pub(super) fn write_private(path: &Path, text: &str) -> Result<(), DrillError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).map_err(|source| DrillError::Io {
        doing: format!("write {}", path.display()),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        DrillError::Io {
            doing: format!("make {} private", path.display()),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_directory_must_fit_a_socket_address_and_the_list_syntax() {
        assert!(socket_dir_fits(Path::new("/tmp/lifeline-drill-abc")));
        assert!(socket_dir_fits(Path::new("/tmp/with space/x")));
        let long = format!("/tmp/{}", "d".repeat(SOCKET_PATH_MAX - SOCKET_NAME_MAX - 4));
        assert!(!socket_dir_fits(Path::new(&long)), "{}", long.len());
        assert!(socket_dir_fits(Path::new(&long[..long.len() - 1])));
        for odd in ["/tmp/a,b", "/tmp/a\"b", "/tmp/a ", "/tmp/a\nb"] {
            assert!(!socket_dir_fits(Path::new(odd)), "{odd:?}");
        }
        let fallback = SocketDir::for_scratch(Path::new(&long)).expect("a short directory");
        assert!(fallback.path.starts_with("/tmp"));
        assert!(socket_dir_fits(&fallback.path));
        let mode = std::fs::metadata(&fallback.path)
            .expect("stat")
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o700
        );
    }

    #[test]
    fn odd_user_names_are_quoted_or_refused() {
        assert_eq!(hba_token("postgres").expect("plain"), "postgres");
        assert_eq!(hba_token("a b").expect("quoted"), "\"a b\"");
        assert!(hba_token("a\"b").is_err());
    }
}
