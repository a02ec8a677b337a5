//! The bytes of a logical dump, for `pg_restore` to read: from a backup's chunks (fetched in
//! parallel, verified, written in order), or from a file the old platform left, plain or
//! gzip-compressed (`backup_YYYYMMDD_HHMMSS.dump.gz`); and the restore that feeds them to
//! pg_restore ([`restore_dump`]), which recreates the database (production after a
//! pre-restore dump of what it replaces; staging dropped without one).

use std::future::Future;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use storage::Storage;
use storage::manifest::ChunkRef;
use storage::progress::{NoProgress, Progress};

use crate::restore_redis::fetch_chunk;
use crate::{BackupSelector, RestoreError};

/// Write `chunks` in order into `out` (a pipe into pg_restore), `transfers` fetched at once.
pub async fn write_chunks<W: Write + Send + 'static>(
    storage: &dyn Storage,
    chunks: &[ChunkRef],
    out: W,
    transfers: usize,
    progress: &dyn Progress,
) -> Result<W, RestoreError> {
    let mut out = out;
    let mut fetched = futures::stream::iter(chunks)
        .map(|chunk| fetch_chunk(storage, chunk))
        .buffered(transfers.max(1));
    // The writer goes to a blocking thread with each chunk and comes back with the write.
    while let Some(plain) = fetched.try_next().await? {
        let len = plain.len() as u64;
        out = tokio::task::spawn_blocking(move || out.write_all(&plain).map(|()| out))
            .await
            .map_err(RestoreError::task("writer task"))?
            .map_err(|e| RestoreError::io("(pg_restore input)", e))?;
        progress.advance(len);
    }
    Ok(out)
}

/// A dump file as pg_restore expects it: `.gz` files are decompressed on the fly. The custom
/// format is checked (`PGDMP` magic) so a wrong file fails here, not halfway into a restore.
pub fn open_dump_file(path: &Path) -> Result<Box<dyn Read + Send>, RestoreError> {
    let file = std::fs::File::open(path).map_err(|e| RestoreError::io(path, e))?;
    let mut reader: Box<dyn Read + Send> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(
            file,
        )))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut magic = [0u8; 5];
    reader
        .read_exact(&mut magic)
        .map_err(|e| RestoreError::io(path, e))?;
    if &magic != b"PGDMP" {
        return Err(RestoreError::Refused(format!(
            "{} is not a pg_dump custom-format archive (plain or gzip): pg_restore could not read it",
            path.display()
        )));
    }
    Ok(Box::new(std::io::Cursor::new(magic).chain(reader)))
}

/// Where a dump comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpSource {
    /// A dump backup in the repository, by id.
    Repository(String),
    /// A pg_dump custom-format file, plain or gzip-compressed.
    File(PathBuf),
}

/// The database a dump restore recreates: `production`, or `staging` when given. A staging
/// restore drops its target with --force and keeps no copy of it: named like production, it
/// would silently destroy production, so that is refused.
pub fn dump_target(production: &str, staging: Option<&str>) -> Result<String, RestoreError> {
    match staging {
        Some(staging) if staging == production => Err(RestoreError::Refused(format!(
            "the staging database name {staging} is the production database (DB_NAME {production}): a staging \
             restore drops its target without a pre-restore dump, so nothing was done; set \
             STAGING_DB_NAME (or staging-db-name in the config file) to another name, or \
             restore with --target production"
        ))),
        Some(staging) => Ok(staging.to_string()),
        None => Ok(production.to_string()),
    }
}

/// The dump backup `selector` names in the catalog.
pub fn choose_dump(
    catalog: &catalog::Catalog,
    selector: &BackupSelector,
) -> Result<DumpSource, RestoreError> {
    let backups = catalog.backups(Some(storage::Service::Postgresql))?;
    let backup = crate::select_backup(
        &backups,
        storage::BackupKind::Dump,
        selector,
        jiff::Timestamp::now(),
        &jiff::tz::TimeZone::system(),
    )
    .map_err(RestoreError::step(
        "choose the dump to restore (`lifeline backup postgres --kind dump` makes them)",
    ))?;
    Ok(DumpSource::Repository(backup.backup_id))
}

