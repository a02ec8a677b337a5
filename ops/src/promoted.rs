//! `BACKUP_DIR/.promoted_primary`: the server a `failover` promoted, so that lifeline's own
//! commands (`verify-recovery`, `backup postgres`, `check`, `status`, ...) reach the new primary
//! while the configuration still names the one that died. Without it the runbook's next steps
//! after a failover fail with "Connection refused".
//!
//! The record is one JSON object, replaced whole (temporary file, fsync, rename, fsync of the
//! directory), private (0600) and owned by the owner of BACKUP_DIR:
//!
//! ```json
//! {"host": "10.0.0.6", "port": 5432, "configured_host": "10.0.0.5", "configured_port": 5432,
//!  "replaced": "10.0.0.5:5432", "incident": "database_failure",
//!  "promoted_at": "2026-01-01T03:00:00Z"}
//! ```
//!
//! It stands in for the configured host and port (user, password and database are the
//! configured ones) only while DB_HOST/DB_PORT still name the address they named when it was
//! written: an operator who points them elsewhere wins, and is told the record is ignored. It
//! is removed by hand once the configuration names the new primary. Because it redirects the
//! database credentials, a record that is a link, that others may write, or that belongs to
//! someone other than root or the owner of BACKUP_DIR is not followed.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The record's name in BACKUP_DIR.
pub const FILE_NAME: &str = ".promoted_primary";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotedPrimary {
    pub host: String,
    pub port: u16,
    /// DB_HOST/DB_PORT when the server was promoted: the record serves while they are unchanged.
    pub configured_host: String,
    pub configured_port: u16,
    /// The primary it replaced (the configured one, or one an earlier failover promoted).
    pub replaced: String,
    pub incident: String,
    pub promoted_at: jiff::Timestamp,
}

impl PromotedPrimary {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn configured(&self) -> String {
        format!("{}:{}", self.configured_host, self.configured_port)
    }
}

/// What the settings made of the record, for every command that reaches PostgreSQL to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The record's address stands in for the configured one.
    InUse {
        record: PromotedPrimary,
        path: PathBuf,
    },
    /// DB_HOST/DB_PORT name another server than when the record was written: they win.
    Ignored {
        record: PromotedPrimary,
        path: PathBuf,
        configured: String,
    },
    /// The record is there but cannot be trusted or read: the configured address is used.
    Unreadable { path: PathBuf, why: String },
}

impl Resolution {
    /// The promoted server, when the commands use it.
    pub fn in_use(&self) -> Option<&PromotedPrimary> {
        match self {
            Resolution::InUse { record, .. } => Some(record),
            _ => None,
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            Resolution::InUse { path, .. }
            | Resolution::Ignored { path, .. }
            | Resolution::Unreadable { path, .. } => path,
        }
    }

    /// The line a command that reaches PostgreSQL says once.
    pub fn note(&self) -> String {
        let path = self.path().display();
        match self {
            Resolution::InUse { record, .. } => format!(
                "using the promoted primary {} recorded by failover ({}) at {}; configured DB_HOST/DB_PORT {}{}. Once they name the new primary, remove {path}",
                record.address(),
                record.incident,
                record.promoted_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
                record.configured(),
                // After a second failover the configured server is not the one it replaced.
                if record.replaced == record.configured() {
                    String::new()
                } else {
                    format!(" (the primary it replaced: {})", record.replaced)
                }
            ),
            Resolution::Ignored {
                record, configured, ..
            } => format!(
                "the promoted primary {} recorded by failover at {} is not used: DB_HOST/DB_PORT name {configured}, not {} as when it was recorded; remove {path} if it is obsolete",
                record.address(),
                record.promoted_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
                record.configured()
            ),
            Resolution::Unreadable { why, .. } => format!(
                "{path} (the primary a failover promoted) is not used: {why}; the configured DB_HOST/DB_PORT is used. Remove it, or run the failover again"
            ),
        }
    }

