//! The connection file the application reads (an env file with `DATABASE_URL=...`): failover
//! points it at the new primary, atomically, so the application never reads half a file.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use crate::OpsError;

/// A rewrite, described without the password.
#[derive(Debug, Clone)]
pub struct Switch {
    pub before: String,
    pub after: String,
}

/// The new text of an env file: `variable`'s URL with its host and port replaced.
pub fn rewrite(
    text: &str,
    variable: &str,
    host: &str,
    port: u16,
) -> Result<(String, Switch), String> {
    let mut switch = None;
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let ending = &line[body.len()..];
        let trimmed = body.trim_start();
        let (export, rest) = match trimmed.strip_prefix("export ") {
            Some(r) => ("export ", r.trim_start()),
            None => ("", trimmed),
        };
        let Some(value) = rest
            .strip_prefix(variable)
            .and_then(|r| r.trim_start().strip_prefix('='))
        else {
            out.push_str(line);
            continue;
        };
        let value = value.trim();
        let (quote, url) = match value.chars().next() {
            Some(q @ ('"' | '\'')) if value.len() >= 2 && value.ends_with(q) => {
                (q.to_string(), &value[1..value.len() - 1])
            }
            _ => (String::new(), value),
        };
        let new_url = replace_host(url, host, port)
            .ok_or_else(|| format!("{variable} is not a postgres:// URL"))?;
        switch = Some(Switch {
            before: redact(url),
            after: redact(&new_url),
        });
        out.push_str(&format!(
            "{export}{variable}={quote}{new_url}{quote}{ending}"
        ));
    }
    let switch = switch.ok_or_else(|| format!("no {variable}= line"))?;
    Ok((out, switch))
}

/// Rewrite the file in place: a temporary file beside it, synced, renamed over it, the
/// directory synced. The new file keeps the old one's owner, group and mode: failover runs as
/// root, and a file that became root's would lock the application out of its own settings.
/// A connection file that is a link (to a shared or versioned settings file) stays one: the
/// file it points to is the one rewritten.
pub fn switch_file(path: &Path, variable: &str, host: &str, port: u16) -> Result<Switch, OpsError> {
    let fail = |message: String| OpsError::ConnectionFile {
        path: path.display().to_string(),
        message,
    };
    let resolved =
        std::fs::canonicalize(path).map_err(|e| fail(format!("cannot be found: {e}")))?;
    let path = resolved.as_path();
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot be read: {e}")))?;
    let (new_text, switch) = rewrite(&text, variable, host, port).map_err(fail)?;
    let old = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?;
    // Created 0600, so the text is never readable by more than the old file allowed.
    let options = storage::atomic::WriteOptions::private(storage::private::Owner::KEEP);
    let mut staged = storage::atomic::StagedFile::create(path, options)
        .map_err(|e| fail(format!("cannot write beside it: {}", e.source)))?;
    staged
        .write_all(new_text.as_bytes())
        .map_err(|e| fail(format!("cannot write beside it: {}", e.source)))?;
    keep_owner_and_mode(staged.as_file(), &old).map_err(|e| {
        fail(format!(
            "the new file cannot keep the old one's owner {}:{} and mode {:o} ({e}), so it was \
             not replaced: run failover as root or as the file's owner",
            old.uid(),
            old.gid(),
            old.mode() & 0o7777
        ))
    })?;
    // Synced, renamed over the old file, the directory synced.
    staged
        .commit()
        .map_err(|e| fail(format!("cannot replace it: {}", e.source)))?;
    Ok(switch)
}

/// Give `file` the owner, group and mode of `old`. The owner goes first: changing it clears
/// set-id bits, which the mode then restores.
fn keep_owner_and_mode(file: &std::fs::File, old: &std::fs::Metadata) -> std::io::Result<()> {
    let current = file.metadata()?;
    if current.uid() != old.uid() || current.gid() != old.gid() {
        std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid()))?;
    }
    file.set_permissions(std::fs::Permissions::from_mode(old.mode() & 0o7777))
}

/// `scheme://[user[:password]@]host[:port][/db][?params]` with host and port replaced.
fn replace_host(url: &str, host: &str, port: u16) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    if !scheme.starts_with("postgres") {
        return None;
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let userinfo = authority
        .rfind('@')
        .map(|at| &authority[..=at])
        .unwrap_or("");
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Some(format!("{scheme}://{userinfo}{host}:{port}{tail}"))
}