/// Builds the command for a PostgreSQL client program (`psql`, `dropdb`, `createdb`,
/// `pg_restore`), with the server's address and credentials set.
pub type PgCommand = Box<dyn Fn(&str) -> std::process::Command + Send + Sync>;

/// What a dump restore needs beyond its source.
pub struct DumpRestoreOptions {
    /// The database recreated (see [`dump_target`]).
    pub database: String,
    /// A staging restore takes no pre-restore dump, and objects belong to whoever restores
    /// them (staging has its own roles).
    pub target: crate::Target,
    /// Chunk groups read from the repository at once.
    pub transfers: usize,
    pub pg_command: PgCommand,
    /// Bytes of a dump from the repository fed to pg_restore (a dump file's are not counted).
    pub progress: Arc<dyn Progress>,
}

/// A dump restored into a database; displays as the line the operator reads.
#[derive(Debug, Clone)]
pub struct DumpRestored {
    /// `backup <id>` or the file's path.
    pub what: String,
    pub database: String,
    pub elapsed: Duration,
}

impl std::fmt::Display for DumpRestored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "restored {} into database {} in {:.1} s",
            self.what,
            self.database,
            self.elapsed.as_secs_f64()
        )
    }
}

/// Read the whole source, checking every chunk or the file's own checksums: a damaged dump
/// fails here, while the database still exists. A dump backup's chunks are returned.
async fn check_source(
    storage: &dyn Storage,
    source: &DumpSource,
    transfers: usize,
) -> Result<Option<Vec<ChunkRef>>, RestoreError> {
    match source {
        DumpSource::Repository(id) => {
            let manifest = crate::restore_redis::load_stream_manifest(storage, id).await?;
            crate::validate_stream(&manifest)?;
            let chunks: Vec<_> = manifest.files.into_iter().flat_map(|f| f.chunks).collect();
            // Every chunk read, decoded and hash-checked, then dropped (memory holds only the
            // chunks in flight): a damaged dump must fail here, while the database still exists.
            write_chunks(storage, &chunks, std::io::sink(), transfers, &NoProgress)
                .await
                .map_err(RestoreError::step(format!(
                    "check dump {id} before restoring it (nothing was dropped; restore another \
                     dump with --from BACKUP_ID, `lifeline list` names them)"
                )))?;
            Ok(Some(chunks))
        }
        DumpSource::File(path) => {
            // Read it whole: a .gz file's checksums are only checked at the end of its members.
            let file = path.clone();
            let copied = tokio::task::spawn_blocking(move || {
                let mut reader = open_dump_file(&file)?;
                Ok::<_, RestoreError>(std::io::copy(&mut reader, &mut std::io::sink()))
            })
            .await
            .map_err(RestoreError::task("dump file check"))??;
            copied.map_err(RestoreError::step(format!(
                "check {} before restoring it (nothing was dropped)",
                path.display()
            )))?;
            Ok(None)
        }
    }
}

/// What `restore_dump` would do, for `SIMULATE_MODE`: the source read and checked whole, and
/// whether the database exists (then it is dumped first); nothing dropped, created or leased.
pub async fn preview_dump_restore(
    storage: &dyn Storage,
    source: &DumpSource,
    options: &DumpRestoreOptions,
) -> Result<String, RestoreError> {
    check_source(storage, source, options.transfers).await?;
    let target = &options.database;
    let first = match options.target {
        crate::Target::Staging => "",
        crate::Target::Production if database_exists(&options.pg_command, target).await? => {
            "a pre-restore dump of it (it exists), then "
        }
        crate::Target::Production => "",
    };
    let what = match source {
        DumpSource::Repository(id) => format!("dump backup {id} from {}", storage.describe()),
        DumpSource::File(path) => format!("the dump file {}", path.display()),
    };
    Ok(format!(
        "SIMULATE_MODE: would restore {what} (read whole and checked) into database {target}: \
         {first}dropdb --if-exists --force {target} (ending its sessions), createdb, pg_restore\n\
         nothing was changed: unset SIMULATE_MODE to restore"
    ))
}

