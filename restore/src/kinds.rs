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
    /// A base backup restores a whole data directory, wherever `--data-dir` says: `staging`
    /// names a database, which only a dump restore has. Refused rather than ignored.
    pub fn refuse_for_base(self) -> Result<(), crate::RestoreError> {
        if self == Target::Production {
            return Ok(());
        }
        Err(crate::RestoreError::Refused(
            "--target staging restores a dump into the staging database; a base backup restores \
             a whole data directory: for a staging copy, restore it with --data-dir into a new \
             directory and start it on another port, or use --kind dump --target staging"
                .into(),
        ))
    }

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
