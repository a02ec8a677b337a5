//! The configuration file's format (`--config`, `LIFELINE_CONFIG`) and the rules for its
//! values: durations written as durations, sizes and durations checked before any arithmetic.
//! The binary layers the environment and its flags over it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::{FailoverConfig, NotifyConfig, OpsError, ServiceConfig, VerifyConfig};

/// The configuration file as written. No `Debug`: it holds secrets.
#[derive(Default, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConfigFile {
    pub backup_dir: Option<PathBuf>,
    pub catalog: Option<PathBuf>,
    pub compression: Option<String>,
    pub compression_level: Option<i32>,
    pub block_size: Option<usize>,
    pub parallelism: Option<usize>,
    /// How long a backup waits for its last WAL segment to be archived ("5m").
    pub wal_wait: Option<String>,
    /// The former spelling of `wal-wait`, in seconds.
    pub wal_wait_seconds: Option<u64>,
    pub db_host: Option<String>,
    pub db_port: Option<u16>,
    pub db_user: Option<String>,
    pub db_password: Option<String>,
    pub db_name: Option<String>,
    /// libpq's sslmode for every connection to PostgreSQL (default prefer).
    pub db_sslmode: Option<String>,
    /// The PEM file of the CA that signed the server's certificate, or "system".
    pub db_sslrootcert: Option<PathBuf>,
    pub pgdata: Option<PathBuf>,
    pub transfers: Option<usize>,
    pub s3_bucket: Option<String>,
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    pub s3_path_style: Option<bool>,
    pub s3_part_size_mib: Option<usize>,
    /// No S3 retry starts later than this after the first attempt ("1m").
    pub s3_retry: Option<String>,
    /// The former spelling of `s3-retry`, in seconds.
    pub s3_retry_seconds: Option<u64>,
    pub s3_ca_file: Option<PathBuf>,
    /// S3's own encryption at rest on every put: "AES256" or "aws:kms".
    pub s3_sse: Option<String>,
    /// The KMS key for `s3-sse = "aws:kms"` (the account's default when unset).
    pub s3_sse_kms_key_id: Option<String>,
    /// An encrypted repository's passphrase: a file only its owner can read.
    pub passphrase_file: Option<PathBuf>,
    /// ... or the standard output of this command (run with /bin/sh).
    pub passphrase_command: Option<String>,
    /// Cache the unwrapped key on this host (`$HOME/.cache/lifeline`), default true.
    pub key_cache: Option<bool>,
    /// Refuse a repository that is not encrypted.
    pub require_encryption: Option<bool>,
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    pub wal_prefetch: Option<usize>,
    pub wal_prefetch_mib: Option<u64>,
    /// A restore writes relation blocks with `O_DIRECT` (default false).
    pub direct_io: Option<bool>,
    /// Chunk writes a restore plans at a time (default `restore::PLAN_WINDOW`).
    pub restore_plan_window: Option<usize>,
    /// `wal push` look-ahead: segments (0: off) and MiB stored ahead by a detached worker.
    pub wal_push_ahead: Option<usize>,
    pub wal_push_ahead_mib: Option<u64>,
    pub wal_spool_dir: Option<PathBuf>,
    pub redis_host: Option<String>,
    pub redis_port: Option<u16>,
    pub redis_password: Option<String>,
    pub staging_db_name: Option<String>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub wal_days: Option<u32>,
    /// How long an unreferenced pack or a leftover temporary file is left alone ("24h").
    pub prune_grace: Option<String>,
    /// The former spelling of `prune-grace`, in hours.
    pub prune_grace_hours: Option<u64>,
    pub repack_unused_percent: Option<u64>,
    pub pg_bin_dir: Option<PathBuf>,
    /// `"prefer"` or `"require"`: base backups read the data files of `[standby]`.
    pub backup_standby: Option<String>,
    /// A standby further behind than this is not read ("5m").
    pub standby_max_lag: Option<String>,
    pub standby: StandbyConfig,
    /// `[pg-bin-dirs]`: the server binaries of each major (`15 = "/usr/lib/postgresql/15/bin"`).
    pub pg_bin_dirs: std::collections::BTreeMap<String, PathBuf>,
    /// `status` alerts when the last WAL is older than this ("15m", the seed's RPO).
    pub alert_rpo: Option<String>,
    /// ... or the newest backup of a service and kind older than this ("26h").
    pub alert_backup_age: Option<String>,
    /// Rewritten with `lifeline metrics` after every backup, prune, verify, drill and check.
    pub metrics_textfile: Option<PathBuf>,
    /// How long `lifeline check` waits for a switched WAL segment to reach the repository ("60s").
    pub check_timeout: Option<String>,
    /// Where `lifeline drill` restores (default: the system's temporary directory).
    pub drill_dir: Option<PathBuf>,
    pub notify: NotifyConfig,
    pub verify: VerifyConfig,
    pub failover: FailoverConfig,
    pub services: std::collections::BTreeMap<String, ServiceConfig>,
}

