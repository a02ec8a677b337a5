//! The Redis restore as the operator asks for it: refused while the configured Redis works in
//! the directory, a backup from the catalog or an RDB file written there
//! ([`restore_redis_backup`], [`restore_redis_from_file`]), then optionally loaded into a
//! throwaway redis-server whose key counts must match the backup's ([`RedisRestored::check_load`]).

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use storage::Storage;

use crate::{BackupSelector, RedisRestoreReport, RestoreError};

/// Key counts per database (`db0`, `db3`), as a Redis backup records them.
pub type KeyCounts = BTreeMap<String, u64>;

/// Counts the keys of the redis-server listening on this loopback port, per database number;
/// an error while it is still loading (it is asked again).
pub type KeyCounter =
    Box<dyn Fn(u16) -> Result<BTreeMap<u32, u64>, Box<dyn std::error::Error + Send + Sync>> + Send>;

/// `db0=12 db3=5`, or `none`: the key counts a Redis backup recorded.
pub fn counts_line(counts: &KeyCounts) -> String {
    if counts.is_empty() {
        return "none".to_string();
    }
    counts
        .iter()
        .map(|(db, n)| format!("{db}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Refuse when the configured Redis (at `address`, working in `served`) works in `dir`: the
/// restore would be overwritten by its next save. [`restore_redis`](crate::restore_redis) also
/// looks at the local processes it may inspect.
pub async fn refuse_if_redis_serves(
    address: &str,
    served: Option<PathBuf>,
    dir: &Path,
) -> Result<(), RestoreError> {
    let Some(served) = served else {
        return Ok(());
    };
    if let Ok(wanted) = tokio::fs::canonicalize(dir).await
        && tokio::fs::canonicalize(&served)
            .await
            .is_ok_and(|s| s == wanted)
    {
        return Err(RestoreError::Refused(format!(
            "Redis at {address} is running in {}: stop it first (`redis-cli shutdown nosave` or \
             `systemctl stop redis-server`), then restore again; nothing was changed",
            dir.display()
        )));
    }
    Ok(())
}

/// Redis files restored into a data directory; displays as the lines the operator reads
/// (where files in the way went, what was restored and how to start redis-server on it).
#[derive(Debug, Clone)]
pub struct RedisRestored {
    /// `backup <id>` or the file's path.
    pub what: String,
    pub data_dir: PathBuf,
    pub report: RedisRestoreReport,
    pub elapsed: Duration,
    /// The key counts the backup recorded (none for a file).
    pub recorded: Option<KeyCounts>,
    /// An AOF backup's `appenddirname` and `appendfilename`.
    pub aof: Option<(String, String)>,
}

impl std::fmt::Display for RedisRestored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(aside) = &self.report.moved_aside {
            writeln!(
                f,
                "files that would have been loaded instead were moved to {}",
                aside.display()
            )?;
        }
        let how = match &self.aof {
            Some((subdir, file)) => {
                format!("appendonly yes, appenddirname {subdir}, appendfilename {file}")
            }
            None => "dbfilename dump.rdb and appendonly no (or it loads an AOF instead)".into(),
        };
        let keys = self
            .recorded
            .as_ref()
            .map_or_else(|| "not recorded".to_string(), counts_line);
        write!(
            f,
            "restored {} into {}: {} MiB in {:.1} s; keys at backup time: {keys}; start redis-server with dir {} and {how}",
            self.what,
            self.data_dir.display(),
            self.report.bytes >> 20,
            self.elapsed.as_secs_f64(),
            self.data_dir.display()
        )
    }
}

/// Restore an RDB file (an older backup, a copy from another host) into `data_dir`.
pub async fn restore_redis_from_file(
    file: &Path,
    data_dir: &Path,
    kind: storage::BackupKind,
) -> Result<RedisRestored, RestoreError> {
    let started = Instant::now();
    rdb_file_only(kind)?;
    let (from, into) = (file.to_path_buf(), data_dir.to_path_buf());
    let report = tokio::task::spawn_blocking(move || crate::restore_redis_file(&from, &into))
        .await
        .map_err(RestoreError::task("RDB file restore"))?
        .map_err(|source| RestoreError::RestoreInto {
            what: file.display().to_string(),
            into: data_dir.to_path_buf(),
            source: Box::new(source),
        })?;
    Ok(RedisRestored {
        what: file.display().to_string(),
        data_dir: data_dir.to_path_buf(),
        report,
        elapsed: started.elapsed(),
        recorded: None,
        aof: None,
    })
}

/// `--file` restores an RDB file only.
fn rdb_file_only(kind: storage::BackupKind) -> Result<(), RestoreError> {
    match kind {
        storage::BackupKind::Rdb => Ok(()),
        _ => Err(RestoreError::Refused(
            "--file takes an RDB file: use --type rdb".into(),
        )),
    }
}

/// Where a previewed Redis restore would read from.
pub enum RedisSource<'a> {
    File(&'a Path),
    Backup {
        storage: &'a dyn Storage,
        backup: catalog::BackupRecord,
    },
}

/// What a Redis restore would do, for `SIMULATE_MODE`: every check it runs before it changes
/// anything (the source reads as one, every pack is there, no redis-server runs in the
/// directory, which this user may create); nothing is written.
pub async fn preview_redis_restore(
    source: RedisSource<'_>,
    kind: storage::BackupKind,
    data_dir: &Path,
    transfers: usize,
) -> Result<String, RestoreError> {
    let what = match source {
        RedisSource::File(file) => {
            rdb_file_only(kind)?;
            crate::restore_redis::open_rdb_file(file)?;
            file.display().to_string()
        }
        RedisSource::Backup { storage, backup } => {
            let manifest =
                crate::restore_redis::load_stream_manifest(storage, &backup.backup_id).await?;
            crate::restore_redis::check_backup(storage, &manifest, transfers).await?;
            let size: u64 = manifest.files.iter().map(|f| f.size).sum();
            format!(
                "backup {} ({} files, {:.1} MiB) in {}",
                backup.backup_id,
                manifest.files.len(),
                size as f64 / 1048576.0,
                storage.describe()
            )
        }
    };
    crate::restore_redis::refuse_if_running(data_dir)?;
    crate::places::check_creatable(data_dir)?;
    Ok(format!(
        "SIMULATE_MODE: would restore the Redis {} files of {what} into {}, moving the files in \
         their way into lifeline-replaced-<time>/ there\nnothing was changed: unset SIMULATE_MODE \
         to restore",
        kind.as_str().to_uppercase(),
        data_dir.display()
    ))
}

/// The Redis backup of `kind` that `selector` names in the catalog.
pub fn choose_redis_backup(
    catalog: &catalog::Catalog,
    selector: &BackupSelector,
    kind: storage::BackupKind,
) -> Result<catalog::BackupRecord, RestoreError> {
    let backups = catalog.backups(Some(storage::Service::Redis))?;
    if backups.is_empty() {
        return Err(RestoreError::Refused(
            "the catalog lists no Redis backups: run `lifeline backup redis`".into(),
        ));
    }
    crate::select_backup(
        &backups,
        kind,
        selector,
        jiff::Timestamp::now(),
        &jiff::tz::TimeZone::system(),
    )
}

/// Restore the Redis backup of `kind` (RDB or AOF) that `selector` names in
/// the catalog into `data_dir`, under a lease that keeps `prune` off it. The catalog is read
/// at the call: the future holds no reference to it.
pub fn restore_redis_backup<'a>(
    storage: &'a dyn Storage,
    catalog: &catalog::Catalog,
    selector: &BackupSelector,
    kind: storage::BackupKind,
    data_dir: &'a Path,
    options: crate::RedisRestoreOptions,
) -> impl Future<Output = Result<RedisRestored, RestoreError>> + 'a {
    let started = Instant::now();
    let chosen = choose_redis_backup(catalog, selector, kind);
    async move {
        let backup = chosen?;
        let manifest =
            crate::restore_redis::load_stream_manifest(storage, &backup.backup_id).await?;
        storage::lease::take_here(storage, &backup.backup_id).await;
        let report = crate::restore_redis(storage, &manifest, data_dir, &options)
            .await
            .map_err(|source| RestoreError::RestoreInto {
                what: backup.backup_id.clone(),
                into: data_dir.to_path_buf(),
                source: Box::new(source),
            })?;
        // An AOF restore names its manifest `<appenddirname>/<appendfilename>.manifest`.
        let aof = manifest.files.iter().find_map(|f| {
            let (subdir, file) = f.name.split_once('/')?;
            Some((
                subdir.to_string(),
                file.strip_suffix(".manifest")?.to_string(),
            ))
        });
        Ok(RedisRestored {
            what: format!("backup {}", backup.backup_id),
            data_dir: data_dir.to_path_buf(),
            report,
            elapsed: started.elapsed(),
            recorded: Some(manifest.counts),
            aof,
        })
    }
}

