//! Logical dumps: `backup postgres --kind dump` and `restore postgres --kind dump`, which
//! recreate a database with pg_restore (production after a pre-restore dump of what it
//! replaces; staging from the config's staging database name).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};

use ops::Settings;

fn dump_options(settings: &Settings, dbname: &str) -> Result<archiver::DumpOptions> {
    let mut connection = super::platform::connection(settings.database());
    connection.dbname = dbname.to_string();
    Ok(archiver::DumpOptions {
        connection,
        pg_bin: settings.pg_bin(),
        compression: settings.compression,
        parallelism: settings.parallelism,
        transfers: settings.upload_transfers(),
        retention: settings.retention,
        catalog_path: settings.catalog_path()?,
        progress: ops::progress::for_operation("backup"),
    })
}

pub async fn backup(settings: &Settings) -> Result<ExitCode> {
    if settings.ops.simulate {
        let storage = settings.repository_to_write().await?;
        let opts = dump_options(settings, &settings.db.dbname)?;
        let preview = archiver::preview_dump(storage.as_ref(), &opts).await;
        println!("{}", preview.context("dump")?);
        return Ok(ExitCode::SUCCESS);
    }
    let storage = settings.repository_for_writing().await?;
    let started = Instant::now();
    let manifest =
        archiver::run_dump_backup(storage, &dump_options(settings, &settings.db.dbname)?)
            .await
            .with_context(|| format!("dump of database {}", settings.db.dbname))?;
    println!(
        "backup {} complete: dump of {} ({:.1} MiB), {:.1} MiB new in the repository, {:.1} s",
        manifest.backup_id,
        settings.db.dbname,
        manifest.size_bytes as f64 / (1u64 << 20) as f64,
        manifest.new_bytes as f64 / (1u64 << 20) as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

pub async fn restore(
    from: &str,
    file: Option<PathBuf>,
    target: restore::Target,
    settings: &Settings,
) -> Result<ExitCode> {
    let production = &settings.database().dbname;
    let staging = (target == restore::Target::Staging).then_some(&*settings.staging_db);
    let database = restore::dump_target(production, staging)?;
    let source = match file {
        Some(path) => restore::DumpSource::File(path),
        None => {
            let selector: restore::BackupSelector = from.parse().map_err(anyhow::Error::msg)?;
            restore::choose_dump(&settings.open_catalog()?, &selector)?
        }
    };
    let storage = settings.repository_to_write().await?;
    let (pg_bin, db) = (settings.pg_bin(), super::platform::connection(&settings.db));
    let options = restore::DumpRestoreOptions {
        database,
        target,
        transfers: settings.download_transfers(),
        pg_command: Box::new(move |program| archiver::pg_command(&pg_bin, program, &db)),
        progress: ops::progress::for_operation("restore"),
    };
    if settings.ops.simulate {
        let preview = restore::preview_dump_restore(storage.as_ref(), &source, &options);
        println!("{}", preview.await?);
        return Ok(ExitCode::SUCCESS);
    }
    let restored =
        restore::restore_dump(storage, &source, &options, |storage, target| async move {
            let before =
                archiver::run_dump_backup(storage, &dump_options(settings, &target)?).await?;
            let id = before.backup_id;
            println!(
                "pre-restore dump of {target}: backup {id} (restore it with --from {id} if needed)"
            );
            Ok(())
        })
        .await?;
    println!("{restored}");
    Ok(ExitCode::SUCCESS)
}