/// `[standby]`: the streaming standby base backups may read (the primary's user, password and
/// database are used).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct StandbyConfig {
    pub host: Option<String>,
    pub port: Option<u16>,
    /// Its data directory, readable on the host lifeline runs on.
    pub data_dir: Option<PathBuf>,
}

/// What every command works from, resolved once before any I/O.
impl ConfigFile {
    /// Parse the file's text; unknown keys are errors, as a silently ignored typo can lose data.
    pub fn parse(text: &str) -> Result<ConfigFile, OpsError> {
        toml::from_str(text).map_err(|e| OpsError::Setting(e.to_string()))
    }
}

fn setting(message: String) -> OpsError {
    OpsError::Setting(message)
}

/// Durations in the configuration beyond this (about 100 years) are typing errors, and larger
/// values would overflow the clock arithmetic they feed.
pub const MAX_DURATION_SECONDS: u64 = 100 * 365 * 24 * 3600;

/// A number of seconds from the configuration, checked: deadlines are computed from it.
pub fn seconds(value: u64, key: &str) -> Result<u64, OpsError> {
    if value > MAX_DURATION_SECONDS {
        return Err(setting(format!(
            "{key} = {value}: too large; use at most {MAX_DURATION_SECONDS} seconds (100 years)"
        )));
    }
    Ok(value)
}

/// A size in MiB from the configuration, in bytes: an error naming the key when it overflows.
pub fn mib_to_bytes(mib: u64, key: &str) -> Result<u64, OpsError> {
    mib.checked_mul(1 << 20)
        .filter(|b| *b <= 1 << 50)
        .ok_or_else(|| {
            setting(format!(
                "{key} = {mib}: too large; use a size in MiB below 2^30"
            ))
        })
}

/// A duration as the operator writes it: "90s", "5m", "24h", "7d" (a day is 24 hours).
pub fn parse_duration(text: &str, key: &str) -> Result<Duration, OpsError> {
    let fix = "write a duration such as \"90s\", \"5m\", \"24h\" or \"7d\"";
    let span: jiff::Span = text
        .trim()
        .parse()
        .map_err(|_| setting(format!("{key} = {text:?} is not a duration: {fix}")))?;
    let duration = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|_| {
            setting(format!(
                "{key} = {text:?}: months and years vary in length; {fix}"
            ))
        })?;
    if duration.is_negative() {
        return Err(setting(format!("{key} = {text:?} is negative: {fix}")));
    }
    seconds(u64::try_from(duration.as_secs()).unwrap_or(u64::MAX), key)?;
    Ok(duration.unsigned_abs())
}

