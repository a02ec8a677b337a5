//! What differs between the PostgreSQL majors lifeline supports, in one table: how a base
//! backup starts and stops, what it skips, how WAL pages and `pg_control` identify the major,
//! and how `pg_walfile_name()` names a segment boundary. Everything else lifeline reads (the
//! system identifier at the start of `pg_control`, the long WAL page header, `backup_label`)
//! is the same from 13 to 18.
//!
//! A newer major than the table knows is archived with a warning (WAL needs no layout fact to
//! be stored and fetched) and backed up with the newest major's facts only where they are
//! known to hold; see [`Support`].

use std::fmt;

/// How a non-exclusive base backup starts and stops on one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupFunctions {
    /// `pg_start_backup(label, fast, exclusive => false)` and `pg_stop_backup(exclusive =>
    /// false, wait_for_archive)`: 13 and 14 (removed in 15).
    StartStopBackup,
    /// `pg_backup_start(label, fast)` and `pg_backup_stop(wait_for_archive)`: from 15.
    BackupStartStop,
}

impl BackupFunctions {
    /// The query that starts the backup (`$1` the label) and returns the start LSN as text.
    pub fn start_sql(self) -> &'static str {
        match self {
            BackupFunctions::StartStopBackup => "SELECT pg_start_backup($1, true, false)::text",
            BackupFunctions::BackupStartStop => "SELECT pg_backup_start($1, true)::text",
        }
    }

    /// The query that stops it without waiting for the archive (lifeline waits for its own
    /// repository): the stop LSN as text, `backup_label` and `tablespace_map`.
    pub fn stop_sql(self) -> &'static str {
        match self {
            BackupFunctions::StartStopBackup => {
                "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
            }
            BackupFunctions::BackupStartStop => {
                "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
            }
        }
    }

    pub fn start_name(self) -> &'static str {
        match self {
            BackupFunctions::StartStopBackup => "pg_start_backup",
            BackupFunctions::BackupStartStop => "pg_backup_start",
        }
    }

    pub fn stop_name(self) -> &'static str {
        match self {
            BackupFunctions::StartStopBackup => "pg_stop_backup",
            BackupFunctions::BackupStartStop => "pg_backup_stop",
        }
    }
}

/// The facts of one major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Major {
    pub major: u32,
    /// `XLOG_PAGE_MAGIC`: the first two bytes of every WAL page this major writes.
    pub wal_page_magic: u16,
    /// `PG_CONTROL_VERSION`, at byte 8 of `global/pg_control`.
    pub control_version: u32,
    pub backup_functions: BackupFunctions,
    /// Directories in PGDATA whose contents a base backup leaves out (the directory itself is
    /// kept, empty), as `pg_basebackup` does for this major.
    pub skip_contents: &'static [&'static str],
    /// `pg_walfile_name(lsn)` of an LSN exactly on a segment boundary names the segment that
    /// starts there (17 on); before 17 it named the one that ends there.
    pub walfile_name_boundary_is_next: bool,
}

/// Directories whose contents every supported major's base backup leaves out (PostgreSQL's
/// "Backing Up the Data Directory" and pg_basebackup): recreated empty. 17's WAL summaries
/// live under `pg_wal`, whose contents are left out whole.
const SKIPPED_CONTENTS: [&str; 8] = [
    "pg_wal",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
    "pg_replslot",
];

const fn major(
    major: u32,
    wal_page_magic: u16,
    control_version: u32,
    skip_contents: &'static [&'static str],
) -> Major {
    Major {
        major,
        wal_page_magic,
        control_version,
        backup_functions: if major < 15 {
            BackupFunctions::StartStopBackup
        } else {
            BackupFunctions::BackupStartStop
        },
        skip_contents,
        walfile_name_boundary_is_next: major >= 17,
    }
}

/// Every supported major, oldest first. The magics and control versions were read from a WAL
/// segment and `pg_control` made by each major's initdb (`ops/test-matrix.sh` binaries).
pub const MAJORS: [Major; 6] = [
    major(13, 0xD106, 1300, &SKIPPED_CONTENTS),
    major(14, 0xD10D, 1300, &SKIPPED_CONTENTS),
    major(15, 0xD110, 1300, &SKIPPED_CONTENTS),
    major(16, 0xD113, 1300, &SKIPPED_CONTENTS),
    major(17, 0xD116, 1700, &SKIPPED_CONTENTS),
    major(18, 0xD118, 1800, &SKIPPED_CONTENTS),
];

pub const OLDEST: u32 = MAJORS[0].major;
pub const NEWEST: u32 = MAJORS[MAJORS.len() - 1].major;

/// What lifeline can do with a major.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Support {
    Known(&'static Major),
    /// Newer than the table: WAL is archived with a warning; a base backup uses the newest
    /// major's facts (see [`Support::facts_for_backup`]).
    Newer(u32),
    /// Older than 13: refused.
    Older(u32),
}

impl Support {
    pub fn of(major: u32) -> Support {
        match MAJORS.iter().find(|m| m.major == major) {
            Some(known) => Support::Known(known),
            None if major > NEWEST => Support::Newer(major),
            None => Support::Older(major),
        }
    }

    /// The facts a base backup of this major works from, or why there are none. A newer major
    /// keeps the newest one's functions and skips (PostgreSQL has not changed them since 15);
    /// what it cannot know is checked where it is used (the control file's version).
    pub fn facts_for_backup(self) -> Result<&'static Major, String> {
        match self {
            Support::Known(m) => Ok(m),
            Support::Newer(_) => Ok(&MAJORS[MAJORS.len() - 1]),
            Support::Older(major) => Err(format!(
                "PostgreSQL {major} is older than lifeline supports ({OLDEST} to {NEWEST}): \
                 upgrade the server, or back it up with a tool that still supports {major}"
            )),
        }
    }
}

