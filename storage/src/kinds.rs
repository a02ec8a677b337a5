//! What a backup is of, what kind it is, and what its last drill found: words of the
//! repository's format, written in manifests, `.metadata` and the catalog as below.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The service a backup is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// `postgres` as well, as in `backup postgres`.
    #[cfg_attr(feature = "clap", value(alias = "postgres"))]
    #[serde(alias = "postgres")]
    Postgresql,
    Redis,
}

/// How a backup was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// PostgreSQL's data directory, physical.
    Base,
    /// PostgreSQL, logical (`pg_dump`).
    Dump,
    /// A Redis snapshot.
    Rdb,
    /// Redis's append-only files.
    Aof,
}

/// Where a base backup's data files were read: the primary, or a streaming standby (the
/// backup then starts and stops on the primary, or on the standby when it archives itself).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupSource {
    #[default]
    Primary,
    Standby,
}

impl BackupSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupSource::Primary => "primary",
            BackupSource::Standby => "standby",
        }
    }
}

impl fmt::Display for BackupSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for BackupSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "primary" => Ok(BackupSource::Primary),
            "standby" => Ok(BackupSource::Standby),
            other => Err(format!(
                "{other:?} is not a backup source: primary or standby"
            )),
        }
    }
}

/// What the last drill of a backup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Restorability {
    /// No drill has restored it yet.
    Unverified,
    /// A drill restored it, recovered, and found the rows it recorded.
    Verified,
    /// A drill could not restore it, or found it different from what was recorded.
    Failed,
}

impl Restorability {
    pub fn as_str(self) -> &'static str {
        match self {
            Restorability::Unverified => "UNVERIFIED",
            Restorability::Verified => "VERIFIED",
            Restorability::Failed => "FAILED",
        }
    }
}

impl fmt::Display for Restorability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Restorability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let all = [
            Restorability::Unverified,
            Restorability::Verified,
            Restorability::Failed,
        ];
        all.into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a restorability: UNVERIFIED, VERIFIED or FAILED"))
    }
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Service::Postgresql => "postgresql",
            Service::Redis => "redis",
        }
    }
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Base => "base",
            BackupKind::Dump => "dump",
            BackupKind::Rdb => "rdb",
            BackupKind::Aof => "aof",
        }
    }

    /// The service backups of this kind are of.
    pub fn service(self) -> Service {
        match self {
            BackupKind::Base | BackupKind::Dump => Service::Postgresql,
            BackupKind::Rdb | BackupKind::Aof => Service::Redis,
        }
    }

    /// `base` or `dump`: a kind of PostgreSQL backup (`--kind`), else "use base or dump".
    pub fn parse_postgres(text: &str) -> Result<BackupKind, String> {
        Self::parse_of(text, Service::Postgresql, "base or dump")
    }

    /// `rdb` or `aof`: a kind of Redis backup (`--type`), else "use rdb or aof".
    pub fn parse_redis(text: &str) -> Result<BackupKind, String> {
        Self::parse_of(text, Service::Redis, "rdb or aof")
    }

    fn parse_of(text: &str, service: Service, kinds: &str) -> Result<BackupKind, String> {
        text.parse::<BackupKind>()
            .ok()
            .filter(|kind| kind.service() == service)
            .ok_or_else(|| format!("use {kinds}"))
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl fmt::Display for BackupKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl FromStr for Service {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let all = [Service::Postgresql, Service::Redis];
        all.into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a service: postgresql or redis"))
    }
}

impl FromStr for BackupKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "base" => Ok(BackupKind::Base),
            "dump" => Ok(BackupKind::Dump),
            "rdb" => Ok(BackupKind::Rdb),
            "aof" => Ok(BackupKind::Aof),
            other => Err(format!(
                "{other:?} is not a backup kind: base, dump, rdb or aof"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_through_text_and_json() {
        for kind in [
            BackupKind::Base,
            BackupKind::Dump,
            BackupKind::Rdb,
            BackupKind::Aof,
        ] {
            assert_eq!(kind.as_str().parse::<BackupKind>(), Ok(kind));
            let json = serde_json::to_string(&kind).expect("serializes");
            assert_eq!(json, format!("\"{kind}\""));
            assert_eq!(
                kind.service().as_str().parse::<Service>(),
                Ok(kind.service())
            );
        }
        assert!("BASE".parse::<BackupKind>().is_err());
        assert!("postgres".parse::<Service>().is_err());
        assert_eq!(format!("{:<10}|", Service::Redis), "redis     |");
    }

    #[test]
    fn each_service_takes_only_its_own_kinds() {
        assert_eq!(BackupKind::parse_postgres("dump"), Ok(BackupKind::Dump));
        assert_eq!(BackupKind::parse_redis("aof"), Ok(BackupKind::Aof));
        assert_eq!(
            BackupKind::parse_postgres("rdb"),
            Err("use base or dump".into())
        );
        assert_eq!(
            BackupKind::parse_redis("base"),
            Err("use rdb or aof".into())
        );
    }
}
