//! WAL file names, timelines and LSNs, parsed and validated before anything slices them.
//!
//! Grammar of the names `archive_command` hands us (all hex upper case):
//! - segment: `TTTTTTTTXXXXXXXXYYYYYYYY` (timeline, high and low part of the segment number)
//! - partial segment, left behind at a promotion: segment + `.partial`
//! - timeline history: `TTTTTTTT.history`
//! - backup history: segment + `.OOOOOOOO.backup` (offset of the backup start in the segment)

use std::fmt;
use std::str::FromStr;

pub const DEFAULT_SEGMENT_SIZE: u64 = 16 << 20;

/// A position in the WAL.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(into = "String", try_from = "String")]
pub struct Lsn(pub u64);

impl Lsn {
    pub fn segment_number(self, segment_size: u64) -> u64 {
        self.0 / segment_size
    }
}

/// The number of the last segment holding WAL of `[start, stop)`: the one containing `stop`,
/// or for a `stop` exactly on a segment boundary the one that ends there (a standby's stop
/// can fall on one, and the segment that starts there may not be written for a long time).
pub fn last_segment_number(start: Lsn, stop: Lsn, segment_size: u64) -> u64 {
    let on_boundary = stop.0.is_multiple_of(segment_size) && stop.0 > start.0;
    let end = if on_boundary { Lsn(stop.0 - 1) } else { stop };
    end.segment_number(segment_size)
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || format!("invalid LSN {s:?}: expected the form 16/B374D848");
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl From<Lsn> for String {
    fn from(lsn: Lsn) -> String {
        lsn.to_string()
    }
}

impl TryFrom<String> for Lsn {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A timeline id; the first timeline of a cluster is 1.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08X}", self.0)
    }
}

/// One WAL segment: a timeline and a segment number (the LSN divided by the segment size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Segment {
    pub timeline: TimelineId,
    pub number: u64,
}

impl Segment {
    pub fn containing(timeline: TimelineId, lsn: Lsn, segment_size: u64) -> Self {
        Segment {
            timeline,
            number: lsn.segment_number(segment_size),
        }
    }

    pub fn file_name(&self, segment_size: u64) -> String {
        let per_id = segments_per_xlog_id(segment_size);
        format!(
            "{}{:08X}{:08X}",
            self.timeline,
            self.number / per_id,
            self.number % per_id
        )
    }

    pub fn start_lsn(&self, segment_size: u64) -> Lsn {
        Lsn(self.number * segment_size)
    }
}

fn segments_per_xlog_id(segment_size: u64) -> u64 {
    0x1_0000_0000 / segment_size
}

/// A file `archive_command` may be asked to archive, by kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WalFileName {
    Segment {
        timeline: TimelineId,
        log: u32,
        seg: u32,
    },
    Partial {
        timeline: TimelineId,
        log: u32,
        seg: u32,
    },
    History {
        timeline: TimelineId,
    },
    BackupHistory {
        timeline: TimelineId,
        log: u32,
        seg: u32,
        offset: u32,
    },
}

impl WalFileName {
    pub fn timeline(&self) -> TimelineId {
        match self {
            WalFileName::Segment { timeline, .. }
            | WalFileName::Partial { timeline, .. }
            | WalFileName::History { timeline }
            | WalFileName::BackupHistory { timeline, .. } => *timeline,
        }
    }

    /// The segment this file is or belongs to (none for history files).
    pub fn segment(&self, segment_size: u64) -> Option<Segment> {
        let per_id = segments_per_xlog_id(segment_size);
        match self {
            WalFileName::Segment { timeline, log, seg }
            | WalFileName::Partial { timeline, log, seg }
            | WalFileName::BackupHistory {
                timeline, log, seg, ..
            } => Some(Segment {
                timeline: *timeline,
                number: u64::from(*log) * per_id + u64::from(*seg),
            }),
            WalFileName::History { .. } => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            WalFileName::Segment { .. } => "segment",
            WalFileName::Partial { .. } => "partial",
            WalFileName::History { .. } => "history",
            WalFileName::BackupHistory { .. } => "backup",
        }
    }
}

