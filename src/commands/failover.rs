//! `lifeline failover --incident ...`, `--simulate`, `--status`: one command per incident
//! type, one report. The steps come from the ops crate (PostgreSQL roles and promotion, restart
//! commands, health URLs, the connection file) and the restore crate (a restore from the
//! repository when there is no replica, or in the secondary region).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ops::pg::{self, NodeState};
use storage::wal::WalFileName;

use super::steps::Steps;
use crate::config::Settings;

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// database_failure, redis_failure, service_failure (with the service's name) or
    /// datacenter_failure.
    #[arg(long, value_parser = ["database_failure", "redis_failure", "service_failure", "datacenter_failure"], required_unless_present = "status")]
    incident: Option<String>,
    /// The service of service_failure, as named in [services.NAME].
    service: Option<String>,
    /// Run the read-only checks and print the plan; change nothing (also SIMULATE_MODE=true).
    #[arg(long)]
    simulate: bool,
    /// Roles, replication lag, last backup, last archived WAL and its age, last failovers.
    #[arg(long, conflicts_with = "incident")]
    status: bool,
    /// database_failure: fail over even though the primary still answers (its WAL is switched
    /// and archived first).
    #[arg(long)]
    force: bool,
}

impl FailoverArgs {
    pub fn is_status(&self) -> bool {
        self.status
    }
}

pub async fn run(args: FailoverArgs, settings: &Settings) -> Result<ExitCode> {
    if args.status {
        return status(settings).await;
    }
    let incident = args.incident.clone().unwrap_or_default();
    let mut steps = Steps::new(args.simulate || settings.ops.simulate);
    steps.say(format!(
        "failover: incident {incident}{} at {}",
        args.service
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default(),
        jiff::Zoned::now().strftime("%Y-%m-%d %H:%M:%S %Z")
    ));
    let started = Instant::now();
    let outcome = match incident.as_str() {
        "database_failure" => database_failure(settings, &mut steps, args.force).await,
        "redis_failure" => redis_failure(settings, &mut steps, args.force).await,
        "service_failure" => service_failure(settings, &mut steps, args.service.as_deref()).await,
        "datacenter_failure" => datacenter_failure(settings, &mut steps).await,
        other => bail!("unknown incident {other}"),
    };
    let elapsed = started.elapsed().as_secs_f64();
    let simulated = steps.simulate();
    let (ok, summary) = match &outcome {
        Ok(summary) if simulated => (true, format!("simulation of {incident}: {summary}")),
        Ok(summary) => (true, format!("{incident}: {summary} in {elapsed:.1} s")),
        Err(e) => (false, format!("{incident}: {e:#}")),
    };
    steps.say(format!(
        "RESULT: {} ({summary})",
        if ok { "SUCCESS" } else { "FAILED" }
    ));
    if !simulated {
        super::notify(settings, "failover", ok, &summary, &steps.transcript()).await;
    }
    if ok {
        Ok(ExitCode::SUCCESS)
    } else {
        Ok(ExitCode::FAILURE)
    }
}

fn primary_name(settings: &Settings) -> String {
    format!("primary {}:{}", settings.db.host, settings.db.port)
}

/// The replica's connection: the primary's credentials and database on the replica's address.
fn replica(settings: &Settings) -> Option<(archiver::ConnectionOptions, String)> {
    let f = &settings.ops.failover;
    let host = f.replica_host.clone()?;
    let mut db = settings.db.clone();
    db.host = host;
    db.port = f.replica_port.unwrap_or(5432);
    let name = format!("replica {}:{}", db.host, db.port);
    Some((db, name))
}

fn describe(state: &NodeState) -> String {
    match (&state.error, state.role()) {
        (Some(e), _) if !state.reachable => format!("{} is DOWN: {e}", state.node),
        (_, role) => format!(
            "{} is up, role {role}, at {}{}",
            state.node,
            state.lsn.as_deref().unwrap_or("?"),
            state
                .last_replay_at
                .as_deref()
                .map(|t| format!(", last replayed commit {t}"))
                .unwrap_or_default()
        ),
    }
}

