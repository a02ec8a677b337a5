//! Logical dumps: `pg_dump` in custom format with its own compression off, streamed through
//! the chunk store. Uncompressed, a dump of mostly unchanged tables repeats most of last
//! night's bytes, which content-defined chunks then share; lifeline compresses the chunks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use storage::manifest::{MANIFEST_FORMAT, StreamFile, StreamManifest};
use storage::progress::Progress;
use storage::{BackupKind, Compression, Service, Storage};
use tracing::{info, warn};

use crate::ArchiveError;
use crate::ConnectionOptions;
use crate::chunk_store::{previous_stream_chunks, store_stream};
use crate::publish::{new_backup_id, publish_stream_backup};

#[derive(Debug, Clone)]
pub struct DumpOptions {
    pub connection: ConnectionOptions,
    /// Where `pg_dump` is (the server's major version or newer).
    pub pg_bin: PathBuf,
    pub compression: Compression,
    pub parallelism: usize,
    /// Packs uploaded at once (`transfers`).
    pub transfers: usize,
    pub catalog_path: PathBuf,
    /// The policy whose daily label a new backup starts with.
    pub retention: catalog::RetentionPolicy,
    /// Bytes of the dump stored so far; its size is unknown until pg_dump ends.
    pub progress: Arc<dyn Progress>,
}

/// Dump `connection.dbname` into the repository.
pub async fn run_dump_backup(
    storage: Arc<dyn Storage>,
    opts: &DumpOptions,
) -> Result<StreamManifest, ArchiveError> {
    let previous =
        previous_stream_chunks(storage.as_ref(), &opts.catalog_path, BackupKind::Dump).await?;
    let backup_id = new_backup_id(storage.as_ref()).await?;
    let started_at = jiff::Timestamp::now();
    // Which server the dump is of, for `list` and `status`; pg_dump's own error says more
    // when the server cannot be reached.
    let server_version = match opts.connection.connect().await {
        Ok(client) => match client.query_one("SHOW server_version", &[]).await {
            Ok(row) => row.get::<_, String>(0),
            Err(e) => {
                warn!("server version not recorded: {e}");
                String::new()
            }
        },
        Err(e) => {
            warn!("server version not recorded: {e}");
            String::new()
        }
    };
    info!(backup = %backup_id, database = %opts.connection.dbname, "starting pg_dump");
    let mut child = pg_command(&opts.pg_bin, "pg_dump", &opts.connection)
        .args(["--format=custom", "--compress=0", "--dbname"])
        .arg(&opts.connection.dbname)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            ArchiveError::Precondition(format!(
                "cannot run {} ({e}); install the PostgreSQL client or set pg-bin-dir",
                opts.pg_bin.join("pg_dump").display()
            ))
        })?;
    let Some(stdout) = child.stdout.take() else {
        return Err(ArchiveError::Precondition("pg_dump has no output".into()));
    };
    let stored = store_stream(
        storage.clone(),
        stdout,
        previous,
        opts.compression,
        opts.parallelism,
        opts.transfers,
        opts.progress.as_ref(),
    )
    .await;
    if stored.is_err() {
        let _ = child.kill();
    }
    // Waiting for pg_dump is blocking work, on a blocking thread.
    #[allow(clippy::disallowed_methods)]
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .map_err(ArchiveError::task("pg_dump waiter"))?
        .map_err(|source| ArchiveError::Io {
            path: "pg_dump".into(),
            source,
        })?;
    let stored = stored?;
    // A dump that pg_dump did not finish is never recorded as a backup.
    if !output.status.success() {
        return Err(ArchiveError::Precondition(format!(
            "pg_dump failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    // Every pack was durable when its write ended (chunk_store::Packer): nothing to flush.
    let manifest = StreamManifest {
        format: MANIFEST_FORMAT,
        backup_id,
        service: Service::Postgresql,
        kind: BackupKind::Dump,
        server_version,
        source: format!(
            "{}:{}/{}",
            opts.connection.host, opts.connection.port, opts.connection.dbname
        ),
        started_at,
        finished_at: jiff::Timestamp::now(),
        files: vec![StreamFile {
            name: format!("{}.dump", opts.connection.dbname),
            size: stored.size,
            chunks: stored.chunks,
        }],
        counts: BTreeMap::new(),
        size_bytes: stored.size,
        new_bytes: stored.new_bytes,
    };
    publish_stream_backup(
        storage.as_ref(),
        &manifest,
        &opts.catalog_path,
        &opts.retention,
    )
    .await?;
    opts.progress.finish();
    info!(backup = %manifest.backup_id, size_bytes = manifest.size_bytes, new_bytes = manifest.new_bytes, "dump complete");
    Ok(manifest)
}

/// A PostgreSQL client program with the connection in its environment (the password never on
/// its command line).
pub fn pg_command(pg_bin: &Path, program: &str, connection: &ConnectionOptions) -> Command {
    let mut command = Command::new(pg_bin.join(program));
    command.envs(connection.libpq_env()).stdin(Stdio::null());
    command
}
