//! What a backup would do, for `SIMULATE_MODE`: the same checks a backup runs before it starts
//! (the server answers, archives, and is the cluster whose files are read; the repository is
//! that cluster's), then a walk of the files it would copy. Nothing is written anywhere: no
//! `pg_backup_start`, no claim on the repository, no catalog created.

use std::fmt;
use std::path::PathBuf;

use storage::{BackupKind, Storage};

use crate::base_backup::{
    BaseBackupOptions, Preflight, ServerFacts, preflight, server_tablespaces,
};
use crate::chunk_store::{Lineage, newest_backup};
use crate::error::PgContext;
use crate::walk::{match_tablespaces, walk_data_dir};
use crate::{ArchiveError, cluster};

/// The plan of a base backup, as `run_base_backup` would carry it out now.
#[derive(Debug)]
pub struct BackupPreview {
    pub server_version: String,
    pub system_identifier: u64,
    /// `primary`, or the standby's name.
    pub source: String,
    pub data_dir: PathBuf,
    pub files: usize,
    pub bytes: u64,
    pub tablespaces: usize,
    pub repository: String,
    /// False: no cluster has claimed the repository yet; the backup would claim it.
    pub repository_bound: bool,
    /// The backup it would build on (only the chunks that one lacks would be stored).
    pub previous: Option<String>,
}

/// Run a base backup's read-only checks and say what it would copy.
pub async fn preview_base_backup(
    storage: &dyn Storage,
    opts: &BaseBackupOptions,
) -> Result<BackupPreview, ArchiveError> {
    let Preflight {
        client,
        facts,
        standby,
        data_dir,
        ..
    } = preflight(opts).await?;
    let bound = cluster::check(storage, facts.system_identifier, "this server").await?;
    may_run_backup_functions(&client, &facts).await?;
    let walk = {
        let (dir, version_dir) = (data_dir.clone(), facts.tablespace_version_dir.clone());
        let skipped = facts.layout.skip_contents;
        tokio::task::spawn_blocking(move || walk_data_dir(&dir, &version_dir, skipped))
            .await
            .map_err(ArchiveError::task("directory walk"))??
    };
    match_tablespaces(server_tablespaces(&client).await?, &walk)?;
    let files = walk
        .entries
        .iter()
        .filter(|e| e.kind == storage::manifest::EntryKind::File);
    let (count, bytes) = files.fold((0, 0), |(n, b), e| (n + 1, b + e.size));
    Ok(BackupPreview {
        server_version: facts.version,
        system_identifier: facts.system_identifier,
        source: standby.map_or_else(|| "primary".to_string(), |s| s.name),
        data_dir,
        files: count,
        bytes,
        tablespaces: walk.linked.len() + walk.in_place.len(),
        repository: storage.describe(),
        repository_bound: bound.is_some(),
        previous: previous_backup(opts, facts.system_identifier).await,
    })
}

/// The backup's user may start and stop a backup, as the real run would find out only once it
/// calls them.
async fn may_run_backup_functions(
    client: &tokio_postgres::Client,
    facts: &ServerFacts,
) -> Result<(), ArchiveError> {
    let functions = facts.layout.backup_functions;
    for name in [functions.start_name(), functions.stop_name()] {
        let allowed: Option<bool> = client
            .query_one(
                "SELECT bool_or(has_function_privilege(oid, 'EXECUTE')) FROM pg_proc \
                 WHERE proname = $1 AND pronamespace = 'pg_catalog'::regnamespace",
                &[&name],
            )
            .await
            .doing("checking the backup user's privileges")?
            .get(0);
        if allowed != Some(true) {
            return Err(ArchiveError::Precondition(format!(
                "the backup user may not run {name}(): back up as a superuser, or GRANT EXECUTE \
                 ON FUNCTION {name} to it"
            )));
        }
    }
    Ok(())
}

/// The newest base backup of this cluster in the catalog (a missing catalog is not created).
async fn previous_backup(opts: &BaseBackupOptions, system_identifier: u64) -> Option<String> {
    let lineage = Lineage::Base { system_identifier };
    let open = |p: &std::path::Path| catalog::Catalog::open_existing_or_empty(p);
    let newest = newest_backup(&opts.catalog_path, lineage, open).await;
    newest.ok().flatten().map(|b| b.backup_id)
}

impl fmt::Display for BackupPreview {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "SIMULATE_MODE: would take a base backup of PostgreSQL {} (cluster {}) from the {}, \
             reading {}: {} files, {:.1} MiB, {} tablespace(s)",
            self.server_version,
            self.system_identifier,
            self.source,
            self.data_dir.display(),
            self.files,
            self.bytes as f64 / 1048576.0,
            self.tablespaces
        )?;
        let into = match (&self.previous, self.repository_bound) {
            (Some(previous), _) => {
                format!("building on {previous}: only the chunks it lacks would be stored")
            }
            (None, true) => "a full copy: no earlier base backup of this cluster".to_string(),
            (None, false) => format!(
                "a full copy, and the repository would be bound to cluster {}",
                self.system_identifier
            ),
        };
        writeln!(f, "  into {}, {into}", self.repository)?;
        write!(f, "nothing was changed: unset SIMULATE_MODE to back up")
    }
}

/// A logical dump's read-only checks (the database answers) and what it would store.
pub async fn preview_dump(
    storage: &dyn Storage,
    opts: &crate::DumpOptions,
) -> Result<String, ArchiveError> {
    use crate::error::PgContext;
    let client = opts.connection.connect().await?;
    let row = client
        .query_one(
            "SELECT current_setting('server_version'), pg_database_size(current_database())",
            &[],
        )
        .await
        .doing("reading the database's size")?;
    let (version, size): (String, i64) = (row.get(0), row.get(1));
    Ok(format!(
        "SIMULATE_MODE: would dump database {} (PostgreSQL {version}, {:.1} MiB on disk) with \
         pg_dump into {}\nnothing was changed: unset SIMULATE_MODE to back up",
        opts.connection.dbname,
        size as f64 / 1048576.0,
        storage.describe()
    ))
}

/// A Redis backup's read-only check (the server answers and is not loading) and what it would
/// store.
pub async fn preview_redis(
    storage: &dyn Storage,
    opts: &crate::RdbBackupOptions,
    kind: BackupKind,
) -> Result<String, ArchiveError> {
    let redis = opts.redis.clone();
    let (keys, aof) = tokio::task::spawn_blocking(move || {
        let keys = crate::keyspace(&redis)?;
        // The files an AOF backup would copy, found as the real run finds them.
        let aof = match kind {
            BackupKind::Aof => Some(crate::aof::pin_aof(&redis)?),
            _ => None,
        };
        Ok::<_, ArchiveError>((keys, aof))
    })
    .await
    .map_err(ArchiveError::task("Redis check"))??;
    let what = match aof {
        Some(aof) => format!(
            "its append-only files ({} files, {:.1} MiB)",
            aof.files.len(),
            aof.files.iter().map(|f| f.size).sum::<u64>() as f64 / 1048576.0
        ),
        None => "an RDB snapshot over the replication protocol".to_string(),
    };
    Ok(format!(
        "SIMULATE_MODE: would back up Redis at {}:{} ({} keys) as {what} into {}\nnothing was \
         changed: unset SIMULATE_MODE to back up",
        opts.redis.host,
        opts.redis.port,
        keys.values().sum::<u64>(),
        storage.describe()
    ))
}