async fn database_failure(settings: &Settings, steps: &mut Steps, force: bool) -> Result<String> {
    let primary_config = settings.db.pg_config();
    let primary = pg::probe(&primary_config, &primary_name(settings), PROBE_TIMEOUT).await;
    steps.found(describe(&primary));
    if primary.reachable && !primary.in_recovery && !force {
        bail!(
            "the primary answers and accepts writes: nothing to fail over. If it must be replaced anyway (INC-002), run again with --force"
        );
    }
    let still_writable = primary.reachable && !primary.in_recovery;
    if still_writable {
        let client = if steps.simulate() {
            None
        } else {
            Some(pg::connect(&primary_config, &primary.node, PROBE_TIMEOUT).await?)
        };
        let fence = "make the old primary read-only (default_transaction_read_only) so that nothing writes to both";
        if steps.step(fence)
            && let Some(client) = &client
        {
            pg::fence_writes(client, &primary.node).await?;
            steps.done("new transactions on the old primary are read-only");
        }
        // Whatever the replica has not replayed is in the repository after this.
        if steps.step("switch the primary's WAL and wait until the segment is archived")
            && let Some(client) = &client
        {
            let segment =
                pg::switch_and_archive(client, &primary.node, Duration::from_secs(120)).await?;
            steps.done(format!("{segment} archived"));
        }
    }
    let Some((replica_db, replica_name)) = replica(settings) else {
        steps.found("no replica configured ([failover] replica-host / REPLICA_HOST): restoring from the repository");
        let storage = settings.repository().await?;
        let (backup, last_wal) = newest_state(storage.as_ref(), &settings.open_catalog()?).await?;
        return restore_from_repository(settings, steps, "primary", &backup, &last_wal).await;
    };
    let replica_config = replica_db.pg_config();
    let state = pg::probe(&replica_config, &replica_name, PROBE_TIMEOUT).await;
    steps.found(describe(&state));
    if !state.reachable {
        bail!(
            "the replica is down too: restore from the repository with `lifeline restore postgres --type pitr --until latest --data-dir DIR` (INC-005 steps)"
        );
    }
    let loss = loss_window(settings, &state);
    steps.found(&loss);
    if state.in_recovery {
        let timeout =
            Duration::from_secs(settings.ops.failover.promote_timeout_seconds.unwrap_or(60));
        if steps.step(format!(
            "promote {replica_name} (pg_promote) and wait until it accepts writes"
        )) {
            let took = pg::promote(&replica_config, &replica_name, timeout).await?;
            steps.done(format!(
                "{replica_name} is the primary, accepting writes after {:.1} s",
                took.as_secs_f64()
            ));
        }
    } else {
        steps.found(format!(
            "{replica_name} is already out of recovery: no promotion needed"
        ));
    }
    switch_connection_file(settings, steps, &replica_db.host, replica_db.port)?;
    if still_writable {
        steps.found(format!(
            "next: stop the old {} (pg_ctl stop) or fence its host; it still runs, read-only by default",
            primary.node
        ));
    }
    Ok(format!("{replica_name} promoted; {loss}"))
}

/// What the promoted replica may lack: WAL in the archive beyond its replay position, and the
/// commit time of the last transaction it replayed.
fn loss_window(settings: &Settings, replica: &NodeState) -> String {
    let replayed = replica.lsn.as_deref().and_then(pg::parse_lsn);
    let archived_end = settings.open_catalog().ok().and_then(|c| {
        let w = c.last_wal().ok()??;
        let name: WalFileName = w.name.parse().ok()?;
        let segment_size = storage::wal::DEFAULT_SEGMENT_SIZE;
        let start = name.segment(segment_size)?.start_lsn(segment_size).0;
        Some((w.name, start + segment_size))
    });
    let replay_text = replica.lsn.as_deref().unwrap_or("unknown");
    let commit = replica
        .last_replay_at
        .as_deref()
        .map(|t| format!("; its last replayed commit is from {t}"))
        .unwrap_or_default();
    match (replayed, archived_end) {
        (Some(r), Some((name, end))) if end > r => format!(
            "data-loss window: the replica replayed to {replay_text}, the archive holds WAL to the end of {name}: up to {} bytes of archived WAL are not on the replica{commit}",
            end - r
        ),
        (Some(_), Some((name, _))) => format!(
            "data-loss window: none measurable, the replica replayed to {replay_text}, past the last archived segment {name}{commit}"
        ),
        _ => format!(
            "data-loss window: not measurable (replica at {replay_text}, no archived WAL in the catalog){commit}"
        ),
    }
}