fn hex8(s: &str) -> Option<u32> {
    if s.len() == 8
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

fn parse_segment(s: &str) -> Option<(TimelineId, u32, u32)> {
    if s.len() != 24 || !s.is_ascii() {
        return None;
    }
    let timeline = hex8(&s[0..8])?;
    if timeline == 0 {
        return None;
    }
    Some((TimelineId(timeline), hex8(&s[8..16])?, hex8(&s[16..24])?))
}

impl FromStr for WalFileName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || {
            format!(
                "{s:?} is not a WAL file name: expected a segment like 000000010000000000000001, \
                 a .partial segment, a TTTTTTTT.history or a backup history file"
            )
        };
        if !s.is_ascii() {
            return Err(err());
        }
        if let Some((timeline, log, seg)) = parse_segment(s) {
            return Ok(WalFileName::Segment { timeline, log, seg });
        }
        if let Some(base) = s.strip_suffix(".partial") {
            let (timeline, log, seg) = parse_segment(base).ok_or_else(err)?;
            return Ok(WalFileName::Partial { timeline, log, seg });
        }
        if let Some(base) = s.strip_suffix(".history") {
            let timeline = hex8(base).filter(|t| *t > 0).ok_or_else(err)?;
            return Ok(WalFileName::History {
                timeline: TimelineId(timeline),
            });
        }
        if let Some(base) = s.strip_suffix(".backup") {
            if base.len() != 33 || base.as_bytes()[24] != b'.' {
                return Err(err());
            }
            let (timeline, log, seg) = parse_segment(&base[..24]).ok_or_else(err)?;
            let offset = hex8(&base[25..]).ok_or_else(err)?;
            return Ok(WalFileName::BackupHistory {
                timeline,
                log,
                seg,
                offset,
            });
        }
        Err(err())
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalFileName::Segment { timeline, log, seg } => {
                write!(f, "{timeline}{log:08X}{seg:08X}")
            }
            WalFileName::Partial { timeline, log, seg } => {
                write!(f, "{timeline}{log:08X}{seg:08X}.partial")
            }
            WalFileName::History { timeline } => write!(f, "{timeline}.history"),
            WalFileName::BackupHistory {
                timeline,
                log,
                seg,
                offset,
            } => {
                write!(f, "{timeline}{log:08X}{seg:08X}.{offset:08X}.backup")
            }
        }
    }
}

/// The segments PostgreSQL has marked ready to archive (`pg_wal/archive_status/NAME.ready`)
/// that come after `current`, oldest first. Unreadable means none.
pub fn ready_segments_after(pg_wal: &std::path::Path, current: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(pg_wal.join("archive_status")) else {
        return Vec::new();
    };
    let mut ready: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|f| f.strip_suffix(".ready").map(str::to_string))
        .filter(|name| name.as_str() > current)
        .filter(|name| matches!(name.parse::<WalFileName>(), Ok(WalFileName::Segment { .. })))
        .collect();
    ready.sort();
    ready
}

/// What the first page of a WAL segment says about where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// `XLOG_PAGE_MAGIC`: which major wrote it (`pg_version::major_of_wal_magic`).
    pub magic: u16,
    pub timeline: TimelineId,
    pub page_address: Lsn,
    pub system_identifier: u64,
    pub segment_size: u64,
}

const XLP_LONG_HEADER: u16 = 0x0002;

/// Parse the long page header at the start of a segment (layout of `XLogLongPageHeaderData`).
pub fn parse_segment_header(bytes: &[u8]) -> Result<SegmentHeader, String> {
    let Some(h) = bytes.get(..40) else {
        return Err("shorter than a WAL page header".into());
    };
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
    if u16_at(2) & XLP_LONG_HEADER == 0 {
        return Err("the first page has no long header: not the start of a WAL segment".into());
    }
    let segment_size = u64::from(u32_at(32));
    if !segment_size.is_power_of_two() || !(1 << 20..=1 << 30).contains(&segment_size) {
        return Err(format!(
            "implausible WAL segment size {segment_size} in the page header"
        ));
    }
    Ok(SegmentHeader {
        magic: u16_at(0),
        timeline: TimelineId(u32_at(4)),
        page_address: Lsn(u64_at(8)),
        system_identifier: u64_at(24),
        segment_size,
    })
}

/// The system identifier recorded at the start of `global/pg_control`.
pub fn parse_control_file_system_identifier(bytes: &[u8]) -> Result<u64, String> {
    let Some(b) = bytes.get(..8) else {
        return Err("pg_control is shorter than 8 bytes".into());
    };
    let mut id = [0u8; 8];
    id.copy_from_slice(b);
    Ok(u64::from_le_bytes(id))
}

