//! `lifeline failover`: one flow per incident type, one report. A database failure promotes
//! the replica (fencing and draining a primary that still answers), or without one restores
//! the repository's newest state; a Redis failure restarts Redis and restores it when it came
//! back empty; a service failure restarts the service until it is healthy; a data-center
//! failure rebuilds the catalog from the repository, restores, verifies, then switches the
//! application over. Under simulation every check runs and no step is taken.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use storage::BackupKind;
use storage::wal::{Lsn, WalFileName};

use crate::pg::{self, NodeState};
use crate::promoted::{self, PromotedPrimary};
use crate::repository::read_catalog;
use crate::steps::{Line, Missing, Steps};
use crate::verify_recovery::{Depth, VerifyOptions};
use crate::{FailoverConfig, OpsError, Redis, Repository, ServiceConfig, process, status_file};

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incident {
    DatabaseFailure,
    RedisFailure,
    /// A service named in `[services.NAME]`.
    ServiceFailure,
    DatacenterFailure,
}

impl Incident {
    pub fn name(self) -> &'static str {
        match self {
            Incident::DatabaseFailure => "database_failure",
            Incident::RedisFailure => "redis_failure",
            Incident::ServiceFailure => "service_failure",
            Incident::DatacenterFailure => "datacenter_failure",
        }
    }
}

impl fmt::Display for Incident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Incident {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Incident::DatabaseFailure,
            Incident::RedisFailure,
            Incident::ServiceFailure,
            Incident::DatacenterFailure,
        ]
        .into_iter()
        .find(|i| i.name() == s)
        .ok_or_else(|| format!("unknown incident {s}"))
    }
}

/// The PostgreSQL restore's options for a backup, as the binary builds them (its own command
/// line fetches the WAL, and names the backup's cluster).
pub type RestoreOptionsFor<'a> = dyn Fn(
        &catalog::BackupRecord,
        restore::RestoreChoices,
    ) -> Result<restore::PostgresRestoreOptions, String>
    + Send
    + Sync
    + 'a;

/// What a failover acts on.
pub struct FailoverOptions<'a> {
    pub incident: Incident,
    /// The service of a service failure.
    pub service: Option<String>,
    /// Run the read-only checks and report the plan; change nothing.
    pub simulate: bool,
    /// database_failure: fail over although the primary still answers; redis_failure: restart
    /// Redis although it answers with its data.
    pub force: bool,
    pub primary: pg::Server,
    pub failover: FailoverConfig,
    pub services: BTreeMap<String, ServiceConfig>,
    pub redis: Redis,
    /// PGDATA: where a restore from the repository goes.
    pub pgdata: Option<PathBuf>,
    /// The server binaries of each major: a restore needs those of the backup's.
    pub binaries: crate::binaries::ServerBinaries,
    /// Chunk groups read at once by a Redis restore.
    pub transfers: usize,
    /// The checks a data-center failover runs before it switches the application over.
    pub verify: VerifyOptions,
    pub restore_options: &'a RestoreOptionsFor<'a>,
}

/// How a failover ended; the transcript is what the operator watched.
#[derive(Debug, Clone)]
pub struct FailoverReport {
    pub ok: bool,
    pub simulated: bool,
    pub summary: String,
    pub transcript: String,
}