fn switch_connection_file(
    settings: &Settings,
    steps: &mut Steps,
    host: &str,
    port: u16,
) -> Result<()> {
    let f = &settings.ops.failover;
    let Some(path) = &f.connection_file else {
        steps.found(format!(
            "no connection file configured ([failover] connection-file): point the application at {host}:{port}"
        ));
        return Ok(());
    };
    let variable = f.connection_variable.as_deref().unwrap_or("DATABASE_URL");
    if !steps.step(format!(
        "point {variable} in {} at {host}:{port}",
        path.display()
    )) {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read the connection file {}", path.display()))?;
        let (_, switch) =
            ops::connfile::rewrite(&text, variable, host, port).map_err(anyhow::Error::msg)?;
        steps.found(format!(
            "{variable} would change from {} to {}",
            switch.before, switch.after
        ));
        return Ok(());
    }
    let switch = ops::connfile::switch_file(path, variable, host, port)?;
    steps.done(format!("{variable}: {} -> {}", switch.before, switch.after));
    Ok(())
}

/// The newest complete base backup of the repository's cluster and the newest archived WAL,
/// as `catalog` knows them.
async fn newest_state(
    storage: &dyn storage::Storage,
    catalog: &catalog::Catalog,
) -> Result<(catalog::BackupRecord, String)> {
    let sysid = storage::manifest::ClusterIdentity::load(storage)
        .await?
        .and_then(|c| c.system_identifier())
        .context("the repository holds no cluster: nothing was ever archived or backed up there")?;
    let backup = catalog
        .backups(Some("postgresql"))?
        .into_iter()
        .rfind(|b| {
            b.system_identifier == sysid
                && b.kind == "base"
                && b.state == catalog::BackupState::Complete
        })
        .context("the repository holds no complete base backup to restore")?;
    let last_wal = catalog
        .last_wal()?
        .map(|w| w.name)
        .unwrap_or_else(|| "unknown".into());
    Ok((backup, last_wal))
}

/// No replica (or a secondary region): the latest state from the repository into PGDATA,
/// started with the configured command, checked writable.
async fn restore_from_repository(
    settings: &Settings,
    steps: &mut Steps,
    role: &str,
    backup: &catalog::BackupRecord,
    last_wal: &str,
) -> Result<String> {
    let data_dir = settings
        .pgdata
        .clone()
        .context("PGDATA (or pgdata in the config) names no data directory to restore into")?;
    let storage = settings.repository().await?;
    steps.found(format!(
        "newest base backup {}; newest archived WAL {last_wal}",
        backup.backup_id
    ));
    let busy = data_dir.join("postmaster.pid").exists();
    if busy {
        steps.found(format!(
            "{} still has a postmaster.pid: if the old server is gone, move the directory aside first",
            data_dir.display()
        ));
    }
    if steps.step(format!(
        "restore {} into {} and recover through the end of the archive",
        backup.backup_id,
        data_dir.display()
    )) {
        let options = super::restore::postgres_options(
            settings,
            backup,
            true,
            // The restore makes the new primary: it archives as the old one did.
            restore::RestoreChoices {
                tablespaces: restore::TablespaceMapping {
                    each: settings
                        .ops
                        .failover
                        .tablespace_map
                        .iter()
                        .map(|(name, dir)| (name.clone(), dir.clone()))
                        .collect(),
                    all: settings.ops.failover.tablespace_map_all.clone(),
                },
                waldir: settings.ops.failover.waldir.clone(),
                archive_mode: restore::ArchiveMode::Preserve,
                ..Default::default()
            },
        )?;
        let restored = restore::restore_backup(
            storage,
            backup,
            &restore::RecoveryTarget::EndOfArchive,
            &data_dir,
            &options,
        )
        .await?;
        println!("{restored}");
        super::status_file::record_restore(settings, &backup.backup_id, &data_dir);
        steps.done(format!("restored {}", backup.backup_id));
    }
    let Some(start) = settings.ops.failover.postgres_start_command.clone() else {
        steps.found("no [failover] postgres-start-command: start PostgreSQL on the restored directory by hand");
        return Ok(format!(
            "{} restored into {} as the new {role}",
            backup.backup_id,
            data_dir.display()
        ));
    };
    if steps.step(format!("start PostgreSQL: {start}")) {
        ops::process::run_shell(&start, Duration::from_secs(600)).await?;
        let node = format!("{}:{}", settings.db.host, settings.db.port);
        pg::wait_writable(
            &settings.db.pg_config(),
            &node,
            Instant::now() + Duration::from_secs(600),
        )
        .await?;
        steps.done(format!("{node} accepts writes"));
    }
    Ok(format!(
        "{} restored and recovered to {last_wal} as the new {role}",
        backup.backup_id
    ))
}