/// pg_control's `state` (PostgreSQL's `DBState`: 1 shut down, 2 shut down in recovery, 6 in
/// production, ...), the field after the system identifier and the two version numbers;
/// `None` when the bytes are too few.
pub fn parse_control_file_state(bytes: &[u8]) -> Option<u32> {
    let field: [u8; 4] = bytes.get(16..20)?.try_into().ok()?;
    Some(u32::from_le_bytes(field))
}

/// One line of a timeline history file: the parent timeline and where the child branched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSwitch {
    pub parent: TimelineId,
    pub switch_point: Lsn,
}

/// Parse the lines of a `.history` file, as PostgreSQL's `readTimeLineHistory` does and a
/// little stricter: each line that is not blank or a `#` comment is `parentTLI <tab>
/// switchpoint <tab> reason` (PostgreSQL always writes a reason), and parent timelines strictly
/// increase. Recovery follows these lines to find the WAL of the parents, so a file that
/// does not parse breaks every point-in-time restore that crosses it.
pub fn parse_history(text: &str) -> Result<Vec<TimelineSwitch>, String> {
    let mut out: Vec<TimelineSwitch> = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let number = number + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let shown: String = line.chars().take(80).collect();
        // PostgreSQL writes tabs and reads any run of white space between the fields.
        let (tli, rest) = split_field(line);
        let (lsn, reason) = split_field(rest);
        if lsn.is_empty() {
            return Err(format!(
                "malformed history line {number} {shown:?}: expected timeline, LSN and reason"
            ));
        }
        let parent = tli
            .parse::<u32>()
            .ok()
            .filter(|t| *t > 0 && tli.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                format!("malformed timeline {tli:?} in history line {number} {shown:?}")
            })?;
        let switch_point = lsn
            .parse::<Lsn>()
            .map_err(|e| format!("history line {number} {shown:?}: {e}"))?;
        if reason.is_empty() {
            return Err(format!(
                "history line {number} {shown:?} has no reason after the LSN"
            ));
        }
        if let Some(last) = out.last()
            && parent <= last.parent.0
        {
            return Err(format!(
                "history line {number} names timeline {parent} after timeline {}: timelines \
                 must increase",
                last.parent.0
            ));
        }
        out.push(TimelineSwitch {
            parent: TimelineId(parent),
            switch_point,
        });
    }
    Ok(out)
}

/// The first white-space-delimited field and what follows it, white space trimmed.
fn split_field(s: &str) -> (&str, &str) {
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

/// Check the contents of `TTTTTTTT.history` (the history of `timeline`) before it is archived
/// or trusted: text, at least one line, every line as [`parse_history`] wants, and every
/// parent below the file's own timeline.
pub fn check_history(timeline: TimelineId, bytes: &[u8]) -> Result<Vec<TimelineSwitch>, String> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "it is not text: a timeline history file is lines of text".to_string())?;
    let switches = parse_history(text)?;
    let Some(last) = switches.last() else {
        return Err(format!(
            "it names no parent timeline: the history of timeline {} has a line for each \
             timeline before it",
            timeline.0
        ));
    };
    if last.parent >= timeline {
        return Err(format!(
            "it names timeline {} as a parent of timeline {}: parents come before the \
             timeline whose history this is",
            last.parent.0, timeline.0
        ));
    }
    Ok(switches)
}

/// What a backup-history file (`<segment>.<offset>.backup`) records about one base backup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupHistory {
    pub start: Lsn,
    pub stop: Lsn,
    pub checkpoint: Lsn,
    pub label: String,
}

/// The labels PostgreSQL 13 to 18 write in every backup-history file (`do_pg_backup_stop`).
const BACKUP_HISTORY_LABELS: [&str; 6] = [
    "START WAL LOCATION",
    "STOP WAL LOCATION",
    "CHECKPOINT LOCATION",
    "START TIME",
    "LABEL",
    "STOP TIME",
];