/// How the restored files loaded into a throwaway redis-server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadCheck {
    /// redis-server is not installed here: nothing was loaded.
    NotInstalled,
    /// An RDB backup's files loaded with the key counts it recorded.
    AsRecorded(KeyCounts),
    /// An AOF backup loaded; its counts were recorded while copying, under whatever writes ran.
    Aof {
        found: KeyCounts,
        recorded: KeyCounts,
    },
    /// A file with no recorded counts loaded.
    Loaded(KeyCounts),
}

impl std::fmt::Display for LoadCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadCheck::NotInstalled => write!(
                f,
                "redis-server is not installed here: the restored files were not loaded (--verify false to silence)"
            ),
            LoadCheck::AsRecorded(found) => write!(
                f,
                "[PASS] a redis-server loaded the restored files with the recorded keys: {}",
                counts_line(found)
            ),
            LoadCheck::Aof { found, recorded } => write!(
                f,
                "[PASS] a redis-server loaded the restored AOF: keys {} (recorded while copying: {})",
                counts_line(found),
                counts_line(recorded)
            ),
            LoadCheck::Loaded(found) => write!(
                f,
                "[PASS] a redis-server loaded the restored file: keys {}",
                counts_line(found)
            ),
        }
    }
}

impl RedisRestored {
    /// Load the restored files into a throwaway redis-server; with counts recorded by an RDB
    /// backup, its key counts must equal them.
    pub async fn check_load(&self, count_keys: KeyCounter) -> Result<LoadCheck, RestoreError> {
        let dir = self.data_dir.clone();
        let aof = self.aof.clone();
        let found = tokio::task::spawn_blocking(move || loaded_key_counts(&dir, aof, count_keys))
            .await
            .map_err(RestoreError::task("key count check"))??;
        let Some(found) = found else {
            return Ok(LoadCheck::NotInstalled);
        };
        let found: KeyCounts = found
            .into_iter()
            .map(|(db, n)| (format!("db{db}"), n))
            .collect();
        let is_aof = self.aof.is_some();
        match &self.recorded {
            Some(recorded) if !is_aof && &found != recorded => Err(RestoreError::Failed(format!(
                "the restored files load with keys {} but the backup recorded {}: the restore is not the data that was backed up",
                counts_line(&found),
                counts_line(recorded)
            ))),
            Some(_) if !is_aof => Ok(LoadCheck::AsRecorded(found)),
            // That the files load is the check; the counts are for the operator.
            Some(recorded) => Ok(LoadCheck::Aof {
                found,
                recorded: recorded.clone(),
            }),
            None => Ok(LoadCheck::Loaded(found)),
        }
    }
}