/// Run the failover for `opts.incident`. `say` receives each line as it happens; the last is
/// `RESULT: SUCCESS|FAILED (summary)`.
pub async fn failover(
    opts: &FailoverOptions<'_>,
    repo: &impl Repository,
    say: impl FnMut(Line<'_>) + Send + 'static,
) -> FailoverReport {
    let incident = opts.incident;
    let mut steps = Steps::new(opts.simulate, say);
    steps.say(format!(
        "failover: incident {incident}{} at {}",
        opts.service
            .as_deref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default(),
        jiff::Zoned::now().strftime("%Y-%m-%d %H:%M:%S %Z")
    ));
    let started = Instant::now();
    let outcome = match incident {
        Incident::DatabaseFailure => database_failure(opts, repo, &mut steps).await,
        Incident::RedisFailure => redis_failure(opts, repo, &mut steps).await,
        Incident::ServiceFailure => service_failure(opts, &mut steps).await,
        Incident::DatacenterFailure => datacenter_failure(opts, repo, &mut steps).await,
    };
    let outcome = match (outcome, steps.unmet()) {
        (outcome, []) => outcome,
        (Ok(_), unmet) => Err(not_configured(format!(
            "a real run would stop before changing anything: {}",
            crate::steps::missing_sentence(unmet)
        ))),
        (Err(e), unmet) => Err(not_configured(format!(
            "a real run would stop before changing anything: {}; and then: {}",
            crate::steps::missing_sentence(unmet),
            e.chain()
        ))),
    };
    let elapsed = started.elapsed().as_secs_f64();
    let simulated = steps.simulate();
    let (ok, summary) = match &outcome {
        Ok(summary) if simulated => (true, format!("simulation of {incident}: {summary}")),
        Ok(summary) => (true, format!("{incident}: {summary} in {elapsed:.1} s")),
        Err(e) => (false, format!("{incident}: {}", e.chain())),
    };
    steps.say(format!(
        "RESULT: {} ({summary})",
        if ok { "SUCCESS" } else { "FAILED" }
    ));
    FailoverReport {
        ok,
        simulated,
        summary,
        transcript: steps.transcript(),
    }
}

/// `failover --simulate` with no incident: the plan of every incident against the current
/// state, one after the other (service_failure once per configured service). A simulation
/// whatever `opts.simulate` says.
pub async fn simulate_every_incident(
    opts: &mut FailoverOptions<'_>,
    repo: &impl Repository,
    say: impl FnMut(Line<'_>) + Send + Clone + 'static,
) -> FailoverReport {
    opts.simulate = true;
    let mut plans = vec![
        (Incident::DatabaseFailure, None),
        (Incident::RedisFailure, None),
    ];
    let services = opts.services.keys().cloned();
    plans.extend(services.map(|name| (Incident::ServiceFailure, Some(name))));
    plans.push((Incident::DatacenterFailure, None));
    let (mut ok, mut summaries, mut transcripts) = (true, Vec::new(), Vec::new());
    for (incident, service) in plans {
        (opts.incident, opts.service) = (incident, service);
        let report = failover(opts, repo, say.clone()).await;
        ok &= report.ok;
        summaries.push(report.summary);
        transcripts.push(report.transcript);
    }
    FailoverReport {
        ok,
        simulated: true,
        summary: summaries.join("; "),
        transcript: transcripts.join("\n\n"),
    }
}

fn stopped(why: impl Into<String>) -> OpsError {
    OpsError::Stopped(why.into())
}

fn not_configured(why: impl Into<String>) -> OpsError {
    OpsError::NotConfigured(why.into())
}

fn primary_name(primary: &pg::Server) -> String {
    format!("primary {}", primary.address())
}

/// The replica: the primary's credentials and database on the replica's address. None when
/// there is none, or when it is the primary itself (a failover promoted it).
fn replica(primary: &pg::Server, failover: &FailoverConfig) -> Option<(pg::Server, String)> {
    let host = failover.replica_host.as_deref()?;
    let server = primary.at(host, failover.replica_port.unwrap_or(5432));
    if server.address() == primary.address() {
        return None;
    }
    let name = format!("replica {}", server.address());
    Some((server, name))
}

const REPLICA_SETTING: &str = "[failover] replica-host / REPLICA_HOST";

/// Why [`replica`] found none.
fn no_replica(primary: &pg::Server, failover: &FailoverConfig) -> String {
    match failover.replica_host {
        Some(_) => format!(
            "the configured replica is {}, the primary now (a failover promoted it): configure a new replica",
            primary.address()
        ),
        None => "no replica configured".into(),
    }
}

/// What a restore from the repository (no replica, or another region) needs and lacks.
fn restore_settings_missing(opts: &FailoverOptions<'_>) -> Vec<Missing> {
    let f = &opts.failover;
    let mut missing = Vec::new();
    if opts.pgdata.is_none() {
        missing.push(Missing::required(
            "PGDATA (or pgdata in the config)",
            "no data directory to restore into",
        ));
    }
    if f.postgres_start_command.is_none() {
        missing.push(Missing::optional(
            "[failover] postgres-start-command",
            "PostgreSQL would have to be started by hand on the restored directory",
        ));
    }
    if f.connection_file.is_none() {
        missing.push(Missing::optional(
            "[failover] connection-file",
            "the application would have to be pointed at the new primary by hand",
        ));
    }
    missing
}

/// The server a restore from the repository brings up: the one DB_HOST/DB_PORT name (PGDATA
/// and postgres-start-command are its), even while a promoted primary stands in for it.
fn restored_primary(opts: &FailoverOptions<'_>) -> pg::Server {
    let recorded = opts.failover.promoted.as_ref();
    match recorded.and_then(promoted::Resolution::in_use) {
        Some(r) => opts.primary.at(&r.configured_host, r.configured_port),
        None => opts.primary.clone(),
    }
}

/// A position as the server reports it (`0/3000060`), in bytes.
fn lsn(text: &str) -> Option<u64> {
    text.parse::<Lsn>().ok().map(|l| l.0)
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

/// While a promoted primary's record stands in for the configured one, the configured one
/// must not be a writable primary: then the record is stale (the old primary came back, or was
/// switched back to by hand) or two primaries are up, and failing over from the record would
/// promote or restore a third.
async fn stale_record_guard(opts: &FailoverOptions<'_>, steps: &mut Steps) -> Result<(), OpsError> {
    let Some(record) = opts
        .failover
        .promoted
        .as_ref()
        .and_then(promoted::Resolution::in_use)
    else {
        return Ok(());
    };
    let configured = opts
        .primary
        .at(&record.configured_host, record.configured_port);
    let name = format!("configured primary {}", configured.address());
    let state = pg::probe(&configured, &name, PROBE_TIMEOUT).await;
    steps.found(describe(&state));
    if state.reachable && !state.in_recovery {
        return Err(stopped(format!(
            "{name} accepts writes, while {} names {} as the primary that replaced it: the record \
             is stale, or two primaries are up (split brain). Find which one the application \
             writes to, stop or fence the other, remove the record, and run again",
            promoted::FILE_NAME,
            record.address()
        )));
    }
    Ok(())
}

async fn database_failure(
    opts: &FailoverOptions<'_>,
    repo: &impl Repository,
    steps: &mut Steps,
) -> Result<String, OpsError> {
    stale_record_guard(opts, steps).await?;
    let primary = pg::probe(&opts.primary, &primary_name(&opts.primary), PROBE_TIMEOUT).await;
    steps.found(describe(&primary));
    if primary.reachable && !primary.in_recovery && !opts.force && steps.simulate() {
        // The plan is still worth seeing on a healthy system: the one INC-002 would follow.
        steps.found(
            "the primary answers and accepts writes: a real run stops here unless --force (INC-002); the plan with --force follows",
        );
    } else if primary.reachable && !primary.in_recovery && !opts.force {
        return Err(stopped(
            "the primary answers and accepts writes: nothing to fail over. If it must be replaced anyway (INC-002), run again with --force",
        ));
    }
    let still_writable = primary.reachable && !primary.in_recovery;
    // The replica is looked up before anything changes: fencing a primary that nothing can
    // replace would leave production read-only and the failover failed.
    let Some((replica, replica_name)) = replica(&opts.primary, &opts.failover) else {
        let why = no_replica(&opts.primary, &opts.failover);
        if still_writable && opts.failover.replica_host.is_some() {
            return Err(stopped(format!(
                "the primary accepts writes and {why}; nothing was changed"
            )));
        }
        if still_writable {
            return Err(stopped(
                "the primary accepts writes and no replica is configured to take over ([failover] replica-host / REPLICA_HOST); nothing was changed: configure the replica and run again, or stop the primary (pg_ctl stop) and run again to restore it from the repository",
            ));
        }
        let mut missing = vec![Missing::optional(
            REPLICA_SETTING,
            format!("{why}: the repository's newest state would be restored instead"),
        )];
        missing.extend(restore_settings_missing(opts));
        steps.settings(missing)?;
        let storage = repo.open().await?;
        let (backup, last_wal) = newest_state(storage.as_ref(), &repo.open_catalog()?).await?;
        return restore_from_repository(opts, storage, steps, "primary", &backup, &last_wal, repo)
            .await;
    };
    if still_writable {
        // A replica that is down cannot take over either: the primary is left as it is.
        let ready = pg::probe(&replica, &replica_name, PROBE_TIMEOUT).await;
        if !ready.reachable {
            steps.found(describe(&ready));
            return Err(stopped(
                "the replica is down, so the primary that still accepts writes was left as it is: bring the replica back and run again",
            ));
        }
        let client = if steps.simulate() {
            None
        } else {
            Some(pg::connect(&opts.primary, &primary.node, PROBE_TIMEOUT).await?)
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
    let state = pg::probe(&replica, &replica_name, PROBE_TIMEOUT).await;
    steps.found(describe(&state));
    if !state.reachable {
        return Err(stopped(
            "the replica is down too: restore from the repository with `lifeline restore postgres --type pitr --until latest --data-dir DIR` (INC-005 steps)",
        ));
    }
    let loss = loss_window(repo, &state).await;
    steps.found(&loss);
    if state.in_recovery {
        let timeout = opts.failover.promote_timeout()?;
        if steps.step(format!(
            "promote {replica_name} (pg_promote) and wait until it accepts writes"
        )) {
            let took = pg::promote(&replica, &replica_name, timeout).await?;
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
    let recorded = record_promoted(opts, repo, steps, &replica).await;
    switch_connection_file(&opts.failover, steps, &replica.host, replica.port).await?;
    if still_writable {
        steps.found(format!(
            "next: stop the old {} (pg_ctl stop) or fence its host; it still runs, read-only by default",
            primary.node
        ));
    }
    let reach = match recorded {
        Some(path) => format!(
            "lifeline's own commands reach {} through {} until DB_HOST/DB_PORT name it; then remove that file",
            replica.address(),
            path.display()
        ),
        None => format!(
            "first point DB_HOST/DB_PORT at {}, lifeline's own commands still name the old primary",
            replica.address()
        ),
    };
    steps.found(format!(
        "next: `lifeline verify-recovery --full`, then `lifeline backup postgres` (a first base backup on the new timeline); {reach}"
    ));
    Ok(format!("{replica_name} promoted; {loss}"))
}

/// Record `promoted` as the primary lifeline's own commands reach from now on (see
/// [`crate::promoted`]); where it was recorded, or `None` when it could not be. A record that
/// cannot be written does not fail the failover: the promotion stands, and the next steps
/// say what to set instead.
async fn record_promoted(
    opts: &FailoverOptions<'_>,
    repo: &impl Repository,
    steps: &mut Steps,
    promoted: &pg::Server,
) -> Option<PathBuf> {
    let Some(dir) = repo.backup_dir().map(Path::to_path_buf) else {
        steps.found("no BACKUP_DIR to record the new primary in");
        return None;
    };
    // While an earlier record is in use, DB_HOST/DB_PORT still name what they named then.
    let earlier = opts
        .failover
        .promoted
        .as_ref()
        .and_then(promoted::Resolution::in_use);
    let (configured_host, configured_port) = earlier.map_or_else(
        || (opts.primary.host.clone(), opts.primary.port),
        |r| (r.configured_host.clone(), r.configured_port),
    );
    let record = PromotedPrimary {
        host: promoted.host.clone(),
        port: promoted.port,
        configured_host,
        configured_port,
        replaced: opts.primary.address(),
        incident: opts.incident.name().into(),
        promoted_at: jiff::Timestamp::now(),
    };
    let path = promoted::path(&dir);
    if !steps.step(format!(
        "record {} in {} as the primary lifeline's own commands reach while DB_HOST/DB_PORT name {}",
        record.address(),
        path.display(),
        record.configured()
    )) {
        return Some(path);
    }
    let written =
        tokio::task::spawn_blocking(move || promoted::record(&dir, &record).map(|_| record)).await;
    match written {
        Ok(Ok(record)) => {
            steps.done(format!(
                "recorded; `lifeline failover --status` and `lifeline status` show it ({} replaced {})",
                record.address(),
                record.replaced
            ));
            Some(path)
        }
        Ok(Err(e)) => {
            let cause = storage::error_chain(&e);
            steps.found(format!("the new primary was not recorded: {cause}"));
            None
        }
        Err(e) => {
            steps.found(format!("the new primary was not recorded: {e}"));
            None
        }
    }
}

/// After a restore from the repository the server is at the configured address again: a
/// promoted primary's record must not keep lifeline's commands on the server it replaced.
async fn retire_promoted(
    opts: &FailoverOptions<'_>,
    repo: &impl Repository,
    steps: &mut Steps,
) -> Result<(), OpsError> {
    let recorded = opts.failover.promoted.as_ref();
    let (Some(record), Some(dir)) = (
        recorded.and_then(promoted::Resolution::in_use),
        repo.backup_dir().map(Path::to_path_buf),
    ) else {
        return Ok(());
    };
    let path = promoted::path(&dir);
    if steps.step(format!(
        "remove {}: the restored server takes the configured address {} in place of the promoted {}",
        path.display(),
        record.configured(),
        record.address()
    )) {
        tokio::task::spawn_blocking(move || promoted::forget(&dir))
            .await?
            .map_err(|source| OpsError::Io {
                doing: format!("remove {}", path.display()),
                source,
            })?;
        steps.done("lifeline's commands reach the configured DB_HOST/DB_PORT again");
    }
    Ok(())
}

/// What the promoted replica may lack: WAL in the archive beyond its replay position, and the
/// commit time of the last transaction it replayed.
async fn loss_window(repo: &impl Repository, replica: &NodeState) -> String {
    let replayed = replica.lsn.as_deref().and_then(lsn);
    let last_wal = read_catalog(repo, |c| c.ok()?.last_wal().ok()?).await;
    let archived_end = last_wal.ok().flatten().and_then(|w| {
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

async fn switch_connection_file(
    failover: &FailoverConfig,
    steps: &mut Steps,
    host: &str,
    port: u16,
) -> Result<(), OpsError> {
    let Some(path) = failover.connection_file.clone() else {
        steps.found(format!(
            "no connection file configured ([failover] connection-file): point the application at {host}:{port}"
        ));
        return Ok(());
    };
    let variable = failover
        .connection_variable
        .clone()
        .unwrap_or_else(|| "DATABASE_URL".into());
    let (host, switching) = (
        host.to_string(),
        steps.step(format!(
            "point {variable} in {} at {host}:{port}",
            path.display()
        )),
    );
    if !switching {
        let text = tokio::fs::read_to_string(&path)
            .await
            .map_err(|source| OpsError::Io {
                doing: format!("read the connection file {}", path.display()),
                source,
            })?;
        let (_, switch) =
            crate::connfile::rewrite(&text, &variable, &host, port).map_err(stopped)?;
        steps.found(format!(
            "{variable} would change from {} to {}",
            switch.before, switch.after
        ));
        return Ok(());
    }
    let switch = {
        let variable = variable.clone();
        tokio::task::spawn_blocking(move || {
            crate::connfile::switch_file(&path, &variable, &host, port)
        })
        .await??
    };
    steps.done(format!("{variable}: {} -> {}", switch.before, switch.after));
    Ok(())
}

/// The newest complete base backup of the repository's cluster and the newest archived WAL,
/// as `catalog` knows them.
async fn newest_state(
    storage: &dyn storage::Storage,
    catalog: &catalog::Catalog,
) -> Result<(catalog::BackupRecord, String), OpsError> {
    let sysid = storage::manifest::ClusterIdentity::load(storage)
        .await?
        .and_then(|c| c.system_identifier())
        .ok_or_else(|| {
            stopped("the repository holds no cluster: nothing was ever archived or backed up there")
        })?;
    let backup = catalog
        .newest_backup(storage::BackupKind::Base, Some(sysid))?
        .ok_or_else(|| stopped("the repository holds no complete base backup to restore"))?;
    let last_wal = catalog
        .last_wal()?
        .map(|w| w.name)
        .unwrap_or_else(|| "unknown".into());
    Ok((backup, last_wal))
}

/// No replica (or a secondary region): the latest state from the repository into PGDATA,
/// started with the configured command, checked writable.
async fn restore_from_repository(
    opts: &FailoverOptions<'_>,
    storage: Arc<dyn storage::Storage>,
    steps: &mut Steps,
    role: &str,
    backup: &catalog::BackupRecord,
    last_wal: &str,
    repo: &impl Repository,
) -> Result<String, OpsError> {
    // A real run has refused without it ([`restore_settings_missing`]); a simulation goes on.
    let data_dir = opts.pgdata.clone();
    let shown = data_dir.as_ref().map_or_else(
        || "the data directory PGDATA would name".to_string(),
        |d| d.display().to_string(),
    );
    steps.found(format!(
        "newest base backup {}; newest archived WAL {last_wal}",
        backup.backup_id
    ));
    // Before anything is restored: a directory no installed server can start helps nobody.
    if let Some(major) = crate::binaries::major_of_backup(storage.as_ref(), backup).await? {
        let found = opts.binaries.for_major(major).await;
        let bin = found.map_err(OpsError::NoServerBinaries)?;
        steps.found(format!(
            "{} is PostgreSQL {major}: start it with the server in {}",
            backup.backup_id,
            bin.display()
        ));
    }
    let busy = match &data_dir {
        Some(dir) => tokio::fs::try_exists(dir.join("postmaster.pid"))
            .await
            .unwrap_or(false),
        None => false,
    };
    if busy {
        steps.found(format!(
            "{shown} still has a postmaster.pid: if the old server is gone, move the directory aside first"
        ));
    }
    if steps.step(format!(
        "restore {} into {shown} and recover through the end of the archive",
        backup.backup_id,
    )) {
        let data_dir = data_dir.clone().ok_or_else(|| {
            not_configured(
                "PGDATA (or pgdata in the config) names no data directory to restore into",
            )
        })?;
        let f = &opts.failover;
        // The restore makes the new primary: it archives as the old one did.
        let choices = restore::RestoreChoices {
            tablespaces: restore::TablespaceMapping {
                each: f
                    .tablespace_map
                    .iter()
                    .map(|(name, dir)| (name.clone(), dir.clone()))
                    .collect(),
                all: f.tablespace_map_all.clone(),
            },
            waldir: f.waldir.clone(),
            archive_mode: restore::ArchiveMode::Preserve,
            ..Default::default()
        };
        let mut options =
            (opts.restore_options)(backup, choices).map_err(OpsError::RestoreCommand)?;
        // Failover runs as root: the data directory goes to PostgreSQL's user, the owner of
        // PGDATA (or of the directory it is made in), or PostgreSQL refuses to start on it.
        options.owner = storage::private::Owner::of(&data_dir);
        let restored = restore::restore_backup(
            storage,
            backup,
            &restore::RecoveryTarget::EndOfArchive,
            &data_dir,
            &options,
        )
        .await?;
        steps.aside(restored.to_string());
        if let Some(dir) = repo.backup_dir().map(Path::to_path_buf) {
            let (id, into) = (backup.backup_id.clone(), data_dir.clone());
            tokio::task::spawn_blocking(move || status_file::record_restore(&dir, &id, &into))
                .await?;
        }
        steps.done(format!("restored {}", backup.backup_id));
    }
    retire_promoted(opts, repo, steps).await?;
    let Some(start) = opts.failover.postgres_start_command.clone() else {
        steps.found("no [failover] postgres-start-command: start PostgreSQL on the restored directory by hand");
        return Ok(format!(
            "{} restored into {shown} as the new {role}",
            backup.backup_id
        ));
    };
    if steps.step(format!("start PostgreSQL: {start}")) {
        process::run_shell(&start, Duration::from_secs(600)).await?;
        let server = restored_primary(opts);
        let node = server.address();
        pg::wait_writable(&server, &node, Instant::now() + Duration::from_secs(600)).await?;
        steps.done(format!("{node} accepts writes"));
    }
    Ok(format!(
        "{} restored and recovered to {last_wal} as the new {role}",
        backup.backup_id
    ))
}

async fn service_failure(
    opts: &FailoverOptions<'_>,
    steps: &mut Steps,
) -> Result<String, OpsError> {
    let known = || opts.services.keys().cloned().collect::<Vec<_>>().join(", ");
    let Some(name) = opts.service.as_deref() else {
        return Err(stopped(format!(
            "name the service: lifeline failover --incident service_failure NAME (configured: {})",
            known()
        )));
    };
    let Some(service) = opts.services.get(name) else {
        return Err(not_configured(format!(
            "no [services.{name}] in the configuration (configured: {})",
            known()
        )));
    };
    let timeout = service.timeout(name)?;
    match process::wait_healthy(&service.health_url, Duration::from_secs(1)).await {
        Ok(_) => steps.found(format!("{name} answers its health URL now")),
        Err(e) => steps.found(format!("{name} is unhealthy: {e}")),
    }
    if steps.step(format!("restart {name}: {}", service.restart_command)) {
        process::run_shell(&service.restart_command, Duration::from_secs(300)).await?;
        steps.done("restart command exited 0");
    }
    if steps.step(format!(
        "poll {name}'s health URL until healthy (at most {} s)",
        timeout.as_secs()
    )) {
        let took = process::wait_healthy(&service.health_url, timeout).await?;
        steps.done(format!("{name} healthy after {:.1} s", took.as_secs_f64()));
    }
    Ok(format!("{name} restarted and healthy"))
}

async fn redis_failure(
    opts: &FailoverOptions<'_>,
    repo: &impl Repository,
    steps: &mut Steps,
) -> Result<String, OpsError> {
    let f = &opts.failover;
    let node = opts.redis.node();
    let backups = read_catalog(repo, |c| -> Result<_, OpsError> {
        Ok(c?.backups(Some(storage::Service::Redis))?)
    });
    let recorded = backups
        .await??
        .into_iter()
        // The newest of either kind: an AOF backup is newer data than last night's RDB.
        .filter(|b| matches!(b.kind, BackupKind::Rdb | BackupKind::Aof))
        .max_by_key(|b| (b.finished_at_us, b.backup_id.clone()));
    match opts.redis.total_keys().await {
        Ok(n) if n > 0 && !opts.force => {
            steps.found(format!("{node} answers with {n} keys"));
            return Err(stopped(
                "Redis answers with its data: nothing to recover (--force restarts it anyway)",
            ));
        }
        Ok(n) => steps.found(format!("{node} answers with {n} keys")),
        Err(e) => steps.found(format!("{node} is DOWN: {}", e.chain())),
    }
    let simulate = steps.simulate();
    steps.settings(redis_settings_missing(opts, recorded.is_some(), simulate))?;
    // A real run has refused without it; a simulation goes on with the plan.
    let restart = f
        .redis_restart_command
        .clone()
        .unwrap_or_else(|| "(redis-restart-command not set)".into());
    if steps.step(format!("restart Redis: {restart}")) {
        process::run_shell(&restart, Duration::from_secs(120)).await?;
        let n = wait_redis(&opts.redis).await?;
        steps.done(format!("{node} answers with {n} keys"));
    }
    let keys = if steps.simulate() {
        0
    } else {
        opts.redis.total_keys().await?
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
    // Named before the restart; both at once here. A simulation shows the plan without them.
    let (data_dir, stop) = match (f.redis_data_dir.clone(), f.redis_stop_command.clone()) {
        (Some(dir), Some(stop)) => (dir, stop),
        _ if !steps.simulate() => {
            return Err(not_configured(format!(
                "Redis came back empty and cannot be restored from {}: {}",
                backup.backup_id,
                crate::steps::missing_sentence(&redis_restore_missing(f, true))
            )));
        }
        (dir, stop) => (
            dir.unwrap_or_else(|| PathBuf::from("(redis-data-dir not set)")),
            stop.unwrap_or_else(|| "(redis-stop-command not set)".into()),
        ),
    };
    steps.found(format!(
        "Redis holds no keys; backup {} can bring it back",
        backup.backup_id
    ));
    if steps.step(format!("stop Redis: {stop}")) {
        process::run_shell(&stop, Duration::from_secs(120)).await?;
        steps.done("stopped");
    }
    let mut manifest = None;
    if steps.step(format!(
        "restore {} into {}",
        backup.backup_id,
        data_dir.display()
    )) {
        let storage = repo.open().await?;
        let loaded =
            storage::manifest::StreamManifest::load(storage.as_ref(), &backup.backup_id).await?;
        storage::lease::take_here(storage.as_ref(), &backup.backup_id).await;
        // Failover runs as root: Redis's files go to the user of its data directory.
        let options = restore::RedisRestoreOptions {
            transfers: opts.transfers,
            owner: storage::private::Owner::of(&data_dir),
            progress: storage::progress::none(),
        };
        restore::restore_redis(storage.as_ref(), &loaded, &data_dir, &options).await?;
        steps.done(format!(
            "{} files in place",
            backup.kind.as_str().to_uppercase()
        ));
        manifest = Some(loaded);
    }
    if steps.step(format!("start Redis: {restart}")) {
        process::run_shell(&restart, Duration::from_secs(120)).await?;
        let n = wait_redis(&opts.redis).await?;
        steps.done(format!("{node} answers with {n} keys"));
        if let Some(manifest) = &manifest {
            loaded_as_recorded(n, manifest, &data_dir)?;
        }
        return Ok(format!(
            "Redis restored from {} with {n} keys",
            backup.backup_id
        ));
    }
    Ok(format!("Redis would be restored from {}", backup.backup_id))
}

/// What the Redis plan needs and lacks: the restart command always; what a restore needs
/// when there is a backup to restore. Before a real restart it is not known whether Redis
/// comes back empty, so those are then optional; a simulation plans for an empty Redis.
fn redis_settings_missing(
    opts: &FailoverOptions<'_>,
    has_backup: bool,
    simulate: bool,
) -> Vec<Missing> {
    let f = &opts.failover;
    let mut missing = Vec::new();
    if f.redis_restart_command.is_none() {
        missing.push(Missing::required(
            "[failover] redis-restart-command",
            "Redis would have to be restarted by hand (INC-004)",
        ));
    }
    if has_backup {
        let required = simulate || !missing.is_empty();
        missing.extend(redis_restore_missing(f, required));
    }
    missing
}

fn redis_restore_missing(f: &FailoverConfig, required: bool) -> Vec<Missing> {
    let mut missing = Vec::new();
    let without = "Redis would not be restored from its last backup if it comes back empty";
    if f.redis_data_dir.is_none() {
        missing.push(Missing {
            required,
            ..Missing::required("[failover] redis-data-dir", without)
        });
    }
    if f.redis_stop_command.is_none() {
        missing.push(Missing {
            required,
            ..Missing::required("[failover] redis-stop-command", without)
        });
    }
    missing
}

/// A Redis that comes back with no keys from a backup that recorded some did not load the
/// restored files: its configuration points elsewhere (another `dir`, `dbfilename`, or
/// `appendonly` loading an AOF instead of the RDB).
fn loaded_as_recorded(
    keys: u64,
    manifest: &storage::manifest::StreamManifest,
    data_dir: &Path,
) -> Result<(), OpsError> {
    let recorded: u64 = manifest.counts.values().sum();
    if keys > 0 || recorded == 0 {
        return Ok(());
    }
    // An AOF backup names its manifest `<appenddirname>/<appendfilename>.manifest`.
    let aof = manifest.files.iter().find_map(|f| {
        let (subdir, file) = f.name.split_once('/')?;
        Some((subdir, file.strip_suffix(".manifest")?))
    });
    let how = match aof {
        Some((subdir, file)) => {
            format!("appendonly yes, appenddirname {subdir}, appendfilename {file}")
        }
        None => {
            "dbfilename dump.rdb and appendonly no (with appendonly yes it loads an AOF instead)"
                .into()
        }
    };
    Err(stopped(format!(
        "Redis came back with 0 keys but backup {} recorded {}: it did not load the files restored into {}. Configure Redis with dir {} and {how}, then run the restart command again",
        manifest.backup_id,
        restore::counts_line(&manifest.counts),
        data_dir.display(),
        data_dir.display()
    )))
}

async fn wait_redis(redis: &Redis) -> Result<u64, OpsError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match redis.total_keys().await {
            Ok(n) => return Ok(n),
            Err(e) if Instant::now() >= deadline => {
                return Err(OpsError::RedisRestart(Box::new(e)));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

async fn datacenter_failure(
    opts: &FailoverOptions<'_>,
    repo: &impl Repository,
    steps: &mut Steps,
) -> Result<String, OpsError> {
    steps.settings(restore_settings_missing(opts))?;
    let storage = repo.open().await?;
    steps.found(format!("repository {}", storage.describe()));
    // A simulation plans from a throwaway catalog: this region's stays as it is.
    let scratch = tempfile::tempdir().map_err(|source| OpsError::Io {
        doing: "create a temporary directory".into(),
        source,
    })?;
    let path = if steps.simulate() {
        scratch.path().join("catalog.db")
    } else {
        repo.catalog_path()?
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
        opts,
        storage,
        steps,
        "primary in this region",
        &backup,
        &last_wal,
        repo,
    )
    .await?;
    if steps.step("verify the recovered database (verify-recovery --quick)") {
        let verify = VerifyOptions {
            depth: Depth::Quick,
            target: restore::Target::Production,
            database: restored_primary(opts),
            ..opts.verify.clone()
        };
        let report = crate::verify(&verify, repo).await;
        for line in report.text().lines() {
            steps.say(format!("  {line}"));
        }
        if !report.passed() {
            return Err(stopped(
                "the recovered database failed its checks; the connection file is unchanged",
            ));
        }
    }
    let restored = restored_primary(opts);
    switch_connection_file(&opts.failover, steps, &restored.host, restored.port).await?;
    Ok(summary)
}

/// `failover --status`: roles, replication lag, the last backup and archived WAL, the last
/// failovers. Displays as the lines the operator reads.
#[derive(Debug, Clone)]
pub struct Status {
    lines: Vec<String>,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in &self.lines {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

pub async fn status(
    primary: &pg::Server,
    failover: &FailoverConfig,
    repo: &impl Repository,
) -> Result<Status, OpsError> {
    let mut lines = Vec::new();
    let state = pg::probe(primary, &primary_name(primary), PROBE_TIMEOUT).await;
    lines.push(describe(&state));
    for r in &state.replicas {
        lines.push(format!("  streaming to {r}"));
    }
    if let Some(found) = &failover.promoted {
        lines.push(format!("  {}", found.note()));
    }
    // The primary the configuration still names: it must not come back as a second primary.
    if let Some(record) = failover
        .promoted
        .as_ref()
        .and_then(promoted::Resolution::in_use)
    {
        let old = primary.at(&record.configured_host, record.configured_port);
        let name = format!("configured primary {}", old.address());
        lines.push(describe(&pg::probe(&old, &name, PROBE_TIMEOUT).await));
    }
    if failover.replica_host.is_some() && replica(primary, failover).is_none() {
        lines.push(format!("replica: {}", no_replica(primary, failover)));
    } else if let Some((replica, name)) = replica(primary, failover) {
        let replica_state = pg::probe(&replica, &name, PROBE_TIMEOUT).await;
        lines.push(describe(&replica_state));
        let lag = state
            .lsn
            .as_deref()
            .and_then(lsn)
            .zip(replica_state.lsn.as_deref().and_then(lsn))
            .map(|(p, r)| p.saturating_sub(r));
        if let Some(lag) = lag.filter(|_| state.reachable && replica_state.in_recovery) {
            lines.push(format!(
                "  replication lag: {lag} bytes of WAL not yet replayed"
            ));
        }
    } else {
        lines.push("replica: none configured ([failover] replica-host / REPLICA_HOST)".into());
    }
    // No catalog (yet) leaves these lines out; a catalog that cannot be queried is an error.
    let recorded = read_catalog(repo, |c| -> Result<_, OpsError> {
        match c {
            Ok(c) => Ok(Some((
                c.backups(Some(storage::Service::Postgresql))?,
                c.last_wal()?,
            ))),
            Err(_) => Ok(None),
        }
    });
    if let Some((backups, last_wal)) = recorded.await?? {
        if let Some(b) = backups.into_iter().next_back() {
            lines.push(format!(
                "last PostgreSQL backup: {} ({}, {})",
                b.backup_id, b.kind, b.restorability
            ));
        }
        match last_wal {
            Some(w) => {
                let age = (jiff::Timestamp::now().as_microsecond() - w.archived_at_us) as f64 / 1e6;
                lines.push(format!(
                    "last archived WAL: {} {age:.0} s ago (the RPO now)",
                    w.name
                ));
            }
            None => lines.push("last archived WAL: none".into()),
        }
    }
    let backup_dir = repo.backup_dir().map(Path::to_path_buf);
    let events = tokio::task::spawn_blocking(move || {
        status_file::recent_logs(backup_dir.as_deref(), "failover", 5)
    })
    .await?;
    if events.is_empty() {
        lines.push("failovers: none logged".into());
    }
    for (name, result) in events {
        lines.push(format!("failover {name}: {result}"));
    }
    Ok(Status { lines })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incidents_read_and_print_as_the_command_line_names_them() {
        for name in [
            "database_failure",
            "redis_failure",
            "service_failure",
            "datacenter_failure",
        ] {
            let incident: Incident = name.parse().expect("known incident");
            assert_eq!(incident.to_string(), name);
        }
        assert_eq!(
            "fire".parse::<Incident>(),
            Err("unknown incident fire".to_string())
        );
    }

    #[test]
    fn the_replica_is_the_primary_at_another_address() {
        let mut config = pg::Config::new();
        config
            .host("db1")
            .port(5433)
            .user("app")
            .password("secret")
            .dbname("shop");
        let primary = pg::Server {
            host: "db1".into(),
            port: 5433,
            config,
            tls: Default::default(),
        };
        let failover = FailoverConfig {
            replica_host: Some("db2".into()),
            ..Default::default()
        };
        let (standby, name) = replica(&primary, &failover).expect("configured");
        assert_eq!(name, "replica db2:5432");
        assert_eq!(standby.config.get_user(), Some("app"));
        assert_eq!(standby.config.get_password(), Some(&b"secret"[..]));
        assert_eq!(standby.config.get_dbname(), Some("shop"));
        assert_eq!(standby.config.get_ports(), [5432]);
        assert!(replica(&primary, &FailoverConfig::default()).is_none());
    }

    #[tokio::test]
    async fn the_loss_window_says_when_it_cannot_be_measured() {
        let scratch = crate::repository::Scratch::new();
        let state = NodeState {
            node: "replica db2:5432".into(),
            reachable: true,
            error: None,
            in_recovery: true,
            lsn: Some("0/3000060".into()),
            receive_lsn: None,
            last_replay_at: Some("2025-01-01 00:00:00+00".into()),
            replicas: Vec::new(),
        };
        assert_eq!(
            loss_window(&scratch, &state).await,
            "data-loss window: not measurable (replica at 0/3000060, no archived WAL in the catalog); its last replayed commit is from 2025-01-01 00:00:00+00"
        );
    }

    fn redis_manifest(files: &[&str], counts: &[(&str, u64)]) -> storage::manifest::StreamManifest {
        storage::manifest::StreamManifest {
            format: 1,
            backup_id: "20251227T010000Z-rdb".into(),
            service: storage::Service::Redis,
            kind: storage::BackupKind::Rdb,
            server_version: "7.2".into(),
            source: "127.0.0.1:6379".into(),
            started_at: jiff::Timestamp::UNIX_EPOCH,
            finished_at: jiff::Timestamp::UNIX_EPOCH,
            files: files
                .iter()
                .map(|name| storage::manifest::StreamFile {
                    name: (*name).into(),
                    size: 0,
                    chunks: Vec::new(),
                })
                .collect(),
            counts: counts.iter().map(|(db, n)| ((*db).into(), *n)).collect(),
            size_bytes: 0,
            new_bytes: 0,
        }
    }

    #[test]
    fn a_redis_that_comes_back_empty_from_a_backup_with_keys_stops_the_failover() {
        let dir = Path::new("/var/lib/redis");
        let rdb = redis_manifest(&["dump.rdb"], &[("db0", 12), ("db3", 5)]);
        let err = loaded_as_recorded(0, &rdb, dir).expect_err("0 keys of 17");
        assert!(matches!(err, OpsError::Stopped(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "Redis came back with 0 keys but backup 20251227T010000Z-rdb recorded db0=12 db3=5: it did not load the files restored into /var/lib/redis. Configure Redis with dir /var/lib/redis and dbfilename dump.rdb and appendonly no (with appendonly yes it loads an AOF instead), then run the restart command again"
        );
        let aof = redis_manifest(
            &[
                "appendonlydir/appendonly.aof.1.base.rdb",
                "appendonlydir/appendonly.aof.manifest",
            ],
            &[("db0", 3)],
        );
        let err = loaded_as_recorded(0, &aof, dir).expect_err("0 keys of 3");
        assert!(
            err.to_string().contains(
                "appendonly yes, appenddirname appendonlydir, appendfilename appendonly.aof, then"
            ),
            "{err}"
        );
        loaded_as_recorded(17, &rdb, dir).expect("keys loaded");
        loaded_as_recorded(0, &redis_manifest(&["dump.rdb"], &[]), dir).expect("nothing recorded");
        loaded_as_recorded(0, &redis_manifest(&["dump.rdb"], &[("db0", 0)]), dir)
            .expect("an empty backup");
    }

    /// A primary nothing answers for (port 1 refuses at once), no replica, no services.
    fn options<'a>(
        incident: Incident,
        restore_options: &'a RestoreOptionsFor<'a>,
    ) -> FailoverOptions<'a> {
        let mut config = pg::Config::new();
        config.host("127.0.0.1").port(1).user("app").dbname("shop");
        let primary = pg::Server {
            host: "127.0.0.1".into(),
            port: 1,
            config,
            tls: Default::default(),
        };
        let redis = Redis {
            host: "127.0.0.1".into(),
            port: 1,
            count_keys: std::sync::Arc::new(|| Err("connection refused".into())),
        };
        FailoverOptions {
            incident,
            service: None,
            simulate: false,
            force: false,
            primary: primary.clone(),
            failover: FailoverConfig::default(),
            services: BTreeMap::new(),
            redis: redis.clone(),
            pgdata: None,
            binaries: Default::default(),
            transfers: 2,
            verify: VerifyOptions {
                depth: Depth::Quick,
                target: restore::Target::Production,
                database: primary,
                staging_database: "shop_staging".into(),
                checks: crate::VerifyConfig::default(),
                redis,
                redis_configured: false,
            },
            restore_options,
        }
    }

    fn no_restore(
        _: &catalog::BackupRecord,
        _: restore::RestoreChoices,
    ) -> Result<restore::PostgresRestoreOptions, String> {
        Err("no restore in this test".into())
    }

    #[tokio::test]
    async fn a_service_failure_names_the_configured_services_and_touches_none() {
        let scratch = crate::repository::Scratch::new();
        let mut opts = options(Incident::ServiceFailure, &no_restore);
        for name in ["api", "worker"] {
            opts.services.insert(
                name.into(),
                ServiceConfig {
                    restart_command: "false".into(),
                    health_url: "http://127.0.0.1:1/health".into(),
                    timeout: None,
                    timeout_seconds: None,
                },
            );
        }
        let report = failover(&opts, &scratch, |_| {}).await;
        assert!(!report.ok);
        assert_eq!(
            report.summary,
            "service_failure: name the service: lifeline failover --incident service_failure NAME (configured: api, worker)"
        );
        opts.service = Some("billing".into());
        let report = failover(&opts, &scratch, |_| {}).await;
        assert!(
            report
                .transcript
                .starts_with("failover: incident service_failure (billing) at ")
        );
        assert!(report.transcript.ends_with(
            "RESULT: FAILED (service_failure: no [services.billing] in the configuration (configured: api, worker))"
        ));
        assert!(
            !report.transcript.contains("step 1"),
            "{}",
            report.transcript
        );
    }

    #[tokio::test]
    async fn without_a_replica_an_empty_repository_stops_the_database_failover_before_any_step() {
        let scratch = crate::repository::Scratch::new();
        let mut opts = options(Incident::DatabaseFailure, &no_restore);
        opts.pgdata = Some("/nonexistent/pgdata".into());
        opts.failover.postgres_start_command = Some("false".into());
        opts.failover.connection_file = Some("/nonexistent/app.env".into());
        let report = failover(&opts, &scratch, |_| {}).await;
        let said: Vec<_> = report.transcript.lines().skip(1).collect();
        assert!(!report.ok);
        assert!(
            said[0].starts_with("  check: primary 127.0.0.1:1 is DOWN: "),
            "{said:?}"
        );
        assert_eq!(
            said[1..],
            [
                "  check: missing setting [failover] replica-host / REPLICA_HOST: no replica configured: the repository's newest state would be restored instead",
                "RESULT: FAILED (database_failure: the repository holds no cluster: nothing was ever archived or backed up there)",
            ]
        );
        assert!(scratch.storage.keys().is_empty());
    }

    const EVERY_RESTORE_SETTING: [&str; 4] = [
        "[failover] replica-host / REPLICA_HOST: no replica configured: the repository's newest state would be restored instead",
        "PGDATA (or pgdata in the config): no data directory to restore into",
        "[failover] postgres-start-command: PostgreSQL would have to be started by hand on the restored directory",
        "[failover] connection-file: the application would have to be pointed at the new primary by hand",
    ];

    #[tokio::test]
    async fn a_real_database_failover_names_every_missing_setting_at_once_and_changes_nothing() {
        let scratch = crate::repository::Scratch::new();
        let opts = options(Incident::DatabaseFailure, &no_restore);
        let report = failover(&opts, &scratch, |_| {}).await;
        assert!(!report.ok);
        for setting in EVERY_RESTORE_SETTING {
            assert!(
                report
                    .transcript
                    .contains(&format!("  check: missing setting {setting}\n")),
                "{setting}: {}",
                report.transcript
            );
            let (key, without) = setting.split_once(": ").expect("KEY: WITHOUT");
            assert!(
                report.summary.contains(key) && report.summary.contains(without),
                "{}",
                report.summary
            );
        }
        assert!(
            report
                .summary
                .starts_with("database_failure: 4 settings missing: PGDATA"),
            "{}",
            report.summary
        );
        assert!(
            report.summary.ends_with(
                "Nothing was changed: set PGDATA (or pgdata in the config) and run again"
            )
        );
        assert!(
            !report.transcript.contains("step 1"),
            "{}",
            report.transcript
        );
    }

    #[tokio::test]
    async fn a_simulation_names_every_missing_setting_and_shows_the_plan_without_them() {
        let scratch = crate::repository::Scratch::new();
        let mut opts = options(Incident::DatabaseFailure, &no_restore);
        opts.simulate = true;
        for incident in [Incident::DatabaseFailure, Incident::DatacenterFailure] {
            opts.incident = incident;
            let report = failover(&opts, &scratch, |_| {}).await;
            assert!(report.simulated && !report.ok, "{}", report.transcript);
            let settings = match incident {
                Incident::DatabaseFailure => &EVERY_RESTORE_SETTING[..],
                _ => &EVERY_RESTORE_SETTING[1..],
            };
            for setting in settings {
                assert!(
                    report
                        .transcript
                        .contains(&format!("missing setting {setting}")),
                    "{setting}: {}",
                    report.transcript
                );
            }
            assert!(
                report.summary.starts_with(&format!(
                    "{incident}: a real run would stop before changing anything: {} settings missing: PGDATA (or pgdata in the config): no data directory to restore into; ",
                    settings.len()
                )),
                "{}",
                report.summary
            );
            // The simulation went on past them: the empty repository is named too.
            assert!(
                report.summary.ends_with("; and then: the repository holds no cluster: nothing was ever archived or backed up there"),
                "{}",
                report.summary
            );
        }
        // Redis: the restart command, and what a restore of its backup needs.
        opts.incident = Incident::RedisFailure;
        let report = failover(&opts, &scratch, |_| {}).await;
        assert!(
            report
                .transcript
                .contains("missing setting [failover] redis-restart-command: Redis would have to be restarted by hand (INC-004)"),
            "{}",
            report.transcript
        );
        assert!(
            report
                .transcript
                .contains("step 1 (would run): restart Redis: (redis-restart-command not set)"),
            "{}",
            report.transcript
        );
        assert!(
            report.summary.contains("a real run would stop before changing anything: 1 setting missing: [failover] redis-restart-command"),
            "{}",
            report.summary
        );
    }

    #[test]
    fn a_redis_restore_needs_its_directory_and_stop_command_when_redis_may_come_back_empty() {
        let mut opts = options(Incident::RedisFailure, &no_restore);
        let names = |missing: Vec<Missing>| {
            missing
                .iter()
                .map(|m| format!("{}{}", m.setting, if m.required { "!" } else { "" }))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(redis_settings_missing(&opts, true, false)),
            [
                "[failover] redis-restart-command!",
                "[failover] redis-data-dir!",
                "[failover] redis-stop-command!"
            ]
        );
        assert_eq!(
            names(redis_settings_missing(&opts, false, false)),
            ["[failover] redis-restart-command!"]
        );
        opts.failover.redis_restart_command = Some("systemctl restart redis".into());
        // Before a real restart, whether the restore is needed is not known.
        assert_eq!(
            names(redis_settings_missing(&opts, true, false)),
            ["[failover] redis-data-dir", "[failover] redis-stop-command"]
        );
        assert_eq!(
            names(redis_settings_missing(&opts, true, true)),
            [
                "[failover] redis-data-dir!",
                "[failover] redis-stop-command!"
            ]
        );
        opts.failover.redis_data_dir = Some("/var/lib/redis".into());
        opts.failover.redis_stop_command = Some("systemctl stop redis".into());
        assert!(redis_settings_missing(&opts, true, true).is_empty());
    }

    #[tokio::test]
    async fn a_second_promotion_keeps_standing_in_for_the_configured_primary() {
        let scratch = crate::repository::Scratch::new();
        let mut opts = options(Incident::DatabaseFailure, &no_restore);
        let first = opts.primary.at("10.0.0.6", 5432);
        let mut steps = Steps::new(false, |_| {});
        let path = record_promoted(&opts, &scratch, &mut steps, &first)
            .await
            .expect("recorded");
        assert_eq!(path, scratch.dir.path().join(promoted::FILE_NAME));
        // The next run resolves its settings through the record: the promoted server is its
        // primary; DB_HOST/DB_PORT still name 127.0.0.1:1.
        let found = promoted::resolve(scratch.dir.path(), "127.0.0.1", 1, Some(("10.0.0.6", 5432)))
            .expect("a record");
        opts.primary = first.clone();
        opts.failover.promoted = Some(found);
        let second = opts.primary.at("10.0.0.7", 5432);
        record_promoted(&opts, &scratch, &mut steps, &second)
            .await
            .expect("recorded");
        let found = promoted::resolve(scratch.dir.path(), "127.0.0.1", 1, Some(("10.0.0.7", 5432)))
            .expect("a record");
        let record = found.in_use().expect("in use");
        assert_eq!(
            (
                record.address(),
                record.configured(),
                record.replaced.as_str()
            ),
            (
                "10.0.0.7:5432".to_string(),
                "127.0.0.1:1".to_string(),
                "10.0.0.6:5432"
            )
        );
        assert!(
            found.note().contains(
                "configured DB_HOST/DB_PORT 127.0.0.1:1 (the primary it replaced: 10.0.0.6:5432)"
            ),
            "{}",
            found.note()
        );
        // A restore from the repository brings the configured server back, not the promoted.
        opts.failover.promoted = Some(found.clone());
        assert_eq!(restored_primary(&opts).address(), "127.0.0.1:1");
        // A simulation only says where it would record it.
        let mut simulated = Steps::new(true, |_| {});
        record_promoted(&opts, &scratch, &mut simulated, &first).await;
        assert!(
            simulated
                .transcript()
                .contains("(would run): record 10.0.0.6:5432 in ")
        );
        let again = promoted::resolve(scratch.dir.path(), "127.0.0.1", 1, Some(("10.0.0.7", 5432)))
            .expect("a record");
        assert_eq!(
            again.in_use().map(PromotedPrimary::address).as_deref(),
            Some("10.0.0.7:5432")
        );
    }

    #[tokio::test]
    async fn a_simulation_is_reported_as_one() {
        let scratch = crate::repository::Scratch::new();
        let mut opts = options(Incident::ServiceFailure, &no_restore);
        opts.simulate = true;
        opts.service = Some("api".into());
        opts.services.insert(
            "api".into(),
            ServiceConfig {
                restart_command: "false".into(),
                health_url: "http://127.0.0.1:1/health".into(),
                timeout: None,
                timeout_seconds: Some(5),
            },
        );
        let report = failover(&opts, &scratch, |_| {}).await;
        assert!(report.ok && report.simulated);
        assert_eq!(
            report.summary,
            "simulation of service_failure: api restarted and healthy"
        );
        let lines: Vec<_> = report.transcript.lines().collect();
        assert!(
            lines[2].starts_with("  check: api is unhealthy: "),
            "{lines:?}"
        );
        assert_eq!(
            lines[3..5],
            [
                "step 1 (would run): restart api: false",
                "step 2 (would run): poll api's health URL until healthy (at most 5 s)",
            ]
        );
    }

    #[tokio::test]
    async fn the_status_says_what_is_down_and_what_is_missing() {
        let scratch = crate::repository::Scratch::new();
        let opts = options(Incident::DatabaseFailure, &no_restore);
        let status = status(&opts.primary, &opts.failover, &scratch)
            .await
            .expect("status")
            .to_string();
        let lines: Vec<_> = status.lines().collect();
        assert!(
            lines[0].starts_with("primary 127.0.0.1:1 is DOWN: "),
            "{lines:?}"
        );
        assert_eq!(
            lines[1..],
            [
                "replica: none configured ([failover] replica-host / REPLICA_HOST)",
                "last archived WAL: none",
                "failovers: none logged",
            ]
        );
    }
}