/// Check a backup-history file before it is archived: text holding every label PostgreSQL
/// writes, LSNs that parse, a stop not before the start, and a start in the segment the file
/// is named after. Other labels (`BACKUP METHOD`, `START TIMELINE`, ...) are left alone: they
/// vary across versions.
pub fn check_backup_history(name: &WalFileName, bytes: &[u8]) -> Result<BackupHistory, String> {
    let WalFileName::BackupHistory { log, seg, .. } = name else {
        return Err(format!("{name} is not a backup-history file name"));
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "it is not text: a backup-history file is lines of labels".to_string())?;
    let mut values: [Option<&str>; 6] = [None; 6];
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        if let Some(i) = BACKUP_HISTORY_LABELS.iter().position(|l| *l == key.trim())
            && values[i].is_none()
        {
            values[i] = Some(value.trim());
        }
    }
    let missing: Vec<&str> = BACKUP_HISTORY_LABELS
        .iter()
        .zip(values)
        .filter(|(_, v)| v.is_none())
        .map(|(l, _)| *l)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "it lacks the label(s) {} that PostgreSQL writes in every backup-history file",
            missing.join(", ")
        ));
    }
    let value = |i: usize| values[i].unwrap_or_default();
    // "0/2000028 (file 000000010000000000000002)": the LSN, then the segment it is in.
    let location = |i: usize| -> Result<(Lsn, &str), String> {
        let v = value(i);
        let (lsn, rest) = v.split_once(' ').unwrap_or((v, ""));
        let lsn = lsn
            .parse::<Lsn>()
            .map_err(|e| format!("{}: {e}", BACKUP_HISTORY_LABELS[i]))?;
        let file = rest
            .trim()
            .strip_prefix("(file ")
            .and_then(|r| r.strip_suffix(')'))
            .filter(|f| parse_segment(f).is_some())
            .ok_or_else(|| {
                format!(
                    "{} {v:?} does not name its segment as \"(file NAME)\"",
                    BACKUP_HISTORY_LABELS[i]
                )
            })?;
        Ok((lsn, file))
    };
    let (start, start_file) = location(0)?;
    let (stop, _) = location(1)?;
    let checkpoint = value(2)
        .split(' ')
        .next()
        .unwrap_or_default()
        .parse::<Lsn>()
        .map_err(|e| format!("CHECKPOINT LOCATION: {e}"))?;
    if stop < start {
        return Err(format!(
            "its STOP WAL LOCATION {stop} is before its START WAL LOCATION {start}"
        ));
    }
    // The name carries the stop timeline and the start segment; the start file carries the
    // start timeline, so only the segment part must agree.
    let named = format!("{log:08X}{seg:08X}");
    if start_file.get(8..) != Some(named.as_str()) {
        return Err(format!(
            "it says the backup started in {start_file}, but its name says segment {named}"
        ));
    }
    for i in [3, 5] {
        if value(i).is_empty() {
            return Err(format!("its {} is empty", BACKUP_HISTORY_LABELS[i]));
        }
    }
    Ok(BackupHistory {
        start,
        stop,
        checkpoint,
        label: value(4).to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_kind() {
        let cases = [
            ("000000010000000A000000FE", "segment"),
            ("000000020000000000000003.partial", "partial"),
            ("00000002.history", "history"),
            ("000000010000000000000002.00000028.backup", "backup"),
        ];
        for (name, kind) in cases {
            let parsed: WalFileName = name.parse().expect(name);
            assert_eq!(parsed.kind(), kind);
            assert_eq!(parsed.to_string(), name);
        }
        let seg: WalFileName = "000000010000000A000000FE".parse().expect("segment");
        assert_eq!(
            seg.segment(DEFAULT_SEGMENT_SIZE).expect("segment").number,
            0xA * 256 + 0xFE
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            "",
            "0",
            "00000001000000000000000",
            "0000000100000000000000011",
            "00000000000000000000000A",
            "000000010000000000000001.partia",
            "xyz.history",
            "00000000.history",
            "0000000100000000000000010000028.backup",
            "000000010000000000000001.0000002G.backup",
            "00000001000000000000000a",
            "ééééééééééééééééééééééé",
            "/etc/passwd",
        ] {
            assert!(bad.parse::<WalFileName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn lsn_and_segment_arithmetic() {
        let lsn: Lsn = "16/B374D848".parse().expect("lsn");
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        let seg = Segment::containing(TimelineId(3), lsn, DEFAULT_SEGMENT_SIZE);
        assert_eq!(
            seg.file_name(DEFAULT_SEGMENT_SIZE),
            "0000000300000016000000B3"
        );
        for bad in ["", "/", "1/", "/1", "G/1", "123456789/0"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn history_files_parse() {
        let text =
            "1\t0/3000158\tno recovery target specified\n\n2\t0/5000000\tbefore 2025-01-01\n";
        let switches = parse_history(text).expect("history");
        assert_eq!(switches.len(), 2);
        assert_eq!(switches[1].parent, TimelineId(2));
        assert_eq!(switches[1].switch_point, Lsn(0x500_0000));
        assert_eq!(
            check_history(TimelineId(3), text.as_bytes()).expect("history of 3"),
            switches
        );
        // PostgreSQL reads any white space between the fields, and comments.
        let spaced = "# made by hand\n1   0/3000158   at restore point \"x\"\n";
        assert_eq!(
            check_history(TimelineId(2), spaced.as_bytes()).expect("spaced")[0].parent,
            TimelineId(1)
        );
    }

    #[test]
    fn history_files_that_recovery_cannot_follow_are_refused() {
        let cases: [(u32, &[u8], &str); 10] = [
            (2, b"1\n", "expected timeline, LSN and reason"),
            (2, b"1\t0/3000158\n", "no reason"),
            (2, b"x\t0/3000158\treason\n", "malformed timeline"),
            (2, b"0\t0/3000158\treason\n", "malformed timeline"),
            (2, b"1\t03000158\treason\n", "invalid LSN"),
            (4, b"2\t0/1\tr\n1\t0/2\tr\n", "must increase"),
            (3, b"1\t0/1\tr\n1\t0/2\tr\n", "must increase"),
            (2, b"2\t0/1\treason\n", "as a parent of timeline 2"),
            (2, b"# only a comment\n", "names no parent"),
            (2, &[0xff, 0xfe, 0x00, 0x13], "not text"),
        ];
        for (timeline, bytes, why) in cases {
            let err = check_history(TimelineId(timeline), bytes).expect_err(why);
            assert!(err.contains(why), "{bytes:?}: {err}");
        }
    }

    /// As PostgreSQL 15 wrote it for a `pg_basebackup` of a test cluster.
    const BACKUP_HISTORY: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
STOP WAL LOCATION: 0/2000100 (file 000000010000000000000002)
CHECKPOINT LOCATION: 0/2000060
BACKUP METHOD: streamed
BACKUP FROM: primary
START TIME: 2026-11-30 09:07:45 UTC
LABEL: pg_basebackup base backup
START TIMELINE: 1
STOP TIME: 2026-11-30 09:07:45 UTC
STOP TIMELINE: 1
";

    fn backup_name() -> WalFileName {
        "000000010000000000000002.00000028.backup"
            .parse()
            .expect("name")
    }

    #[test]
    fn backup_history_files_hold_their_labels() {
        let parsed = check_backup_history(&backup_name(), BACKUP_HISTORY.as_bytes())
            .expect("a real backup-history file");
        assert_eq!(parsed.start, Lsn(0x200_0028));
        assert_eq!(parsed.stop, Lsn(0x200_0100));
        assert_eq!(parsed.checkpoint, Lsn(0x200_0060));
        assert_eq!(parsed.label, "pg_basebackup base backup");
        // A backup from a standby that was promoted meanwhile: the name has the stop
        // timeline, the start file the start timeline.
        let promoted: WalFileName = "000000020000000000000002.00000028.backup"
            .parse()
            .expect("name");
        assert!(check_backup_history(&promoted, BACKUP_HISTORY.as_bytes()).is_ok());
        // No trailing newline, an empty label.
        let bare = BACKUP_HISTORY
            .replace("LABEL: pg_basebackup base backup", "LABEL: ")
            .trim_end()
            .to_string();
        assert_eq!(
            check_backup_history(&backup_name(), bare.as_bytes())
                .expect("bare")
                .label,
            ""
        );
    }

    #[test]
    fn backup_history_files_without_their_labels_are_refused() {
        let without = |label: &str| -> String {
            BACKUP_HISTORY
                .lines()
                .filter(|l| !l.starts_with(&format!("{label}:")))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        for label in BACKUP_HISTORY_LABELS {
            let err =
                check_backup_history(&backup_name(), without(label).as_bytes()).expect_err(label);
            assert!(err.contains(label), "{label}: {err}");
        }
        let cases: [(String, &str); 6] = [
            (
                BACKUP_HISTORY.replace("0/2000100 (file", "0/1000100 (file"),
                "before its START",
            ),
            (
                BACKUP_HISTORY.replace(
                    "(file 000000010000000000000002)\nSTOP",
                    "(file 000000010000000000000003)\nSTOP",
                ),
                "its name says",
            ),
            (
                BACKUP_HISTORY.replace("0/2000060", "zz"),
                "CHECKPOINT LOCATION",
            ),
            (
                BACKUP_HISTORY.replace("0/2000028 (file 000000010000000000000002)", "0/2000028"),
                "(file NAME)",
            ),
            (
                BACKUP_HISTORY.replace("STOP TIME: 2026-11-30 09:07:45 UTC", "STOP TIME:"),
                "STOP TIME is empty",
            ),
            ("random garbage\n".to_string(), "lacks the label"),
        ];
        for (text, why) in cases {
            let err = check_backup_history(&backup_name(), text.as_bytes()).expect_err(why);
            assert!(err.contains(why), "{why}: {err}");
        }
        assert!(check_backup_history(&backup_name(), &[0xc3, 0x28]).is_err());
        let segment: WalFileName = "000000010000000000000002".parse().expect("name");
        assert!(check_backup_history(&segment, BACKUP_HISTORY.as_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn segment_names_round_trip(tli in 1u32.., number in 0u64..(1 << 40)) {
            let seg = Segment { timeline: TimelineId(tli), number };
            let name = seg.file_name(DEFAULT_SEGMENT_SIZE);
            let parsed: WalFileName = name.parse().expect("parse");
            prop_assert_eq!(parsed.segment(DEFAULT_SEGMENT_SIZE), Some(seg));
            prop_assert_eq!(parsed.to_string(), name);
        }

        #[test]
        fn lsns_round_trip(v in any::<u64>()) {
            let lsn = Lsn(v);
            prop_assert_eq!(lsn.to_string().parse::<Lsn>(), Ok(lsn));
        }

        #[test]
        fn arbitrary_strings_never_panic(s in "\\PC{0,60}") {
            let _ = s.parse::<WalFileName>();
            let _ = s.parse::<Lsn>();
        }

        #[test]
        fn arbitrary_bytes_never_pass_as_history(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            // Random bytes almost never form history lines; whatever passes has its parents
            // increasing and below the timeline.
            if let Ok(switches) = check_history(TimelineId(9), &bytes) {
                prop_assert!(switches.windows(2).all(|w| w[0].parent < w[1].parent));
                prop_assert!(switches.iter().all(|s| s.parent < TimelineId(9)));
            }
            let _ = check_backup_history(
                &"000000010000000000000002.00000028.backup".parse().expect("name"),
                &bytes,
            );
        }

        #[test]
        fn written_histories_parse_back(
            parents in proptest::collection::btree_set(1u32..1000, 1..20),
            lsns in proptest::collection::vec(any::<u64>(), 20),
        ) {
            let parents: Vec<u32> = parents.into_iter().collect();
            let text: String = parents
                .iter()
                .zip(&lsns)
                .map(|(p, l)| format!("{p}\t{}\tno recovery target specified\n", Lsn(*l)))
                .collect();
            let own = TimelineId(parents[parents.len() - 1] + 1);
            let switches = check_history(own, text.as_bytes()).expect("written history");
            prop_assert_eq!(switches.len(), parents.len());
            for ((s, p), l) in switches.iter().zip(&parents).zip(&lsns) {
                prop_assert_eq!(s.parent, TimelineId(*p));
                prop_assert_eq!(s.switch_point, Lsn(*l));
            }
        }
    }
}

/// PostgreSQL timestamps count microseconds from 2000-01-01 00:00:00 UTC.
const PG_EPOCH_UNIX_US: i64 = 946_684_800_000_000;
const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;
const RECORD_HEADER_LEN: usize = 24;

fn maxalign(n: usize) -> usize {
    (n + 7) & !7
}

/// The latest commit or abort time (Unix microseconds) among the records that start in this
/// segment, or `None` when it holds none. Recovery to a target time stops at the first commit
/// or abort after the target, so the archive can only reach a target if some archived
/// segment has one after it.
///
/// Reads the layout of `XLogPageHeaderData` and `XLogRecord`; a record whose header does not
/// make sense ends the scan (the rest of a switched segment is zeros).
pub fn last_transaction_time(segment: &[u8]) -> Option<i64> {
    let header = parse_segment_header(segment).ok()?;
    let page_size = {
        let b = segment.get(36..40)?;
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
    };
    if !(1024..=65536).contains(&page_size) || segment.len() as u64 > header.segment_size {
        return None;
    }
    // The segment's records as one stream, page headers removed: headers are multiples of 8
    // bytes, so record alignment in the stream is the same as in the WAL.
    let mut stream = Vec::with_capacity(segment.len());
    let mut skip = 0usize;
    for (i, page) in segment.chunks(page_size).enumerate() {
        let info = u16::from_le_bytes([*page.get(2)?, *page.get(3)?]);
        let header_len = if i == 0 { 40 } else { 24 };
        if i == 0 && info & XLP_FIRST_IS_CONTRECORD != 0 {
            let b = page.get(16..20)?;
            skip = maxalign(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        }
        stream.extend_from_slice(page.get(header_len..)?);
    }
    let mut latest = None;
    let mut pos = skip;
    while pos + RECORD_HEADER_LEN <= stream.len() {
        let rec = &stream[pos..];
        let total = u32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]) as usize;
        if total < RECORD_HEADER_LEN {
            break;
        }
        let (info, rmid) = (rec[16], rec[17]);
        if rmid == RM_XLOG_ID && info & 0xF0 == XLOG_SWITCH {
            break;
        }
        if rmid == RM_XACT_ID
            && matches!(info & XLOG_XACT_OPMASK, 0x00 | 0x20 | 0x30 | 0x40)
            && let Some(t) = rec.get(..total.min(rec.len())).and_then(xact_time)
        {
            latest = Some(latest.map_or(t, |l: i64| l.max(t)));
        }
        pos = maxalign(pos + total);
    }
    latest
}

/// The `xact_time` at the start of a transaction record's main data.
fn xact_time(record: &[u8]) -> Option<i64> {
    let mut at = RECORD_HEADER_LEN;
    loop {
        match *record.get(at)? {
            255 => {
                at += 2;
                break;
            }
            254 => {
                at += 5;
                break;
            }
            253 => at += 3,
            252 => at += 5,
            // Block references: transaction records have none.
            _ => return None,
        }
    }
    let b = record.get(at..at + 8)?;
    let pg = i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
    pg.checked_add(PG_EPOCH_UNIX_US)
}

#[cfg(test)]
mod transaction_time_tests {
    use super::*;

    /// A segment with a long page header, an insert-like record and a commit at `pg_time`.
    fn segment_with_commit(pg_time: i64) -> Vec<u8> {
        let mut seg = vec![0u8; 3 * 8192];
        seg[2..4].copy_from_slice(&0x0002u16.to_le_bytes()); // XLP_LONG_HEADER
        seg[4..8].copy_from_slice(&1u32.to_le_bytes());
        seg[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
        seg[36..40].copy_from_slice(&8192u32.to_le_bytes());
        for page in 1..3 {
            seg[page * 8192..page * 8192 + 2].copy_from_slice(&0xD110u16.to_le_bytes());
        }
        let mut at = 40;
        // A 30-byte record from another resource manager.
        seg[at..at + 4].copy_from_slice(&30u32.to_le_bytes());
        seg[at + 17] = 10;
        at += 32;
        // A commit: header, short main-data block id, then xact_time.
        seg[at..at + 4].copy_from_slice(&34u32.to_le_bytes());
        seg[at + 17] = RM_XACT_ID;
        seg[at + 24] = 255;
        seg[at + 25] = 8;
        seg[at + 26..at + 34].copy_from_slice(&pg_time.to_le_bytes());
        seg
    }

    #[test]
    fn finds_the_commit_time() {
        let seg = segment_with_commit(1_000_000);
        assert_eq!(
            last_transaction_time(&seg),
            Some(PG_EPOCH_UNIX_US + 1_000_000)
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40_000),
            long_header in proptest::prelude::any::<bool>(),
        ) {
            let mut bytes = bytes;
            if long_header && bytes.len() >= 40 {
                // Get past the header checks so the record walk sees the garbage.
                bytes[2] |= 0x02;
                bytes[32..36].copy_from_slice(&(16u32 << 20).to_le_bytes());
                bytes[36..40].copy_from_slice(&8192u32.to_le_bytes());
            }
            let _ = last_transaction_time(&bytes);
        }
    }

    #[test]
    fn empty_and_garbage_segments_have_none() {
        let mut seg = segment_with_commit(5);
        seg[72 + 17] = 10; // no longer a transaction record
        assert_eq!(last_transaction_time(&seg), None);
        assert_eq!(last_transaction_time(&[0u8; 100]), None);
        assert_eq!(last_transaction_time(&[]), None);
    }
}