async fn service_failure(
    settings: &Settings,
    steps: &mut Steps,
    name: Option<&str>,
) -> Result<String> {
    let known = || {
        settings
            .ops
            .services
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(name) = name else {
        bail!(
            "name the service: lifeline failover --incident service_failure NAME (configured: {})",
            known()
        );
    };
    let Some(service) = settings.ops.services.get(name) else {
        bail!(
            "no [services.{name}] in the configuration (configured: {})",
            known()
        );
    };
    let timeout = Duration::from_secs(service.timeout_seconds.unwrap_or(60));
    match ops::process::wait_healthy(&service.health_url, Duration::from_secs(1)).await {
        Ok(_) => steps.found(format!("{name} answers its health URL now")),
        Err(e) => steps.found(format!("{name} is unhealthy: {e}")),
    }
    if steps.step(format!("restart {name}: {}", service.restart_command)) {
        ops::process::run_shell(&service.restart_command, Duration::from_secs(300)).await?;
        steps.done("restart command exited 0");
    }
    if steps.step(format!(
        "poll {name}'s health URL until healthy (at most {} s)",
        timeout.as_secs()
    )) {
        let took = ops::process::wait_healthy(&service.health_url, timeout).await?;
        steps.done(format!("{name} healthy after {:.1} s", took.as_secs_f64()));
    }
    Ok(format!("{name} restarted and healthy"))
}

async fn redis_keys(settings: &Settings) -> Result<u64> {
    let redis = settings.redis.clone();
    let keys = tokio::task::spawn_blocking(move || archiver::keyspace(&redis)).await??;
    Ok(keys.values().sum())
}

async fn redis_failure(settings: &Settings, steps: &mut Steps, force: bool) -> Result<String> {
    let f = &settings.ops.failover;
    let node = format!("Redis {}:{}", settings.redis.host, settings.redis.port);
    let recorded = settings
        .open_catalog()?
        .backups(Some("redis"))?
        .into_iter()
        // The newest of either kind: an AOF backup is newer data than last night's RDB.
        .filter(|b| matches!(b.kind.as_str(), "rdb" | "aof"))
        .filter(|b| b.state == catalog::BackupState::Complete)
        .max_by_key(|b| (b.finished_at_us, b.backup_id.clone()));
    match redis_keys(settings).await {
        Ok(n) if n > 0 && !force => {
            steps.found(format!("{node} answers with {n} keys"));
            bail!("Redis answers with its data: nothing to recover (--force restarts it anyway)");
        }
        Ok(n) => steps.found(format!("{node} answers with {n} keys")),
        Err(e) => steps.found(format!("{node} is DOWN: {e:#}")),
    }
    let restart = f.redis_restart_command.clone().context(
        "no [failover] redis-restart-command configured: restart Redis by hand (INC-004)",
    )?;
    if steps.step(format!("restart Redis: {restart}")) {
        ops::process::run_shell(&restart, Duration::from_secs(120)).await?;
        let n = wait_redis(settings).await?;
        steps.done(format!("{node} answers with {n} keys"));
    }
    let keys = if steps.simulate() {
        0
    } else {
        redis_keys(settings).await?
    };
    let Some(backup) = recorded else {
        steps.found("no Redis backup in the catalog to restore from");
        return Ok("Redis restarted".into());
    };
    if !steps.simulate() && keys > 0 {
        return Ok(format!(
            "Redis restarted with {keys} keys; no restore needed"
        ));
    }
    let data_dir = f.redis_data_dir.clone().context(
        "Redis came back empty and no [failover] redis-data-dir is configured to restore into",
    )?;
    let stop = f
        .redis_stop_command
        .clone()
        .context("Redis came back empty and no [failover] redis-stop-command is configured")?;
    steps.found(format!(
        "Redis holds no keys; backup {} can bring it back",
        backup.backup_id
    ));
    if steps.step(format!("stop Redis: {stop}")) {
        ops::process::run_shell(&stop, Duration::from_secs(120)).await?;
        steps.done("stopped");
    }
    if steps.step(format!(
        "restore {} into {}",
        backup.backup_id,
        data_dir.display()
    )) {
        let storage = settings.repository().await?;
        let manifest =
            storage::manifest::StreamManifest::load(storage.as_ref(), &backup.backup_id).await?;
        super::take_lease(storage.as_ref(), &backup.backup_id).await;
        restore::restore_redis(
            storage.as_ref(),
            &manifest,
            &data_dir,
            settings.download_transfers(),
        )
        .await?;
        steps.done(format!("{} files in place", backup.kind.to_uppercase()));
    }
    if steps.step(format!("start Redis: {restart}")) {
        ops::process::run_shell(&restart, Duration::from_secs(120)).await?;
        let n = wait_redis(settings).await?;
        steps.done(format!("{node} answers with {n} keys"));
        return Ok(format!(
            "Redis restored from {} with {n} keys",
            backup.backup_id
        ));
    }
    Ok(format!("Redis would be restored from {}", backup.backup_id))
}

async fn wait_redis(settings: &Settings) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match redis_keys(settings).await {
            Ok(n) => return Ok(n),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context("Redis did not answer within 60 s of its restart"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn datacenter_failure(settings: &Settings, steps: &mut Steps) -> Result<String> {
    let storage = settings.repository().await?;
    steps.found(format!("repository {}", storage.describe()));
    // A simulation plans from a throwaway catalog: this region's stays as it is.
    let scratch = tempfile::tempdir().context("create a temporary directory")?;
    let path = if steps.simulate() {
        scratch.path().join("catalog.db")
    } else {
        settings.catalog_path()?
    };
    let mut catalog = catalog::Catalog::open(&path)?;
    steps.step("rebuild the catalog from the repository");
    let rebuilt = catalog::rebuild(storage.as_ref(), &mut catalog).await?;
    steps.found(format!(
        "the repository holds {} backups and {} WAL files{}",
        rebuilt.backups,
        rebuilt.wal_files,
        if rebuilt.unreadable.is_empty() {
            String::new()
        } else {
            format!("; unreadable: {}", rebuilt.unreadable.join(", "))
        }
    ));
    let (backup, last_wal) = newest_state(storage.as_ref(), &catalog).await?;
    drop(catalog);
    let summary = restore_from_repository(
        settings,
        steps,
        "primary in this region",
        &backup,
        &last_wal,
    )
    .await?;
    if steps.step("verify the recovered database (verify-recovery --quick)") {
        let report =
            super::verify_recovery::verify(settings, super::verify_recovery::Depth::Quick, false)
                .await;
        for line in report.text().lines() {
            steps.say(format!("  {line}"));
        }
        if !report.passed() {
            bail!("the recovered database failed its checks; the connection file is unchanged");
        }
    }
    switch_connection_file(settings, steps, &settings.db.host, settings.db.port)?;
    Ok(summary)
}

async fn status(settings: &Settings) -> Result<ExitCode> {
    let primary = pg::probe(
        &settings.db.pg_config(),
        &primary_name(settings),
        PROBE_TIMEOUT,
    )
    .await;
    println!("{}", describe(&primary));
    for r in &primary.replicas {
        println!("  streaming to {r}");
    }
    if let Some((db, name)) = replica(settings) {
        let state = pg::probe(&db.pg_config(), &name, PROBE_TIMEOUT).await;
        println!("{}", describe(&state));
        let lag = primary
            .lsn
            .as_deref()
            .and_then(pg::parse_lsn)
            .zip(state.lsn.as_deref().and_then(pg::parse_lsn))
            .map(|(p, r)| p.saturating_sub(r));
        if let Some(lag) = lag.filter(|_| primary.reachable && state.in_recovery) {
            println!("  replication lag: {lag} bytes of WAL not yet replayed");
        }
    } else {
        println!("replica: none configured ([failover] replica-host / REPLICA_HOST)");
    }
    if let Ok(catalog) = settings.open_catalog() {
        if let Some(b) = catalog
            .backups(Some("postgresql"))?
            .into_iter()
            .rfind(|b| b.state == catalog::BackupState::Complete)
        {
            println!(
                "last PostgreSQL backup: {} ({}, {})",
                b.backup_id, b.kind, b.restorability
            );
        }
        match catalog.last_wal()? {
            Some(w) => {
                let age = (jiff::Timestamp::now().as_microsecond() - w.archived_at_us) as f64 / 1e6;
                println!("last archived WAL: {} {age:.0} s ago (the RPO now)", w.name);
            }
            None => println!("last archived WAL: none"),
        }
    }
    let events = super::recent_logs(settings, "failover", 5);
    if events.is_empty() {
        println!("failovers: none logged");
    }
    for (name, result) in events {
        println!("failover {name}: {result}");
    }
    Ok(ExitCode::SUCCESS)
}
