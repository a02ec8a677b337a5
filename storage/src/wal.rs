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

/// What the first page of a WAL segment says about where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
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

/// One line of a timeline history file: the parent timeline and where the child branched off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSwitch {
    pub parent: TimelineId,
    pub switch_point: Lsn,
}

/// Parse a `.history` file: `parentTLI <tab> switchpoint <tab> reason`, `#` comments.
pub fn parse_history(text: &str) -> Result<Vec<TimelineSwitch>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(tli), Some(lsn)) = (fields.next(), fields.next()) else {
            return Err(format!("malformed history line {line:?}"));
        };
        let parent = tli
            .parse::<u32>()
            .map_err(|_| format!("malformed timeline {tli:?} in history line {line:?}"))?;
        out.push(TimelineSwitch {
            parent: TimelineId(parent),
            switch_point: lsn.parse()?,
        });
    }
    Ok(out)
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
        assert!(parse_history("1\n").is_err());
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
