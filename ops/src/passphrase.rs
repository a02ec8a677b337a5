//! Where an encrypted repository's passphrase comes from, first found wins: a file
//! (`--passphrase-file` / `passphrase-file`, readable by its owner only), a command's standard
//! output (`passphrase-command`, as restic's), or `LIFELINE_PASSPHRASE`. What lifeline writes
//! for PostgreSQL (`archive_command`, `restore_command`) names the file or the command, never
//! the passphrase. [`crate::encryption`] reads it when it opens an encrypted repository.

use std::path::Path;
use std::time::Duration;

use zeroize::Zeroizing;

use crate::OpsError;

/// The passphrase, wiped from memory when dropped. No `Debug`, no `Display`.
pub struct Passphrase(Zeroizing<Vec<u8>>);

impl Passphrase {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Where to look, as configured.
#[derive(Debug, Clone, Default)]
pub struct PassphraseSources<'a> {
    pub file: Option<&'a Path>,
    pub command: Option<&'a str>,
    /// `LIFELINE_PASSPHRASE`, as read from the environment.
    pub environment: Option<&'a str>,
}

fn refused(message: String) -> OpsError {
    OpsError::Setting(message)
}

/// The passphrase from the first configured source; `None` when none is configured.
pub async fn read(sources: &PassphraseSources<'_>) -> Result<Option<Passphrase>, OpsError> {
    if let Some(path) = sources.file {
        return from_file(path).await.map(Some);
    }
    if let Some(command) = sources.command {
        return from_command(command).await.map(Some);
    }
    match sources.environment {
        Some(text) => checked(
            Zeroizing::new(text.as_bytes().to_vec()),
            "LIFELINE_PASSPHRASE",
        )
        .map(Some),
        None => Ok(None),
    }
}

/// One line: a trailing newline (as editors and `echo` write) is not part of it; empty is
/// refused, as it would protect nothing.
fn checked(mut bytes: Zeroizing<Vec<u8>>, source: &str) -> Result<Passphrase, OpsError> {
    while matches!(bytes.last(), Some(b'\n' | b'\r')) {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(refused(format!(
            "the passphrase from {source} is empty: write the passphrase there"
        )));
    }
    Ok(Passphrase(bytes))
}

async fn from_file(path: &Path) -> Result<Passphrase, OpsError> {
    use std::os::unix::fs::MetadataExt;
    use tokio::io::AsyncReadExt;
    let io = |source| OpsError::Io {
        doing: format!("read the passphrase file {}", path.display()),
        source,
    };
    // Opened once, not through a link, and checked on what was opened: no swap in between.
    let mut file = tokio::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
        .await
        .map_err(io)?;
    let meta = file.metadata().await.map_err(io)?;
    if meta.mode() & 0o077 != 0 {
        return Err(refused(format!(
            "the passphrase file {} can be read or written by other users (mode {:o}): chmod 600 it",
            path.display(),
            meta.mode() & 0o777
        )));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me && meta.uid() != 0 {
        return Err(refused(format!(
            "the passphrase file {} belongs to user {}, not to the user lifeline runs as ({me}) \
             nor root: chown it",
            path.display(),
            meta.uid()
        )));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.read_to_end(&mut bytes).await.map_err(io)?;
    checked(bytes, &path.display().to_string())
}

async fn from_command(command: &str) -> Result<Passphrase, OpsError> {
    let run = tokio::process::Command::new("/bin/sh")
        .args(["-c", command])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .map_err(|_| refused("passphrase-command did not finish within 60 s".into()))?
        .map_err(|source| OpsError::Io {
            doing: "run passphrase-command".into(),
            source,
        })?;
    let stdout = Zeroizing::new(output.stdout);
    if !output.status.success() {
        // Its output is never shown: it may be the passphrase.
        return Err(refused(format!(
            "passphrase-command failed ({}): run it by hand to see why",
            output.status
        )));
    }
    checked(stdout, "passphrase-command")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn the_first_configured_source_wins_and_a_newline_is_not_part_of_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pass");
        std::fs::write(&file, "from the file\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let all = PassphraseSources {
            file: Some(&file),
            command: Some("echo from the command"),
            environment: Some("from the environment"),
        };
        let got = read(&all).await.expect("reads").expect("configured");
        assert_eq!(got.as_bytes(), b"from the file");
        let command = PassphraseSources {
            file: None,
            ..all.clone()
        };
        let got = read(&command).await.expect("runs").expect("configured");
        assert_eq!(got.as_bytes(), b"from the command");
        let env = PassphraseSources {
            environment: Some("from the environment"),
            ..Default::default()
        };
        let got = read(&env).await.expect("reads").expect("configured");
        assert_eq!(got.as_bytes(), b"from the environment");
        assert!(read(&Default::default()).await.expect("none").is_none());
    }

    #[tokio::test]
    async fn a_file_others_can_read_an_empty_one_and_a_failing_command_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("pass");
        std::fs::write(&file, "secret words\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let sources = PassphraseSources {
            file: Some(&file),
            ..Default::default()
        };
        let err = read(&sources).await.err().expect("mode 644 refused");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::write(&file, "\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = read(&sources).await.err().expect("empty refused");
        assert!(err.to_string().contains("empty"), "{err}");
        let failing = PassphraseSources {
            command: Some("echo secret words; exit 3"),
            ..Default::default()
        };
        let err = read(&failing).await.err().expect("failure refused");
        assert!(!err.to_string().contains("secret words"), "{err}");
        assert!(
            err.to_string().contains("passphrase-command failed"),
            "{err}"
        );
    }
}