    /// For `status --json`.
    pub fn to_json(&self) -> serde_json::Value {
        let (state, record) = match self {
            Resolution::InUse { record, .. } => ("in_use", Some(record)),
            Resolution::Ignored { record, .. } => ("ignored", Some(record)),
            Resolution::Unreadable { .. } => ("unreadable", None),
        };
        serde_json::json!({
            "state": state,
            "file": self.path(),
            "address": record.map(PromotedPrimary::address),
            "configured": record.map(PromotedPrimary::configured),
            "replaced": record.map(|r| &r.replaced),
            "incident": record.map(|r| &r.incident),
            "promoted_at": record.map(|r| r.promoted_at),
            "note": self.note(),
        })
    }
}

pub fn path(backup_dir: &Path) -> PathBuf {
    backup_dir.join(FILE_NAME)
}

/// The record in `backup_dir` against the configured `host`:`port` and `replica`
/// (`REPLICA_HOST`:`REPLICA_PORT`); `None` when there is none.
///
/// The record sends the database credentials to the server it names, and whoever can write
/// files as the owner of BACKUP_DIR (a database role with `pg_write_server_files`, for one)
/// can plant it: so it is followed only when it names the configured replica, over TCP, the
/// one server a failover ever promotes.
pub fn resolve(
    backup_dir: &Path,
    host: &str,
    port: u16,
    replica: Option<(&str, u16)>,
) -> Option<Resolution> {
    let path = path(backup_dir);
    let record = match load(backup_dir, &path) {
        Ok(None) => return None,
        Ok(Some(record)) => record,
        Err(why) => return Some(Resolution::Unreadable { path, why }),
    };
    if replica != Some((record.host.as_str(), record.port)) || record.host.starts_with('/') {
        let why = format!(
            "it names {}, which is not the configured replica (REPLICA_HOST/REPLICA_PORT {}), \
             the only server a failover promotes",
            record.address(),
            replica.map_or_else(|| "unset".into(), |(h, p)| format!("{h}:{p}"))
        );
        return Some(Resolution::Unreadable { path, why });
    }
    if record.configured_host == host && record.configured_port == port {
        Some(Resolution::InUse { record, path })
    } else if record.host == host && record.port == port {
        // The configuration names the promoted server now: nothing left to stand in for.
        None
    } else {
        let configured = format!("{host}:{port}");
        Some(Resolution::Ignored {
            record,
            path,
            configured,
        })
    }
}

fn load(backup_dir: &Path, path: &Path) -> Result<Option<PromotedPrimary>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // Never through a link, never waiting on a FIFO; what is checked is what is read.
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it ({e})")),
    };
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read it ({e})"))?;
    if !meta.is_file() {
        return Err("it is not a regular file".into());
    }
    if meta.mode() & 0o022 != 0 {
        return Err("others may write it".into());
    }
    let dir_owner = std::fs::metadata(backup_dir).map(|m| m.uid()).ok();
    if meta.uid() != 0 && Some(meta.uid()) != dir_owner {
        return Err(format!(
            "it belongs to {}, neither root nor the owner of BACKUP_DIR",
            storage::private::user_name(meta.uid())
        ));
    }
    let mut bytes = Vec::new();
    file.take(64 << 10)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it ({e})"))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("it is not a record of a promoted primary ({e})"))
}

