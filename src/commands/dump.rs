//! Logical dumps: `backup postgres --kind dump` and `restore postgres --kind dump`, which
//! recreate a database with pg_restore (production after a pre-restore dump of what it
//! replaces; staging from the config's staging database name).

use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use jiff::tz::TimeZone;
use restore::BackupSelector;

use crate::config::Settings;

fn dump_options(settings: &Settings, dbname: &str) -> Result<archiver::DumpOptions> {
    let mut connection = settings.db.clone();
    connection.dbname = dbname.to_string();
    Ok(archiver::DumpOptions {
        connection,
        pg_bin: settings.pg_bin(),
        compression: settings.compression,
        parallelism: settings.parallelism,
        uploads: settings.upload_transfers(),
        catalog_path: settings.catalog_path()?,
    })
}

pub async fn backup(settings: &Settings) -> Result<ExitCode> {
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

/// Where the dump comes from.
pub enum Source {
    Repository(String),
    File(PathBuf),
}

pub async fn restore(
    from: &str,
    file: Option<PathBuf>,
    staging: bool,
    settings: &Settings,
) -> Result<ExitCode> {
    let target = if staging {
        // A staging restore drops its target with --force and keeps no copy of it: named like
        // production, it would silently destroy production.
        if settings.staging_db == settings.db.dbname {
            bail!(
                "the staging database name {} is the production database (DB_NAME {}): a staging \
                 restore drops its target without a pre-restore dump, so nothing was done; set \
                 STAGING_DB_NAME (or staging-db-name in the config file) to another name, or \
                 restore with --target production",
                settings.staging_db,
                settings.db.dbname
            );
        }
        settings.staging_db.clone()
    } else {
        settings.db.dbname.clone()
    };
    let source = match file {
        Some(path) => Source::File(path),
        None => {
            let selector: BackupSelector = from.parse().map_err(anyhow::Error::msg)?;
            let catalog = settings.open_catalog()?;
            let backups = catalog.backups(Some("postgresql"))?;
            let backup = restore::select_backup(
                &backups,
                "dump",
                &selector,
                jiff::Timestamp::now(),
                &TimeZone::system(),
            )
            .context(
                "choose the dump to restore (`lifeline backup postgres --kind dump` makes them)",
            )?;
            Source::Repository(backup.backup_id)
        }
    };
    let storage = settings.repository_for_writing().await?;
    if let Source::Repository(id) = &source {
        super::take_lease(storage.as_ref(), id).await;
    }
    // Check the source before anything is dropped.
    let chunks = match &source {
        Source::Repository(id) => {
            let manifest = storage::manifest::StreamManifest::load(storage.as_ref(), id)
                .await
                .with_context(|| format!("read the manifest of {id}"))?;
            restore::validate_stream(&manifest)?;
            let chunks: Vec<_> = manifest.files.into_iter().flat_map(|f| f.chunks).collect();
            // Every chunk read, decoded and hash-checked, then dropped (memory holds only the
            // chunks in flight): a damaged dump must fail here, while the database still exists.
            restore::write_chunks(
                storage.as_ref(),
                &chunks,
                std::io::sink(),
                settings.download_transfers(),
            )
            .await
            .with_context(|| {
                format!(
                    "check dump {id} before restoring it (nothing was dropped; restore another \
                     dump with --from BACKUP_ID, `lifeline list` names them)"
                )
            })?;
            Some(chunks)
        }
        Source::File(path) => {
            // Read it whole: a .gz file's checksums are only checked at the end of its members.
            let mut reader = restore::open_dump_file(path)?;
            tokio::task::spawn_blocking(move || std::io::copy(&mut reader, &mut std::io::sink()))
                .await?
                .with_context(|| {
                    format!(
                        "check {} before restoring it (nothing was dropped)",
                        path.display()
                    )
                })?;
            None
        }
    };
    let started = Instant::now();
    if !staging && database_exists(settings, &target)? {
        let before = archiver::run_dump_backup(storage.clone(), &dump_options(settings, &target)?)
            .await
            .with_context(|| format!("pre-restore dump of {target} (nothing was changed)"))?;
        println!(
            "pre-restore dump of {target}: backup {} (restore it with --from {} if needed)",
            before.backup_id, before.backup_id
        );
    }
    run_pg(
        settings,
        "dropdb",
        &[
            "--if-exists",
            "--force",
            "--maintenance-db=template1",
            &target,
        ],
    )?;
    run_pg(
        settings,
        "createdb",
        &["--maintenance-db=template1", &target],
    )?;
    let mut args = vec!["--exit-on-error", "--dbname", target.as_str()];
    if staging {
        // Staging has its own roles: objects belong to whoever restores them.
        args.extend(["--no-owner", "--no-privileges"]);
    }
    let pg_bin = settings.pg_bin();
    let mut child = archiver::pg_command(&pg_bin, "pg_restore", &settings.db)
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {}", pg_bin.join("pg_restore").display()))?;
    let stdin = child.stdin.take().context("pg_restore has no input")?;
    let fed = match (&source, chunks) {
        (Source::Repository(_), Some(chunks)) => restore::write_chunks(
            storage.as_ref(),
            &chunks,
            stdin,
            settings.download_transfers(),
        )
        .await
        .map(drop)
        .map_err(anyhow::Error::from),
        (Source::File(path), _) => {
            let mut reader = restore::open_dump_file(path)?;
            let mut stdin = stdin;
            tokio::task::spawn_blocking(move || std::io::copy(&mut reader, &mut stdin).map(drop))
                .await?
                .context("feed the dump file to pg_restore")
        }
        _ => Ok(()),
    };
    let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await??;
    if !output.status.success() {
        bail!(
            "pg_restore into {target} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    fed.context("read the dump")?;
    println!(
        "restored {} into database {target} in {:.1} s",
        match &source {
            Source::Repository(id) => format!("backup {id}"),
            Source::File(path) => path.display().to_string(),
        },
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

fn database_exists(settings: &Settings, name: &str) -> Result<bool> {
    let output = archiver::pg_command(&settings.pg_bin(), "psql", &settings.db)
        .args(["-AtX", "--dbname=template1", "-c"])
        .arg(format!(
            "SELECT 1 FROM pg_database WHERE datname = '{}'",
            name.replace('\'', "''")
        ))
        .output()
        .context("run psql")?;
    if !output.status.success() {
        bail!(
            "cannot reach PostgreSQL to check database {name}: {} (check DB_HOST, DB_PORT, DB_USER, DB_PASSWORD)",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "1")
}

fn run_pg(settings: &Settings, program: &str, args: &[&str]) -> Result<()> {
    let output = archiver::pg_command(&settings.pg_bin(), program, &settings.db)
        .args(args)
        .output()
        .with_context(|| format!("run {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.last().copied().unwrap_or(""),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}
