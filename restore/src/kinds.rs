//! The operator's words for a restore: what kind, and into which environment.

use std::fmt;

/// A PostgreSQL restore: the backup as it ended, or on to a point in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum RestoreType {
    /// The backup, recovered to its consistent end.
    Full,
    /// The backup, then the archived WAL up to `--until`.
    Pitr,
}

/// Which environment a restore or a check is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Target {
    #[default]
    Production,
    Staging,
}

impl Target {
    pub fn as_str(self) -> &'static str {
        match self {
            Target::Production => "production",
            Target::Staging => "staging",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}