/// A duration from its key (`new`, human text) or the key it replaced (`old`, a number of
/// `unit`-second units); both at once is an error, as the intent would be unclear.
pub fn duration_key(
    (new_key, new): (&str, Option<&str>),
    (old_key, old, unit): (&str, Option<u64>, u64),
) -> Result<Option<Duration>, OpsError> {
    match (new, old) {
        (Some(_), Some(_)) => Err(setting(format!(
            "{new_key} and {old_key} are both set: keep only {new_key}"
        ))),
        (Some(text), None) => parse_duration(text, new_key).map(Some),
        (None, Some(n)) => n
            .checked_mul(unit)
            .filter(|s| *s <= MAX_DURATION_SECONDS)
            .map(|s| Some(Duration::from_secs(s)))
            .ok_or_else(|| setting(format!("{old_key} = {n}: too large; use at most 100 years"))),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_arithmetic_is_checked() {
        assert!(
            seconds(u64::MAX, "wal-wait-seconds")
                .is_err_and(|e| e.to_string().contains("wal-wait-seconds"))
        );
        assert_eq!(seconds(300, "x").expect("fits"), 300);
        assert!(
            mib_to_bytes(u64::MAX >> 10, "wal-prefetch-mib")
                .is_err_and(|e| e.to_string().contains("wal-prefetch-mib"))
        );
        assert_eq!(mib_to_bytes(512, "x").expect("fits"), 512 << 20);
        let overflow = duration_key(
            ("prune-grace", None),
            ("prune-grace-hours", Some(u64::MAX), 3600),
        );
        assert!(overflow.is_err_and(|e| e.to_string().starts_with("prune-grace-hours = ")));
    }

    #[test]
    fn durations_are_written_as_durations_and_the_old_keys_still_count() {
        assert_eq!(
            parse_duration("36h", "prune-grace").expect("parses"),
            Duration::from_secs(36 * 3600)
        );
        assert_eq!(
            parse_duration("7d", "x").expect("parses"),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("0s", "x").expect("parses"), Duration::ZERO);
        for bad in ["24", "1 month", "-5s", "soon"] {
            let err = parse_duration(bad, "prune-grace").expect_err(bad);
            assert!(err.to_string().starts_with("prune-grace = "), "{err}");
        }
        let hours = duration_key(("prune-grace", None), ("prune-grace-hours", Some(2), 3600));
        assert_eq!(hours.expect("old key"), Some(Duration::from_secs(7200)));
        let both = duration_key(
            ("prune-grace", Some("1h")),
            ("prune-grace-hours", Some(2), 3600),
        );
        assert!(both.is_err_and(|e| e.to_string().contains("keep only prune-grace")));
        let file =
            ConfigFile::parse("wal-wait = \"90s\"\ns3-retry = \"2m\"\nprune-grace = \"12h\"\n")
                .expect("new keys parse");
        assert_eq!(file.wal_wait.as_deref(), Some("90s"));
        assert_eq!(file.prune_grace.as_deref(), Some("12h"));
        assert_eq!(file.s3_retry.as_deref(), Some("2m"));
    }

    #[test]
    fn failover_restores_take_a_tablespace_mapping() {
        let text = "[failover]\ntablespace-map = { fast = \"/mnt/fast\", 16390 = \"/mnt/b\" }\n\
                    tablespace-map-all = \"/srv/ts\"\nwaldir = \"/srv/wal\"\n";
        let failover = ConfigFile::parse(text).expect("parses").failover;
        assert_eq!(
            failover.tablespace_map.get("fast"),
            Some(&PathBuf::from("/mnt/fast"))
        );
        assert_eq!(failover.tablespace_map.len(), 2);
        assert_eq!(failover.tablespace_map_all, Some(PathBuf::from("/srv/ts")));
        assert_eq!(failover.waldir, Some(PathBuf::from("/srv/wal")));
    }

    #[test]
    fn the_shipped_sample_configuration_parses() {
        let text = include_str!("../lifeline.toml");
        let file = ConfigFile::parse(text).expect("ops/lifeline.toml parses");
        assert_eq!(file.keep_daily, Some(7));
        assert_eq!(file.staging_db_name.as_deref(), Some("app_staging"));
        assert_eq!(file.failover.replica_port, Some(5432));
        assert_eq!(file.services.len(), 2);
        assert_eq!(file.verify.http.len(), 2);
        assert!(file.verify.login.is_some());
        assert!(format!("{:?}", file.notify).contains("smtp.example.com"));
    }

    #[test]
    fn a_misspelt_retention_key_is_an_error() {
        let err = ConfigFile::parse("keep-dayly = 7\n")
            .err()
            .expect("unknown keys are refused");
        assert!(err.to_string().contains("keep-dayly"), "{err}");
    }
}