/// Write `record` into `backup_dir`, whole and durable, private to the owner of BACKUP_DIR.
pub fn record(
    backup_dir: &Path,
    record: &PromotedPrimary,
) -> Result<PathBuf, storage::atomic::WriteError> {
    let path = path(backup_dir);
    let bytes = serde_json::to_vec_pretty(record).map_err(|e| storage::atomic::WriteError {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    let owner = storage::private::Owner::of(backup_dir);
    storage::atomic::write(&path, &bytes, storage::atomic::WriteOptions::private(owner))?;
    Ok(path)
}

/// Remove the record from `backup_dir` (durably: the directory is synced); false when there
/// was none.
pub fn forget(backup_dir: &Path) -> io::Result<bool> {
    match std::fs::remove_file(path(backup_dir)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    }
    std::fs::File::open(backup_dir)?.sync_all()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLICA: Option<(&str, u16)> = Some(("10.0.0.6", 5433));

    fn promoted() -> PromotedPrimary {
        PromotedPrimary {
            host: "10.0.0.6".into(),
            port: 5433,
            configured_host: "10.0.0.5".into(),
            configured_port: 5432,
            replaced: "10.0.0.5:5432".into(),
            incident: "database_failure".into(),
            promoted_at: jiff::Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn the_record_stands_in_only_for_the_address_it_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(resolve(dir.path(), "10.0.0.5", 5432, REPLICA), None);
        let path = record(dir.path(), &promoted()).expect("recorded");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .expect("written")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let used = resolve(dir.path(), "10.0.0.5", 5432, REPLICA).expect("a record");
        assert_eq!(used.in_use(), Some(&promoted()));
        assert!(
            used.note().starts_with(
                "using the promoted primary 10.0.0.6:5433 recorded by failover (database_failure) at 1970-01-01 00:00:00 UTC; configured DB_HOST/DB_PORT 10.0.0.5:5432"
            ),
            "{}",
            used.note()
        );
        // The operator pointed the configuration at the new primary: nothing to say.
        assert_eq!(resolve(dir.path(), "10.0.0.6", 5433, REPLICA), None);
        // ... or elsewhere: the configuration wins, and says so.
        let ignored = resolve(dir.path(), "10.0.0.7", 5432, REPLICA).expect("a record");
        assert_eq!(ignored.in_use(), None);
        assert!(
            ignored
                .note()
                .contains("DB_HOST/DB_PORT name 10.0.0.7:5432")
        );
        assert_eq!(ignored.to_json()["state"], "ignored");
        assert!(forget(dir.path()).expect("removed"));
        assert_eq!(resolve(dir.path(), "10.0.0.5", 5432, REPLICA), None);
        assert!(!forget(dir.path()).expect("nothing to remove"));
    }

    #[test]
    fn a_record_naming_another_server_than_the_replica_is_not_followed() {
        let dir = tempfile::tempdir().expect("tempdir");
        record(dir.path(), &promoted()).expect("recorded");
        for replica in [None, Some(("10.0.0.9", 5433)), Some(("10.0.0.6", 5432))] {
            let found = resolve(dir.path(), "10.0.0.5", 5432, replica).expect("a record");
            assert_eq!(found.in_use(), None, "{replica:?}");
            assert!(
                found.note().contains("not the configured replica"),
                "{}",
                found.note()
            );
        }
        let socket = PromotedPrimary {
            host: "/tmp".into(),
            ..promoted()
        };
        record(dir.path(), &socket).expect("recorded");
        let found = resolve(dir.path(), "10.0.0.5", 5433, Some(("/tmp", 5433))).expect("a record");
        assert_eq!(found.in_use(), None, "a Unix socket was followed");
    }

    #[test]
    fn a_record_others_may_write_or_cannot_read_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = record(dir.path(), &promoted()).expect("recorded");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let found = resolve(dir.path(), "10.0.0.5", 5432, REPLICA).expect("a record");
        assert!(
            matches!(&found, Resolution::Unreadable { why, .. } if why == "others may write it"),
            "{found:?}"
        );
        std::fs::remove_file(&path).expect("rm");
        std::os::unix::fs::symlink("/etc/hostname", &path).expect("link");
        let found = resolve(dir.path(), "10.0.0.5", 5432, REPLICA).expect("a record");
        assert!(matches!(found, Resolution::Unreadable { .. }), "{found:?}");
        std::fs::remove_file(&path).expect("rm");
        std::fs::write(&path, "{}").expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let found = resolve(dir.path(), "10.0.0.5", 5432, REPLICA).expect("a record");
        assert!(found.note().contains("is not a record"), "{}", found.note());
    }
}