/// Recreate `options.database` from `source` with pg_restore. The source is read whole and
/// checked before anything is dropped; a production database that exists is first dumped by
/// `pre_restore_dump` (given the repository and the database's name), and a failure there
/// changes nothing.
pub async fn restore_dump<F, Fut>(
    storage: Arc<dyn Storage>,
    source: &DumpSource,
    options: &DumpRestoreOptions,
    pre_restore_dump: F,
) -> Result<DumpRestored, RestoreError>
where
    F: FnOnce(Arc<dyn Storage>, String) -> Fut,
    Fut: Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>>,
{
    let target = &options.database;
    if let DumpSource::Repository(id) = source {
        storage::lease::take_here(storage.as_ref(), id).await;
    }
    // Check the source before anything is dropped.
    let chunks = check_source(storage.as_ref(), source, options.transfers).await?;
    let started = Instant::now();
    if options.target == crate::Target::Production
        && database_exists(&options.pg_command, target).await?
    {
        pre_restore_dump(storage.clone(), target.clone())
            .await
            .map_err(RestoreError::step(format!(
                "pre-restore dump of {target} (nothing was changed)"
            )))?;
    }
    run_pg(
        &options.pg_command,
        "dropdb",
        &[
            "--if-exists",
            "--force",
            "--maintenance-db=template1",
            target,
        ],
    )
    .await?;
    run_pg(
        &options.pg_command,
        "createdb",
        &["--maintenance-db=template1", target],
    )
    .await?;
    let mut args = vec!["--exit-on-error", "--dbname", target.as_str()];
    if options.target == crate::Target::Staging {
        // Staging has its own roles: objects belong to whoever restores them.
        args.extend(["--no-owner", "--no-privileges"]);
    }
    let mut command = (options.pg_command)("pg_restore");
    let program = Path::new(command.get_program()).display().to_string();
    let mut child = command
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(RestoreError::step(format!("run {program}")))?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| RestoreError::Failed("pg_restore has no input".into()))?;
    // Its messages are read while it is fed: a pg_restore that fills the stderr pipe would
    // otherwise wait for a reader while the feeder waits for it to read its input.
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| RestoreError::Failed("pg_restore has no error output".into()))?;
    let messages = tokio::task::spawn_blocking(move || {
        let mut text = Vec::new();
        let mut stderr = stderr;
        stderr.read_to_end(&mut text).map(|_| text)
    });
    let fed = match (source, chunks) {
        (DumpSource::Repository(_), Some(chunks)) => {
            options
                .progress
                .set_total(chunks.iter().map(|c| c.len).sum());
            let progress = options.progress.as_ref();
            write_chunks(
                storage.as_ref(),
                &chunks,
                stdin,
                options.transfers,
                progress,
            )
            .await
            .map(drop)
        }
        (DumpSource::File(path), _) => {
            let path = path.clone();
            let mut reader = tokio::task::spawn_blocking(move || open_dump_file(&path))
                .await
                .map_err(RestoreError::task("dump file reader"))??;
            let mut stdin = stdin;
            tokio::task::spawn_blocking(move || std::io::copy(&mut reader, &mut stdin).map(drop))
                .await
                .map_err(RestoreError::task("dump feeder"))?
                .map_err(RestoreError::step("feed the dump file to pg_restore"))
        }
        _ => Ok(()),
    };
    // pg_restore reads its stdin from the feeder above; it is waited for on a blocking
    // thread, where waiting is allowed.
    #[allow(clippy::disallowed_methods)]
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .map_err(RestoreError::task("pg_restore waiter"))?
        .map_err(|e| RestoreError::io(&program, e))?;
    let messages = messages
        .await
        .map_err(RestoreError::task("pg_restore message reader"))?
        .map_err(|e| RestoreError::io(&program, e))?;
    if !status.success() {
        return Err(RestoreError::Failed(format!(
            "pg_restore into {target} failed ({status}): {}",
            String::from_utf8_lossy(&messages).trim()
        )));
    }
    fed.map_err(RestoreError::step("read the dump"))?;
    options.progress.finish();
    Ok(DumpRestored {
        what: match source {
            DumpSource::Repository(id) => format!("backup {id}"),
            DumpSource::File(path) => path.display().to_string(),
        },
        database: target.clone(),
        elapsed: started.elapsed(),
    })
}

