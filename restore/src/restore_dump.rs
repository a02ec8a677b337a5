//! The bytes of a logical dump, for `pg_restore` to read: from a backup's chunks (fetched in
//! parallel, verified, written in order), or from a file the old platform left, plain or
//! gzip-compressed (`backup_YYYYMMDD_HHMMSS.dump.gz`).

use std::io::{Read, Write};
use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use storage::Storage;
use storage::manifest::ChunkRef;

use crate::RestoreError;
use crate::restore_redis::fetch_chunk;

/// Write `chunks` in order into `out` (a pipe into pg_restore), `downloads` fetched at once.
pub async fn write_chunks<W: Write + Send + 'static>(
    storage: &dyn Storage,
    chunks: &[ChunkRef],
    out: W,
    downloads: usize,
) -> Result<W, RestoreError> {
    let mut out = Some(out);
    let mut fetched = futures::stream::iter(chunks)
        .map(|chunk| fetch_chunk(storage, chunk))
        .buffered(downloads.max(1));
    while let Some(plain) = fetched.try_next().await? {
        let Some(mut writer) = out.take() else {
            break;
        };
        writer = tokio::task::spawn_blocking(move || writer.write_all(&plain).map(|()| writer))
            .await
            .map_err(RestoreError::task("writer task"))?
            .map_err(|e| RestoreError::io("(pg_restore input)", e))?;
        out = Some(writer);
    }
    out.ok_or_else(|| RestoreError::Refused("the dump writer went away".into()))
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