/// Start a throwaway redis-server on the restored files (a free loopback port, nothing saved),
/// and read its key counts once it has loaded them. `None` when redis-server is not installed.
fn loaded_key_counts(
    dir: &Path,
    aof: Option<(String, String)>,
    count_keys: KeyCounter,
) -> Result<Option<BTreeMap<u32, u64>>, RestoreError> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(RestoreError::step("find a free port for the check"))?;
    let mut command = std::process::Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--dbfilename", "dump.rdb", "--save", ""]);
    match &aof {
        Some((subdir, file)) => command.args([
            "--appendonly",
            "yes",
            "--appenddirname",
            subdir,
            "--appendfilename",
            file,
        ]),
        None => command.args(["--appendonly", "no"]),
    };
    let spawned = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let mut server = match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(RestoreError::step("start redis-server for the check")(e)),
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    let counts = loop {
        match count_keys(port) {
            Ok(counts) => break Ok(counts),
            Err(e) if Instant::now() > deadline => break Err(e),
            Err(_) => {
                if let Ok(Some(status)) = server.try_wait() {
                    return Err(RestoreError::Failed(format!(
                        "redis-server could not load the restored files ({status}): the restored dump.rdb is not usable"
                    )));
                }
                // On a blocking thread (check_load runs this in spawn_blocking).
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    // Killed, not shut down: it must write nothing into the restored directory.
    let _ = server.kill();
    #[allow(clippy::disallowed_methods)] // on the same blocking thread
    let _ = server.wait();
    Ok(Some(counts.map_err(RestoreError::step(
        "the check server never answered",
    ))?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn restored(recorded: Option<KeyCounts>, aof: Option<(String, String)>) -> RedisRestored {
        RedisRestored {
            what: "backup 20251227T010000Z-rdb".into(),
            data_dir: "/var/lib/redis".into(),
            report: RedisRestoreReport {
                files: Vec::new(),
                bytes: 3 << 20,
                moved_aside: Some("/var/lib/redis/lifeline-replaced-20251227_010000".into()),
            },
            elapsed: Duration::from_millis(400),
            recorded,
            aof,
        }
    }

    #[test]
    fn the_report_says_where_files_went_and_how_to_start_redis() {
        let counts = KeyCounts::from([("db0".to_string(), 12), ("db3".to_string(), 5)]);
        assert_eq!(
            restored(Some(counts), None).to_string(),
            "files that would have been loaded instead were moved to /var/lib/redis/lifeline-replaced-20251227_010000\n\
             restored backup 20251227T010000Z-rdb into /var/lib/redis: 3 MiB in 0.4 s; keys at backup time: db0=12 db3=5; \
             start redis-server with dir /var/lib/redis and dbfilename dump.rdb and appendonly no (or it loads an AOF instead)"
        );
        let aof = Some(("appendonlydir".to_string(), "appendonly.aof".to_string()));
        let line = restored(None, aof).to_string();
        assert!(
            line.contains("keys at backup time: not recorded")
                && line.ends_with(
                    "appendonly yes, appenddirname appendonlydir, appendfilename appendonly.aof"
                ),
            "{line}"
        );
        assert_eq!(counts_line(&KeyCounts::new()), "none");
    }

    #[tokio::test]
    async fn a_restore_into_the_directory_redis_serves_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let refused = refuse_if_redis_serves("127.0.0.1:6379", Some(dir.path().into()), dir.path())
            .await
            .expect_err("Redis works there");
        assert!(
            refused
                .to_string()
                .starts_with("Redis at 127.0.0.1:6379 is running in")
        );
        let elsewhere = tempfile::tempdir().expect("tempdir");
        refuse_if_redis_serves("127.0.0.1:6379", Some(elsewhere.path().into()), dir.path())
            .await
            .expect("another directory");
        refuse_if_redis_serves("127.0.0.1:6379", None, dir.path())
            .await
            .expect("Redis not reachable");
    }
}