/// The URL with any password replaced, for reports and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let masked = if userinfo.contains(':') {
        format!("{user}:***")
    } else {
        user.to_string()
    };
    format!("{scheme}://{masked}{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_host_and_port_of_the_variable_change() {
        let text = "# app\nexport DATABASE_URL=\"postgresql://app:s3cret@10.0.0.5:5432/app?sslmode=require\"\nREDIS_URL=redis://x\n";
        let (new, switch) = rewrite(text, "DATABASE_URL", "10.0.0.6", 5433).expect("rewrites");
        assert_eq!(
            new,
            "# app\nexport DATABASE_URL=\"postgresql://app:s3cret@10.0.0.6:5433/app?sslmode=require\"\nREDIS_URL=redis://x\n"
        );
        assert_eq!(
            switch.before,
            "postgresql://app:***@10.0.0.5:5432/app?sslmode=require"
        );
        assert!(!switch.after.contains("s3cret"));
        let (new, _) = rewrite(
            "DATABASE_URL=postgres://db/app",
            "DATABASE_URL",
            "::1",
            6000,
        )
        .expect("rewrites");
        assert_eq!(new, "DATABASE_URL=postgres://[::1]:6000/app");
    }

    #[test]
    fn a_file_without_the_variable_is_refused() {
        let err = rewrite("OTHER=1\n", "DATABASE_URL", "h", 1).expect_err("no line");
        assert!(err.contains("no DATABASE_URL= line"), "{err}");
        let err =
            rewrite("DATABASE_URL=mysql://h/db\n", "DATABASE_URL", "h", 1).expect_err("not pg");
        assert!(err.contains("not a postgres:// URL"), "{err}");
    }

    #[test]
    fn the_file_is_replaced_whole_with_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.env");
        std::fs::write(&path, "DATABASE_URL=postgresql://app@old:5432/app\n").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        switch_file(&path, "DATABASE_URL", "new", 6543).expect("switches");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "DATABASE_URL=postgresql://app@new:6543/app\n"
        );
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }

    #[test]
    fn a_linked_connection_file_stays_a_link_and_its_target_is_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).expect("mkdir");
        let target = shared.join("app.env");
        std::fs::write(&target, "DATABASE_URL=postgresql://app@old:5432/app\n").expect("write");
        let link = dir.path().join("app.env");
        std::os::unix::fs::symlink("shared/app.env", &link).expect("link");
        switch_file(&link, "DATABASE_URL", "new", 6543).expect("switches");
        assert!(
            std::fs::symlink_metadata(&link)
                .expect("meta")
                .file_type()
                .is_symlink(),
            "the link was replaced by a plain file"
        );
        assert_eq!(
            std::fs::read_link(&link).expect("readlink"),
            Path::new("shared/app.env")
        );
        assert_eq!(
            std::fs::read_to_string(&target).expect("read"),
            "DATABASE_URL=postgresql://app@new:6543/app\n"
        );
        assert_eq!(std::fs::read_dir(&shared).expect("ls").count(), 1);
    }

    // Test set-up, outside any runtime.
    #[allow(clippy::disallowed_methods)]
    fn id_of(args: &[&str]) -> u32 {
        let out = std::process::Command::new("id")
            .args(args)
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    }

    #[test]
    fn a_rewrite_as_root_keeps_the_owner_group_and_mode() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        if id_of(&["-u"]) != 0 {
            eprintln!("skipped: only root can give a file to another user");
            return;
        }
        let (uid, gid) = (id_of(&["-u", "postgres"]), id_of(&["-g", "postgres"]));
        assert_ne!(uid, 0, "the test needs a user other than root");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("app.env");
        std::fs::write(&path, "DATABASE_URL=postgresql://app@old:5432/app\n").expect("write");
        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        switch_file(&path, "DATABASE_URL", "new", 6543).expect("switches");
        let meta = std::fs::metadata(&path).expect("meta");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.permissions().mode() & 0o7777),
            (uid, gid, 0o640),
            "the rewritten file lost its owner, group or mode"
        );
        assert!(
            std::fs::read_to_string(&path)
                .expect("read")
                .contains("@new:6543/")
        );
    }
}