/// The major of a `server_version_num` (150004 -> 15).
pub fn major_of_version_num(version_num: u32) -> u32 {
    version_num / 10_000
}

/// The major of a `server_version` text ("15.4", "16beta2", "17.0 (Debian 17.0-1)").
pub fn major_of_version(version: &str) -> Option<u32> {
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The major that writes WAL pages with `magic`, if the table knows it.
pub fn major_of_wal_magic(magic: u16) -> Option<u32> {
    MAJORS
        .iter()
        .find(|m| m.wal_page_magic == magic)
        .map(|m| m.major)
}

/// The major a data directory was created by: its `PG_VERSION` file ("15\n").
pub fn parse_pg_version_file(text: &str) -> Result<u32, String> {
    text.trim()
        .parse()
        .map_err(|_| format!("PG_VERSION holds {:?}, not a major version", text.trim()))
}

/// What the first bytes of `global/pg_control` say, laid out the same from 13 to 18 (read
/// from each major's initdb and compared with `pg_controldata`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlFacts {
    pub system_identifier: u64,
    pub control_version: u32,
    pub catalog_version: u32,
    /// The last checkpoint (or a standby's restartpoint) record.
    pub checkpoint: crate::wal::Lsn,
    /// Its redo point: the data files hold everything written before it.
    pub redo: crate::wal::Lsn,
    /// Its timeline.
    pub timeline: u32,
}

pub fn parse_control_file(bytes: &[u8]) -> Result<ControlFacts, String> {
    let Some(b) = bytes.get(..52) else {
        return Err("pg_control is shorter than 52 bytes: not a pg_control file".into());
    };
    let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
    Ok(ControlFacts {
        system_identifier: u64_at(0),
        control_version: u32_at(8),
        catalog_version: u32_at(12),
        checkpoint: crate::wal::Lsn(u64_at(32)),
        redo: crate::wal::Lsn(u64_at(40)),
        timeline: u32_at(48),
    })
}

impl fmt::Display for Major {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgreSQL {}", self.major)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_major_starts_its_backup_with_its_own_functions() {
        assert_eq!(
            Support::of(13)
                .facts_for_backup()
                .map(|m| m.backup_functions),
            Ok(BackupFunctions::StartStopBackup)
        );
        assert_eq!(
            Support::of(14)
                .facts_for_backup()
                .map(|m| m.backup_functions),
            Ok(BackupFunctions::StartStopBackup)
        );
        for major in 15..=18 {
            let facts = Support::of(major).facts_for_backup().expect("known");
            assert_eq!(facts.backup_functions, BackupFunctions::BackupStartStop);
            assert!(
                facts
                    .backup_functions
                    .start_sql()
                    .contains("pg_backup_start")
            );
        }
        assert!(
            BackupFunctions::StartStopBackup
                .stop_sql()
                .contains("pg_stop_backup(false, false)")
        );
    }

    #[test]
    fn newer_majors_are_accepted_and_older_ones_refused() {
        assert_eq!(Support::of(19), Support::Newer(19));
        assert_eq!(
            Support::of(19).facts_for_backup().map(|m| m.major),
            Ok(NEWEST)
        );
        let refused = Support::of(12)
            .facts_for_backup()
            .expect_err("12 is too old");
        assert!(refused.contains("13 to 18"), "{refused}");
    }

    #[test]
    fn versions_and_magics_name_their_major() {
        assert_eq!(major_of_version_num(150004), 15);
        assert_eq!(major_of_version("16beta2"), Some(16));
        assert_eq!(major_of_version("17.0 (Debian 17.0-1.pgdg120+1)"), Some(17));
        assert_eq!(major_of_version("x"), None);
        assert_eq!(major_of_wal_magic(0xD110), Some(15));
        assert_eq!(major_of_wal_magic(0xD200), None);
        assert_eq!(parse_pg_version_file("14\n"), Ok(14));
        assert!(parse_pg_version_file("fourteen").is_err());
        let magics: std::collections::HashSet<u16> =
            MAJORS.iter().map(|m| m.wal_page_magic).collect();
        assert_eq!(magics.len(), MAJORS.len(), "two majors share a WAL magic");
    }

    #[test]
    fn control_file_facts_are_read_little_endian() {
        let mut bytes = vec![0u8; 296];
        bytes[..8].copy_from_slice(&7_345_678_901_234_567_890u64.to_le_bytes());
        bytes[8..12].copy_from_slice(&1300u32.to_le_bytes());
        bytes[12..16].copy_from_slice(&202_209_061u32.to_le_bytes());
        bytes[32..40].copy_from_slice(&0x0150_07A0_u64.to_le_bytes());
        bytes[40..48].copy_from_slice(&0x0150_0718_u64.to_le_bytes());
        bytes[48..52].copy_from_slice(&3u32.to_le_bytes());
        let facts = parse_control_file(&bytes).expect("parses");
        assert_eq!(facts.system_identifier, 7_345_678_901_234_567_890);
        assert_eq!(facts.control_version, 1300);
        assert_eq!(facts.catalog_version, 202_209_061);
        assert_eq!(facts.checkpoint, crate::wal::Lsn(0x0150_07A0));
        assert_eq!(facts.redo, crate::wal::Lsn(0x0150_0718));
        assert_eq!(facts.timeline, 3);
        assert!(parse_control_file(&bytes[..40]).is_err());
    }
}