async fn database_exists(pg_command: &PgCommand, name: &str) -> Result<bool, RestoreError> {
    let mut command = tokio::process::Command::from(pg_command("psql"));
    let output = command
        .args(["-AtX", "--dbname=template1", "-c"])
        .arg(format!(
            "SELECT 1 FROM pg_database WHERE datname = '{}'",
            name.replace('\'', "''")
        ))
        .output()
        .await
        .map_err(RestoreError::step("run psql"))?;
    if !output.status.success() {
        return Err(RestoreError::Failed(format!(
            "cannot reach PostgreSQL to check database {name}: {} (check DB_HOST, DB_PORT, DB_USER, DB_PASSWORD)",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "1")
}

async fn run_pg(pg_command: &PgCommand, program: &str, args: &[&str]) -> Result<(), RestoreError> {
    let output = tokio::process::Command::from(pg_command(program))
        .args(args)
        .output()
        .await
        .map_err(RestoreError::step(format!("run {program}")))?;
    if !output.status.success() {
        return Err(RestoreError::Failed(format!(
            "{program} {} failed: {}",
            args.last().copied().unwrap_or(""),
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_staging_database_named_like_production_is_refused() {
        assert_eq!(dump_target("app", None).expect("production"), "app");
        assert_eq!(
            dump_target("app", Some("app_staging")).expect("staging"),
            "app_staging"
        );
        let refused = dump_target("app", Some("app")).expect_err("staging is production");
        let said = refused.to_string();
        assert!(
            said.contains("STAGING_DB_NAME") && said.contains("DB_NAME app"),
            "{said}"
        );
    }

    /// A pg_restore that writes more than a pipe holds to stderr before it reads its input
    /// once waited forever for a reader, while the feeder waited for it to read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pg_restore_that_says_a_lot_before_reading_fails_instead_of_hanging() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dump = tmp.path().join("app.dump");
        let mut bytes = b"PGDMP".to_vec();
        bytes.resize(1 << 20, b'd');
        std::fs::write(&dump, &bytes).expect("write the dump");
        let options = DumpRestoreOptions {
            database: "app_staging".into(),
            target: crate::Target::Staging,
            transfers: 1,
            pg_command: Box::new(|program| {
                let mut command = std::process::Command::new("sh");
                if program == "pg_restore" {
                    command.args([
                        "-c",
                        "head -c 300000 /dev/zero | tr '\\0' x >&2; cat >/dev/null; echo done >&2; exit 1",
                    ]);
                } else {
                    command.args(["-c", "exit 0"]);
                }
                command
            }),
            progress: storage::progress::none(),
        };
        let storage: Arc<dyn Storage> = Arc::new(testing::MemoryStorage::new());
        let restored = tokio::time::timeout(
            Duration::from_secs(60),
            restore_dump(storage, &DumpSource::File(dump), &options, |_, _| async {
                Ok(())
            }),
        )
        .await
        .expect("pg_restore and its feeder waited for each other");
        let said = restored.expect_err("pg_restore failed").to_string();
        assert!(
            said.starts_with("pg_restore into app_staging failed (exit status: 1): xxx")
                && said.ends_with("xxxdone"),
            "{}",
            said.get(said.len().saturating_sub(200)..).unwrap_or(&said)
        );
    }

    #[test]
    fn the_report_names_the_source_and_the_database() {
        let restored = DumpRestored {
            what: "backup 20251227T010000Z-dump".into(),
            database: "app".into(),
            elapsed: Duration::from_millis(2500),
        };
        assert_eq!(
            restored.to_string(),
            "restored backup 20251227T010000Z-dump into database app in 2.5 s"
        );
    }
}
