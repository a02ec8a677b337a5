//! Point-in-time recovery planning: pick the backup and the timeline, and prove the archive
//! carries recovery from one to the other.
//!
//! A timeline can be followed from a backup when its history file passes through the backup's
//! timeline and leaves it no earlier than the backup's end. For each segment number recovery
//! reads the segment of the newest timeline on the path whose branch point is at or before
//! that segment ([`chain`]). The plan walks the same path and demands every segment from the
//! backup's start to the first one archived after the target (or, for `--until latest`, to the
//! newest one archived on the path); a missing one is a gap, and no segment archived after the
//! target means the target lies past the end of the archive. `verify` and `status` walk the
//! same chains ([`check_wal_chains`]).

use std::collections::{BTreeMap, BTreeSet};

use catalog::{BackupRecord, WalRecord};
use storage::BackupKind;
use storage::wal::{Lsn, Segment, TimelineId, TimelineSwitch};

use crate::RestoreError;

/// The timeline recovery follows (`recovery_target_timeline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TargetTimeline {
    /// The newest timeline the archive holds, as PostgreSQL's default.
    #[default]
    Latest,
    /// The backup's own timeline.
    Current,
    Exact(TimelineId),
}

impl TargetTimeline {
    /// The value of `recovery_target_timeline`.
    pub fn setting(&self) -> String {
        match self {
            TargetTimeline::Latest => "latest".into(),
            TargetTimeline::Current => "current".into(),
            TargetTimeline::Exact(t) => t.0.to_string(),
        }
    }
}

impl std::str::FromStr for TargetTimeline {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "latest" => Ok(TargetTimeline::Latest),
            "current" => Ok(TargetTimeline::Current),
            n => match n.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(TargetTimeline::Exact(TimelineId(n))),
                _ => Err(format!(
                    "--target-timeline {s:?} is not a timeline: use latest, current or a timeline number (1, 2, ...)"
                )),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PitrPlan {
    pub backup: BackupRecord,
    pub timeline: TimelineId,
    /// The segments that may hold the first transaction after the target, in order: from the
    /// first one archived after the target to the end of the unbroken chain.
    pub candidates: Vec<String>,
    /// A missing segment after the candidates, if the chain breaks there.
    pub gap_after: Option<String>,
    /// What the operator should know about the path chosen (other timelines that branch off
    /// after the backup, and the flag that selects them), one line each.
    pub notes: Vec<String>,
}

/// One step of a timeline path: `timeline` serves segments from `begin` on (until the next step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PathStep {
    timeline: TimelineId,
    begin: u64,
    /// Where the next timeline branched off (None: the last timeline of the path).
    end: Option<Lsn>,
}

/// The timelines recovery passes through to reach `target`, oldest first, as its history file
/// lists them (a timeline without one is a path of its own).
fn timeline_path(
    target: TimelineId,
    histories: &BTreeMap<u32, Vec<TimelineSwitch>>,
    segment_size: u64,
) -> Vec<PathStep> {
    let mut steps = Vec::new();
    let mut begin = 0;
    for switch in histories
        .get(&target.0)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        steps.push(PathStep {
            timeline: switch.parent,
            begin,
            end: Some(switch.switch_point),
        });
        begin = switch.switch_point.segment_number(segment_size);
    }
    steps.push(PathStep {
        timeline: target,
        begin,
        end: None,
    });
    steps
}

/// The segment recovery reads for each segment number from `from` to `to` (inclusive) along
/// `path`: as PostgreSQL does, the one of the newest timeline of the path that began at or
/// before it (the segment holding a switch point is read from the new timeline, whose copy
/// starts with the old one's records; the old one's is left as `.partial`).
///
/// The one walk that planning, `verify` and `status` share.
fn chain(path: &[PathStep], from: u64, to: u64) -> impl Iterator<Item = Segment> + '_ {
    (from..=to).filter_map(move |number| {
        let step = path.iter().rev().find(|s| s.begin <= number)?;
        Some(Segment {
            timeline: step.timeline,
            number,
        })
    })
}

/// What the archive holds of one cluster's WAL, by timeline and segment number.
#[derive(Debug, Default)]
struct ArchiveIndex {
    /// Complete segments, with the time each was archived.
    segments: BTreeMap<(u32, u64), i64>,
    /// Every timeline that archived a segment, complete or partial, or a history file.
    timelines: BTreeSet<u32>,
}

impl ArchiveIndex {
    fn new(wal: &[WalRecord]) -> Self {
        let mut index = ArchiveIndex::default();
        for w in wal {
            match (w.kind.as_str(), w.segment_number) {
                ("segment", Some(n)) => {
                    index.segments.insert((w.timeline, n), w.archived_at_us);
                }
                ("partial" | "history", _) => {}
                _ => continue,
            }
            index.timelines.insert(w.timeline);
        }
        index
    }

    fn has(&self, s: Segment) -> bool {
        self.segments.contains_key(&(s.timeline.0, s.number))
    }

    fn archived_at(&self, s: Segment) -> Option<i64> {
        self.segments.get(&(s.timeline.0, s.number)).copied()
    }

    /// The newest complete segment archived along `path`. A `.partial` segment ends the old
    /// timeline at a switch and recovery never reads it, so it is not counted.
    fn newest_on(&self, path: &[PathStep]) -> Option<Segment> {
        path.iter()
            .enumerate()
            .filter_map(|(i, step)| {
                let until = path.get(i + 1).map_or(u64::MAX, |next| next.begin);
                if until <= step.begin {
                    return None;
                }
                let t = step.timeline.0;
                self.segments
                    .range((t, step.begin)..(t, until))
                    .next_back()
                    .map(|((_, n), _)| Segment {
                        timeline: step.timeline,
                        number: *n,
                    })
            })
            .max_by_key(|s| s.number)
    }

    /// The oldest complete segment of `timeline`.
    fn oldest_of(&self, timeline: u32) -> Option<u64> {
        self.segments
            .range((timeline, 0)..=(timeline, u64::MAX))
            .next()
            .map(|((_, n), _)| *n)
    }

    /// Whether `timeline` archived a complete segment that starts at or after `lsn`.
    fn has_wal_after(&self, timeline: u32, lsn: Lsn, segment_size: u64) -> bool {
        let first = lsn.0.div_ceil(segment_size);
        self.segments
            .range((timeline, first)..=(timeline, u64::MAX))
            .next()
            .is_some()
    }
}

/// A run of consecutive WAL segments missing on one timeline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WalGap {
    pub timeline: u32,
    pub first_missing: String,
    pub last_missing: String,
    pub missing: u64,
}

impl std::fmt::Display for WalGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.missing == 1 {
            write!(
                f,
                "segment {} missing on timeline {}",
                self.first_missing, self.timeline
            )
        } else {
            write!(
                f,
                "segments {}..{} ({}) missing on timeline {}",
                self.first_missing, self.last_missing, self.missing, self.timeline
            )
        }
    }
}

/// Group missing segments (in order) into runs of consecutive numbers on one timeline.
fn group_gaps(missing: impl IntoIterator<Item = Segment>, segment_size: u64) -> Vec<WalGap> {
    let mut runs: Vec<(Segment, Segment)> = Vec::new();
    for s in missing {
        match runs.last_mut() {
            Some((_, last)) if last.timeline == s.timeline && last.number + 1 == s.number => {
                *last = s;
            }
            _ => runs.push((s, s)),
        }
    }
    runs.into_iter()
        .map(|(first, last)| WalGap {
            timeline: first.timeline.0,
            first_missing: first.file_name(segment_size),
            last_missing: last.file_name(segment_size),
            missing: last.number - first.number + 1,
        })
        .collect()
}

/// The WAL chains of one cluster, checked by [`check_wal_chains`].
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WalChains {
    pub gaps: Vec<WalGap>,
    /// Timelines whose segments begin after the start of the oldest backup but whose `.history`
    /// file is not archived: recovery from that backup cannot switch to them.
    pub missing_histories: Vec<u32>,
}

impl WalChains {
    pub fn is_clean(&self) -> bool {
        self.gaps.is_empty() && self.missing_histories.is_empty()
    }

    pub fn missing_segments(&self) -> u64 {
        self.gaps.iter().map(|g| g.missing).sum()
    }

    /// One line per problem, naming what is missing and what it breaks.
    pub fn problems(&self) -> Vec<String> {
        let gaps = self.gaps.iter().map(|g| {
            format!(
                "WAL {g}: recovery through it stops there; put the segment{} back into the archive, \
                 and take a new base backup so that restores need not cross the gap",
                if g.missing == 1 { "" } else { "s" }
            )
        });
        let histories = self.missing_histories.iter().map(|t| {
            format!(
                "WAL history file {} is missing: recovery from backups taken before timeline {t} \
                 began cannot switch to it; put the file back (it is in pg_wal of the server that \
                 created the timeline)",
                storage::wal::WalFileName::History {
                    timeline: TimelineId(*t)
                }
            )
        });
        gaps.chain(histories).collect()
    }
}

/// The WAL a kept base backup needs of its own: from `start` to `stop` on `timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupWal {
    pub timeline: u32,
    pub start: Lsn,
    pub stop: Lsn,
}

/// Walk the WAL chain of every timeline of a cluster from the start of the oldest of `backups`
/// (the base backups kept) to the newest segment archived on that timeline's path, following the
/// history files, and each backup's own WAL; name every segment missing on the way (each once,
/// even when several timelines share it). No backups, nothing to check.
pub fn check_wal_chains(
    wal: &[WalRecord],
    histories: &BTreeMap<u32, Vec<TimelineSwitch>>,
    segment_size: u64,
    backups: &[BackupWal],
) -> WalChains {
    let Some(from) = backups.iter().map(|b| b.start).min() else {
        return WalChains::default();
    };
    let index = ArchiveIndex::new(wal);
    let from = from.segment_number(segment_size);
    let mut missing = BTreeSet::new();
    let mut missing_histories = Vec::new();
    for t in known_timelines(&index, histories, &[]) {
        let path = timeline_path(TimelineId(t), histories, segment_size);
        let mut start = from;
        if t > 1 && !histories.contains_key(&t) {
            // Without its history the timeline is a path of its own: its chain is checked from
            // its first segment, and a start after the oldest backup is the missing history.
            let Some(oldest) = index.oldest_of(t) else {
                continue;
            };
            if oldest > from {
                missing_histories.push(t);
                start = oldest;
            }
        }
        let Some(newest) = index.newest_on(&path) else {
            continue;
        };
        missing.extend(chain(&path, start, newest.number).filter(|s| !index.has(*s)));
    }
    for b in backups {
        let path = timeline_path(TimelineId(b.timeline), histories, segment_size);
        missing.extend(
            chain(
                &path,
                b.start.segment_number(segment_size),
                b.stop.segment_number(segment_size),
            )
            .filter(|s| !index.has(*s)),
        );
    }
    WalChains {
        gaps: group_gaps(missing, segment_size),
        missing_histories,
    }
}

/// How recovery from a backup relates to a timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// The backup's own timeline.
    Own,
    /// Followable: its history leaves the backup's timeline at this point, after the backup.
    Through(Lsn),
    /// It left the backup's timeline at this point, before the backup ended.
    BranchedBefore(Lsn),
    /// Its history does not pass through the backup's timeline.
    Unrelated,
    /// The archive holds no history file for it.
    NoHistory,
}

fn reach(
    backup: &BackupRecord,
    timeline: u32,
    histories: &BTreeMap<u32, Vec<TimelineSwitch>>,
) -> Reach {
    if timeline == backup.timeline {
        return Reach::Own;
    }
    // A timeline's id is always higher than its parents'.
    if timeline < backup.timeline {
        return Reach::Unrelated;
    }
    let Some(history) = histories.get(&timeline) else {
        return Reach::NoHistory;
    };
    match history.iter().find(|s| s.parent.0 == backup.timeline) {
        Some(s) if s.switch_point.0 >= backup.stop_lsn => Reach::Through(s.switch_point),
        Some(s) => Reach::BranchedBefore(s.switch_point),
        None => Reach::Unrelated,
    }
}

fn followable(r: Reach) -> bool {
    matches!(r, Reach::Own | Reach::Through(_))
}

/// Every timeline the archive knows of: archived segments, history files, backups.
fn known_timelines(
    index: &ArchiveIndex,
    histories: &BTreeMap<u32, Vec<TimelineSwitch>>,
    backups: &[&BackupRecord],
) -> BTreeSet<u32> {
    index
        .timelines
        .iter()
        .chain(histories.keys())
        .copied()
        .chain(backups.iter().map(|b| b.timeline))
        .collect()
}

/// The timelines recovery from `backup` can follow, oldest first.
fn followable_from(
    backup: &BackupRecord,
    known: &BTreeSet<u32>,
    histories: &BTreeMap<u32, Vec<TimelineSwitch>>,
) -> Vec<u32> {
    known
        .iter()
        .copied()
        .filter(|t| followable(reach(backup, *t, histories)))
        .collect()
}

fn list_timelines(timelines: &[u32]) -> String {
    timelines
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why `--target-timeline N` cannot be followed from `backup`, and what can.
fn cannot_follow(
    backup: &BackupRecord,
    timeline: u32,
    known: &BTreeSet<u32>,
    histories: &BTreeMap<u32, Vec<TimelineSwitch>>,
) -> String {
    let b = backup.timeline;
    let why = match reach(backup, timeline, histories) {
        Reach::BranchedBefore(at) => format!(
            "timeline {timeline} branched off timeline {b} at {at}, before the backup ended at {}",
            Lsn(backup.stop_lsn)
        ),
        Reach::Unrelated => format!(
            "the history of timeline {timeline} does not pass through timeline {b}, the backup's"
        ),
        Reach::NoHistory if known.contains(&timeline) => format!(
            "the archive holds no {} file, so recovery cannot switch to timeline {timeline}",
            storage::wal::WalFileName::History {
                timeline: TimelineId(timeline)
            }
        ),
        Reach::NoHistory => format!("the archive holds nothing of timeline {timeline}"),
        Reach::Own | Reach::Through(_) => "it can be followed".into(),
    };
    format!(
        "--target-timeline {timeline} cannot be followed from backup {} (timeline {b}): {why}. \
         From this backup recovery can follow timeline {}: choose one of them, or another backup \
         with --from",
        backup.backup_id,
        list_timelines(&followable_from(backup, known, histories))
    )
}

/// The timeline recovery from `backup` follows for `want`, or why it cannot.
fn choose_timeline(
    backup: &BackupRecord,
    want: TargetTimeline,
    known: &BTreeSet<u32>,
    histories: &BTreeMap<u32, Vec<TimelineSwitch>>,
) -> Result<TimelineId, RestoreError> {
    match want {
        TargetTimeline::Current => Ok(TimelineId(backup.timeline)),
        TargetTimeline::Latest => Ok(TimelineId(
            followable_from(backup, known, histories)
                .last()
                .copied()
                .unwrap_or(backup.timeline),
        )),
        TargetTimeline::Exact(t) if followable(reach(backup, t.0, histories)) => Ok(t),
        TargetTimeline::Exact(t) => Err(RestoreError::Refused(cannot_follow(
            backup, t.0, known, histories,
        ))),
    }
}

/// When more than one timeline continues from `backup`: which one recovery follows, and each
/// other one with the flag that selects it. A timeline the chosen path leaves counts only when
/// it archived WAL past the point where the path left it (after an ordinary failover the old
/// timeline ends there).
fn branch_notes(
    backup: &BackupRecord,
    chosen: TimelineId,
    want: TargetTimeline,
    known: &BTreeSet<u32>,
    histories: &BTreeMap<u32, Vec<TimelineSwitch>>,
    index: &ArchiveIndex,
    segment_size: u64,
) -> Vec<String> {
    let followed = followable_from(backup, known, histories);
    let newest = followed.last().copied();
    let path = timeline_path(chosen, histories, segment_size);
    let mut notes = Vec::new();
    for &t in followed.iter().filter(|t| **t != chosen.0) {
        let own = t == backup.timeline;
        let mut flag = format!("--target-timeline {t}");
        if own {
            flag.push_str(" (or current)");
        } else if Some(t) == newest {
            flag.push_str(" (or latest)");
        }
        let on_path = path
            .iter()
            .enumerate()
            .find(|(_, s)| s.timeline.0 == t)
            .and_then(|(i, s)| Some((s.end?, path.get(i + 1)?.timeline)));
        if let Some((left_at, next)) = on_path {
            if !index.has_wal_after(t, left_at, segment_size) {
                continue;
            }
            notes.push(format!(
                "timeline {t}{} also continues after this backup, past {left_at} where timeline \
                 {} branched off it: {flag} follows it",
                if own { " (the backup's own)" } else { "" },
                next.0
            ));
        } else {
            let from = histories
                .get(&t)
                .and_then(|h| h.last())
                .map(|s| format!(" (off timeline {} at {})", s.parent.0, s.switch_point))
                .unwrap_or_default();
            notes.push(format!(
                "timeline {t} also branches off after this backup{from}: {flag} follows it"
            ));
        }
    }
    if !notes.is_empty() {
        let how = match want {
            TargetTimeline::Latest => "the newest, --target-timeline latest".to_string(),
            TargetTimeline::Current => "the backup's own, --target-timeline current".to_string(),
            TargetTimeline::Exact(t) => format!("--target-timeline {}", t.0),
        };
        notes.insert(
            0,
            format!(
                "more than one timeline continues from backup {}: recovery follows timeline {} ({how})",
                backup.backup_id, chosen.0
            ),
        );
    }
    notes
}

fn gap_error(missing: &str, backup_id: &str, target_us: i64) -> RestoreError {
    RestoreError::Refused(format!(
        "the archive has a gap: WAL segment {missing} is missing between backup {backup_id} and {}; \
         recovery would stop there. Restore it to the archive, or choose an --until before the gap",
        fmt_time(target_us)
    ))
}

/// Recovery to a time stops at the first transaction that ended after it; without one in the
/// archive PostgreSQL fails at the end of the WAL. Read the candidate segments until one holds
/// such a transaction, and return its name.
pub async fn confirm_target_reachable(
    storage: &dyn storage::Storage,
    system_identifier: u64,
    plan: &PitrPlan,
    target: jiff::Timestamp,
) -> Result<String, RestoreError> {
    let target_us = target.as_microsecond();
    let mut newest = None;
    for name in &plan.candidates {
        let parsed: storage::wal::WalFileName = name.parse().map_err(RestoreError::Refused)?;
        let plain = crate::wal_file::read_archived(storage, system_identifier, &parsed).await?;
        let latest =
            tokio::task::spawn_blocking(move || storage::wal::last_transaction_time(&plain))
                .await
                .map_err(RestoreError::task("WAL scan"))?;
        match latest {
            Some(t) if t > target_us => return Ok(name.clone()),
            Some(t) => newest = Some(t),
            None => {}
        }
    }
    if let Some(missing) = &plan.gap_after {
        return Err(gap_error(missing, &plan.backup.backup_id, target_us));
    }
    Err(RestoreError::Refused(format!(
        "{} is past the end of the archive: {}. Recovery would fail there. Wait for the next \
         segment to be archived (archive_timeout), or run SELECT pg_switch_wal() on the primary, \
         or choose an earlier --until",
        fmt_time(target_us),
        match newest {
            Some(t) => format!(
                "the last transaction in the archived WAL ended at {}",
                fmt_time(t)
            ),
            None => "no transaction ended after it in the archived WAL".to_string(),
        }
    )))
}

fn fmt_time(us: i64) -> String {
    jiff::Timestamp::from_microsecond(us).map_or_else(
        |_| us.to_string(),
        |t| t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

/// When timeline `t` came into being: when its history file was archived (a timeline without
/// one, the first, always existed).
fn created_at(wal: &[WalRecord], t: u32) -> Option<i64> {
    wal.iter()
        .filter(|w| w.kind == "history" && w.timeline == t)
        .map(|w| w.archived_at_us)
        .min()
}

/// Choose the newest base backup that ended before `target` on the timeline path `timeline`
/// selects, and check the WAL along that path can reach the target.
///
/// `latest` follows the newest timeline that some backup before the target can reach (as
/// PostgreSQL's default picks the newest timeline), `current` the newest backup's own timeline,
/// and `N` timeline N from the newest backup whose timeline it leaves after the backup ended.
pub fn plan_pitr(
    backups: &[BackupRecord],
    wal: &[WalRecord],
    histories: &BTreeMap<u32, Vec<TimelineSwitch>>,
    target: jiff::Timestamp,
    segment_size: u64,
    timeline: TargetTimeline,
) -> Result<PitrPlan, RestoreError> {
    let target_us = target.as_microsecond();
    let index = ArchiveIndex::new(wal);
    let mut bases: Vec<&BackupRecord> = backups
        .iter()
        .filter(|b| b.kind == BackupKind::Base)
        .collect();
    bases.sort_by_key(|b| b.finished_at_us);
    // Newest first.
    let before: Vec<&BackupRecord> = bases
        .iter()
        .rev()
        .filter(|b| b.finished_at_us < target_us)
        .copied()
        .collect();
    let known = known_timelines(&index, histories, &bases);
    let Some(newest_backup) = before.first().copied() else {
        let oldest = bases.first().map(|b| fmt_time(b.finished_at_us));
        return Err(RestoreError::Refused(match oldest {
            Some(t) => format!(
                "no base backup ended before {}: the oldest ended at {t}; choose a later --until",
                fmt_time(target_us)
            ),
            None => "there are no base backups: run `lifeline backup postgres` first".to_string(),
        }));
    };
    let reaching = |t: u32| {
        before
            .iter()
            .copied()
            .find(|b| followable(reach(b, t, histories)))
    };
    let (backup, chosen) = match timeline {
        TargetTimeline::Current => (newest_backup, newest_backup.timeline),
        // A timeline created after the target (its history file archived later) did not
        // exist then: following it would replay the parent only to the branch point, and the
        // parent's history between the branch point and the target would be lost.
        TargetTimeline::Latest => known
            .iter()
            .rev()
            .filter(|t| created_at(wal, **t).is_none_or(|at| at <= target_us))
            .find_map(|t| reaching(*t).map(|b| (b, *t)))
            .unwrap_or((newest_backup, newest_backup.timeline)),
        TargetTimeline::Exact(t) => match reaching(t.0) {
            Some(b) => (b, t.0),
            None => {
                return Err(RestoreError::Refused(format!(
                    "no base backup that ended before {} can follow timeline {}; the newest: {}",
                    fmt_time(target_us),
                    t.0,
                    cannot_follow(newest_backup, t.0, &known, histories)
                )));
            }
        },
    };
    let chosen = TimelineId(chosen);
    let notes = branch_notes(
        backup,
        chosen,
        timeline,
        &known,
        histories,
        &index,
        segment_size,
    );

    let path = timeline_path(chosen, histories, segment_size);
    let last = index.newest_on(&path);
    let last_number = last.map_or(0, |s| s.number);
    let start = Lsn(backup.start_lsn).segment_number(segment_size);
    let mut candidates = Vec::new();
    let mut gap_after = None;
    for segment in chain(&path, start, last_number.max(start)) {
        let name = segment.file_name(segment_size);
        let Some(at) = index.archived_at(segment) else {
            if segment.number < last_number {
                if candidates.is_empty() {
                    return Err(gap_error(&name, &backup.backup_id, target_us));
                }
                gap_after = Some(name);
            }
            break;
        };
        // A segment archived before the target holds nothing written after it.
        if at >= target_us || !candidates.is_empty() {
            candidates.push(name);
        }
    }
    if !candidates.is_empty() {
        return Ok(PitrPlan {
            backup: backup.clone(),
            timeline: chosen,
            candidates,
            gap_after,
            notes,
        });
    }
    Err(RestoreError::Refused(match last {
        Some(s) => format!(
            "{} is past the end of the archive: the newest WAL on timeline {} ({}) was archived \
             at {}. Wait for the next segment to be archived (archive_timeout), or run SELECT \
             pg_switch_wal() on the primary, or choose an earlier --until",
            fmt_time(target_us),
            chosen.0,
            s.file_name(segment_size),
            fmt_time(index.archived_at(s).unwrap_or_default())
        ),
        None => {
            "no WAL has been archived: set archive_command = 'lifeline wal push %p'".to_string()
        }
    }))
}

/// For `--until latest`: the WAL from `backup`'s start along the timeline path `timeline`
/// selects must be unbroken up to the newest segment archived on that path (and at least
/// through the backup's own end); a gap is refused, naming the missing segment and the last
/// point recovery could reach.
pub fn plan_end_of_archive(
    backup: &BackupRecord,
    wal: &[WalRecord],
    histories: &BTreeMap<u32, Vec<TimelineSwitch>>,
    segment_size: u64,
    timeline: TargetTimeline,
) -> Result<PitrPlan, RestoreError> {
    let index = ArchiveIndex::new(wal);
    let known = known_timelines(&index, histories, &[backup]);
    let chosen = choose_timeline(backup, timeline, &known, histories)?;
    let path = timeline_path(chosen, histories, segment_size);
    let start = Lsn(backup.start_lsn).segment_number(segment_size);
    let stop = storage::wal::last_segment_number(
        Lsn(backup.start_lsn),
        Lsn(backup.stop_lsn),
        segment_size,
    );
    let newest = index.newest_on(&path);
    let end = newest.map_or(stop, |s| s.number.max(stop));
    let mut last_present: Option<Segment> = None;
    for segment in chain(&path, start, end) {
        if index.has(segment) {
            last_present = Some(segment);
            continue;
        }
        let name = segment.file_name(segment_size);
        if segment.number <= stop {
            return Err(RestoreError::Refused(format!(
                "backup {} cannot be made consistent: WAL segment {name}, between the backup's \
                 start ({}) and end ({}), is not in the archive. Put it back into the archive, \
                 or choose another backup with --from",
                backup.backup_id,
                Lsn(backup.start_lsn),
                Lsn(backup.stop_lsn)
            )));
        }
        let run = chain(&path, segment.number, end)
            .take_while(|s| !index.has(*s))
            .count();
        let more = match run {
            0 | 1 => String::new(),
            n => format!(" (and the {} after it)", n - 1),
        };
        let reached = last_present.map_or_else(String::new, |s| {
            format!(
                " at the end of {} ({})",
                s.file_name(segment_size),
                Lsn((s.number + 1) * segment_size),
            )
        });
        let before =
            last_present
                .and_then(|s| index.archived_at(s))
                .map_or_else(String::new, |at| {
                    format!(
                        " (no later than {}, when the last segment before it was archived)",
                        fmt_time(at)
                    )
                });
        return Err(RestoreError::Refused(format!(
            "the archive has a gap on timeline {}: WAL segment {name}{more} is missing, so \
             recovery from backup {} would stop{reached} and promote without the {} newer \
             segment(s) archived up to {}. Put the missing segment back into the archive, or \
             restore to a time before the gap{before} with --type pitr --until \"YYYY-MM-DD HH:MM:SS\"",
            segment.timeline.0,
            backup.backup_id,
            end.saturating_sub(segment.number + run as u64 - 1),
            newest.map_or_else(String::new, |s| s.file_name(segment_size)),
        )));
    }
    Ok(PitrPlan {
        backup: backup.clone(),
        timeline: chosen,
        candidates: Vec::new(),
        gap_after: None,
        notes: branch_notes(
            backup,
            chosen,
            timeline,
            &known,
            histories,
            &index,
            segment_size,
        ),
    })
}

/// The WAL records of cluster `system_identifier` in a repository listing.
pub fn wal_records(
    listing: &[storage::ObjectMeta],
    system_identifier: u64,
    segment_size: u64,
) -> Vec<WalRecord> {
    listing
        .iter()
        .filter_map(|meta| {
            let (sysid, name) = storage::layout::parse_wal_key(&meta.key)?;
            (sysid == system_identifier)
                .then(|| WalRecord::from_listing(sysid, &name, meta, None, segment_size))
        })
        .collect()
}

/// The WAL the repository holds for a cluster, listed from the repository itself: the catalog
/// may be stale, and an object lost from the repository is a gap recovery would stop at.
pub async fn archived_wal(
    storage: &dyn storage::Storage,
    system_identifier: u64,
    segment_size: u64,
) -> Result<Vec<WalRecord>, RestoreError> {
    let listing = storage
        .list(&storage::layout::wal_prefix(system_identifier))
        .await?;
    Ok(wal_records(&listing, system_identifier, segment_size))
}

/// Read and parse every archived `.history` file of a cluster, by timeline.
pub async fn timeline_histories(
    storage: &dyn storage::Storage,
    system_identifier: u64,
    wal: &[WalRecord],
) -> Result<BTreeMap<u32, Vec<TimelineSwitch>>, RestoreError> {
    let mut out = BTreeMap::new();
    for w in wal.iter().filter(|w| w.kind == "history") {
        let name: storage::wal::WalFileName = w.name.parse().map_err(RestoreError::Refused)?;
        let plain = crate::wal_file::read_archived(storage, system_identifier, &name).await?;
        let text = String::from_utf8_lossy(&plain);
        let switches = storage::wal::parse_history(&text).map_err(|e| {
            let key = storage::layout::wal_key(system_identifier, &name);
            RestoreError::Refused(format!("{key}: {e}"))
        })?;
        out.insert(w.timeline, switches);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    fn wal(tli: u32, number: u64, at: i64) -> WalRecord {
        WalRecord {
            system_identifier: 1,
            name: Segment {
                timeline: TimelineId(tli),
                number,
            }
            .file_name(SEG),
            kind: "segment".into(),
            timeline: tli,
            segment_number: Some(number),
            size_bytes: SEG,
            stored_bytes: 1,
            checksum: String::new(),
            archived_at_us: at,
        }
    }

    fn backup(id: &str, tli: u32, start_seg: u64, finished: i64) -> BackupRecord {
        let lsns = (start_seg * SEG + 40, start_seg * SEG + 400);
        crate::test_support::complete_backup(id, tli, lsns, (finished - 5, finished))
    }

    fn ts(us: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_microsecond(us).expect("timestamp")
    }

    #[test]
    fn a_backup_that_stops_on_a_segment_boundary_needs_only_the_segment_ending_there() {
        let b = crate::test_support::complete_backup("a", 1, (2 * SEG + 40, 4 * SEG), (0, 10));
        let wals: Vec<_> = (2..=3).map(|n| wal(1, n, n as i64 * 100)).collect();
        let plan = plan_end_of_archive(&b, &wals, &BTreeMap::new(), SEG, TargetTimeline::Latest);
        assert!(plan.is_ok(), "{:?}", plan.err());
        let err = plan_end_of_archive(
            &b,
            &wals[..1],
            &BTreeMap::new(),
            SEG,
            TargetTimeline::Latest,
        )
        .expect_err("segment 3 is missing");
        assert!(
            err.to_string().contains("cannot be made consistent"),
            "{err}"
        );
    }

    #[test]
    fn picks_the_newest_backup_before_the_target() {
        let backups = vec![backup("a", 1, 2, 100), backup("b", 1, 4, 300)];
        let wal: Vec<_> = (2..=7).map(|n| wal(1, n, n as i64 * 100)).collect();
        let plan_at = |at| {
            plan_pitr(
                &backups,
                &wal,
                &BTreeMap::new(),
                ts(at),
                SEG,
                TargetTimeline::Latest,
            )
        };
        let plan = plan_at(250).expect("plan");
        assert_eq!(plan.backup.backup_id, "a");
        let plan = plan_at(550).expect("plan");
        assert_eq!(plan.backup.backup_id, "b");
        assert_eq!(
            plan.candidates[0],
            Segment {
                timeline: TimelineId(1),
                number: 6
            }
            .file_name(SEG)
        );
    }

    #[test]
    fn refuses_gaps_targets_past_the_end_and_targets_before_any_backup() {
        let backups = vec![backup("a", 1, 2, 100)];
        let mut wals: Vec<_> = (2..=7).map(|n| wal(1, n, n as i64 * 100)).collect();
        let plan = |wals: &[WalRecord], at| {
            plan_pitr(
                &backups,
                wals,
                &BTreeMap::new(),
                ts(at),
                SEG,
                TargetTimeline::Latest,
            )
        };
        let err = plan(&wals, 50).expect_err("before");
        assert!(
            err.to_string().contains("no base backup ended before"),
            "{err}"
        );
        let err = plan(&wals, 900).expect_err("past");
        assert!(
            err.to_string().contains("past the end of the archive"),
            "{err}"
        );
        wals.remove(2);
        let err = plan(&wals, 650).expect_err("gap");
        assert!(
            err.to_string().contains("gap") && err.to_string().contains("000000010000000000000004"),
            "{err}"
        );
    }

    #[test]
    fn follows_the_newest_timeline_across_a_switch() {
        // Timeline 2 branched from 1 inside segment 5.
        let histories = BTreeMap::from([(
            2,
            vec![TimelineSwitch {
                parent: TimelineId(1),
                switch_point: Lsn(5 * SEG + 100),
            }],
        )]);
        let backups = vec![backup("a", 1, 2, 100)];
        let mut wals: Vec<_> = (2..=4).map(|n| wal(1, n, n as i64 * 100)).collect();
        wals.extend((5..=8).map(|n| wal(2, n, n as i64 * 100)));
        let plan_at = |wals: &[WalRecord], at| {
            plan_pitr(
                &backups,
                wals,
                &histories,
                ts(at),
                SEG,
                TargetTimeline::Latest,
            )
        };
        let plan = plan_at(&wals, 650).expect("plan");
        assert_eq!(plan.timeline, TimelineId(2));
        assert_eq!(
            plan.candidates[0],
            Segment {
                timeline: TimelineId(2),
                number: 7
            }
            .file_name(SEG)
        );
        // Segment 5 on timeline 1 is not needed; on timeline 2 it is.
        wals.retain(|w| !(w.timeline == 2 && w.segment_number == Some(6)));
        assert!(plan_at(&wals, 750).is_err());
    }

    fn with_kind(mut w: WalRecord, kind: &str, name: String) -> WalRecord {
        w.kind = kind.into();
        w.name = name;
        w
    }

    fn partial(tli: u32, number: u64) -> WalRecord {
        let w = wal(tli, number, 0);
        let name = format!("{}.partial", w.name);
        with_kind(w, "partial", name)
    }

    fn history(tli: u32) -> WalRecord {
        let mut w = with_kind(wal(tli, 0, 0), "history", format!("{tli:08X}.history"));
        w.segment_number = None;
        w
    }

    fn name(tli: u32, number: u64) -> String {
        Segment {
            timeline: TimelineId(tli),
            number,
        }
        .file_name(SEG)
    }

    fn switch(parent: u32, lsn: u64) -> TimelineSwitch {
        TimelineSwitch {
            parent: TimelineId(parent),
            switch_point: Lsn(lsn),
        }
    }

    /// Timeline 1 holds segments 0..=10. Timeline 2 left it at 0/5000064 (after backup "b",
    /// which ends in segment 2) and holds 5..=8; timeline 3 left it at 0/1000000, before "b"
    /// ended but after "a" did, and holds 1..=4; timeline 4 left timeline 2 at 0/7000000 and
    /// holds 7..=9.
    fn forked() -> (
        Vec<BackupRecord>,
        Vec<WalRecord>,
        BTreeMap<u32, Vec<TimelineSwitch>>,
    ) {
        let backups = vec![backup("a", 1, 0, 50), backup("b", 1, 2, 250)];
        let mut wals: Vec<_> = (0..=10).map(|n| wal(1, n, n as i64 * 100)).collect();
        wals.extend((5..=8).map(|n| wal(2, n, 1000 + n as i64 * 100)));
        wals.extend((1..=4).map(|n| wal(3, n, 2000 + n as i64 * 100)));
        wals.extend((7..=9).map(|n| wal(4, n, 3000 + n as i64 * 100)));
        wals.extend((2..=4).map(history));
        let histories = BTreeMap::from([
            (2, vec![switch(1, 5 * SEG + 100)]),
            (3, vec![switch(1, SEG)]),
            (4, vec![switch(1, 5 * SEG + 100), switch(2, 7 * SEG)]),
        ]);
        (backups, wals, histories)
    }

    #[test]
    fn chooses_the_timeline_latest_current_or_a_number() {
        let (backups, wals, histories) = forked();
        let b = &backups[1];
        let plan = |t| plan_end_of_archive(b, &wals, &histories, SEG, t);
        assert_eq!(
            plan(TargetTimeline::Latest).expect("latest").timeline,
            TimelineId(4),
            "latest is the newest timeline that descends from the backup's after it"
        );
        assert_eq!(
            plan(TargetTimeline::Current).expect("current").timeline,
            TimelineId(1)
        );
        assert_eq!(
            plan(TargetTimeline::Exact(TimelineId(2)))
                .expect("2")
                .timeline,
            TimelineId(2)
        );

        // Timeline 3 branched off before the backup ended: refused, naming what can be followed.
        let err = plan(TargetTimeline::Exact(TimelineId(3))).expect_err("3");
        let text = err.to_string();
        assert!(
            text.contains("timeline 3 branched off timeline 1 at 0/1000000")
                && text.contains("before the backup ended")
                && text.contains("can follow timeline 1, 2, 4"),
            "{text}"
        );
        let err = plan(TargetTimeline::Exact(TimelineId(9))).expect_err("9");
        assert!(
            err.to_string().contains("holds nothing of timeline 9"),
            "{err}"
        );

        // From backup "a", which ended before timeline 3 branched off, it can be followed.
        let a = &backups[0];
        let plan = plan_end_of_archive(
            a,
            &wals,
            &histories,
            SEG,
            TargetTimeline::Exact(TimelineId(3)),
        )
        .expect("3 from a");
        assert_eq!(plan.timeline, TimelineId(3));
    }

    #[test]
    fn a_time_target_takes_the_newest_backup_on_the_chosen_path() {
        let (backups, wals, histories) = forked();
        let plan = |at, t| plan_pitr(&backups, &wals, &histories, ts(at), SEG, t);
        let latest = plan(3850, TargetTimeline::Latest).expect("latest");
        assert_eq!(
            (latest.backup.backup_id.as_str(), latest.timeline),
            ("b", TimelineId(4))
        );
        assert_eq!(latest.candidates[0], name(4, 9));
        // Only "a" ended before timeline 3 branched off.
        let three = plan(2250, TargetTimeline::Exact(TimelineId(3))).expect("3");
        assert_eq!(
            (three.backup.backup_id.as_str(), three.timeline),
            ("a", TimelineId(3))
        );
        assert_eq!(three.candidates, vec![name(3, 3), name(3, 4)]);
        let current = plan(850, TargetTimeline::Current).expect("current");
        assert_eq!(
            (current.backup.backup_id.as_str(), current.timeline),
            ("b", TimelineId(1))
        );
        // Before "a" ended nothing can be followed; a timeline no backup reaches is refused.
        let mut only_b = backups.clone();
        only_b.remove(0);
        let err = plan_pitr(
            &only_b,
            &wals,
            &histories,
            ts(3850),
            SEG,
            TargetTimeline::Exact(TimelineId(3)),
        )
        .expect_err("3 from b");
        assert!(
            err.to_string().contains("no base backup that ended before"),
            "{err}"
        );
    }

    #[test]
    fn notes_name_the_other_timelines_and_their_flags() {
        let (backups, wals, histories) = forked();
        let plan = plan_end_of_archive(&backups[1], &wals, &histories, SEG, TargetTimeline::Latest)
            .expect("latest");
        let notes = plan.notes.join("\n");
        assert!(
            plan.notes[0].contains("recovery follows timeline 4 (the newest"),
            "{notes}"
        );
        assert!(
            notes.contains("timeline 1 (the backup's own) also continues after this backup, past 0/5000064 where timeline 2 branched off it: --target-timeline 1 (or current) follows it"),
            "{notes}"
        );
        assert!(
            notes.contains("timeline 2 also continues after this backup, past 0/7000000 where timeline 4 branched off it: --target-timeline 2 follows it"),
            "{notes}"
        );
        assert!(
            !notes.contains("timeline 3"),
            "3 is not followable: {notes}"
        );

        let current =
            plan_end_of_archive(&backups[1], &wals, &histories, SEG, TargetTimeline::Current)
                .expect("current");
        let notes = current.notes.join("\n");
        assert!(
            notes.contains("timeline 2 also branches off after this backup (off timeline 1 at 0/5000064): --target-timeline 2 follows it")
                && notes.contains("--target-timeline 4 (or latest) follows it"),
            "{notes}"
        );

        // An ordinary failover: the old timeline ends where the new one begins (its last
        // segment archived as .partial). One way forward, nothing to say.
        let mut wals: Vec<_> = (2..=4).map(|n| wal(1, n, 0)).collect();
        wals.push(partial(1, 5));
        wals.extend((5..=8).map(|n| wal(2, n, 0)));
        wals.push(history(2));
        let histories = BTreeMap::from([(2, vec![switch(1, 5 * SEG + 100)])]);
        let plan = plan_end_of_archive(&backups[1], &wals, &histories, SEG, TargetTimeline::Latest)
            .expect("failover");
        assert_eq!(plan.timeline, TimelineId(2));
        assert!(plan.notes.is_empty(), "{:?}", plan.notes);
    }

    #[test]
    fn end_of_archive_refuses_a_gap_naming_the_segment_and_the_last_point() {
        let b = backup("b", 1, 2, 250);
        let mut wals: Vec<_> = (2..=10).map(|n| wal(1, n, n as i64 * 100)).collect();
        let end = |w: &[WalRecord]| {
            plan_end_of_archive(&b, w, &BTreeMap::new(), SEG, TargetTimeline::Latest)
        };
        end(&wals).expect("unbroken");
        wals.retain(|w| !matches!(w.segment_number, Some(6 | 7)));
        let text = end(&wals).expect_err("gap").to_string();
        assert!(
            text.contains(&format!(
                "WAL segment {} (and the 1 after it) is missing",
                name(1, 6)
            )) && text.contains(&format!("at the end of {} (0/6000000", name(1, 5)))
                && text.contains("--until"),
            "{text}"
        );
        // The backup's own WAL missing: it could not even be made consistent.
        wals.retain(|w| w.segment_number != Some(2));
        let text = end(&wals).expect_err("own").to_string();
        assert!(
            text.contains("cannot be made consistent") && text.contains(&name(1, 2)),
            "{text}"
        );
        let text = end(&[]).expect_err("nothing").to_string();
        assert!(text.contains("cannot be made consistent"), "{text}");
        // A gap on a timeline the path does not take is no reason to refuse.
        let mut wals: Vec<_> = (2..=10).map(|n| wal(1, n, 0)).collect();
        wals.extend([wal(2, 6, 0), wal(2, 8, 0), history(2)]);
        let histories = BTreeMap::from([(2, vec![switch(1, 6 * SEG)])]);
        plan_end_of_archive(&b, &wals, &histories, SEG, TargetTimeline::Current)
            .expect("timeline 1 is whole");
        let text = plan_end_of_archive(&b, &wals, &histories, SEG, TargetTimeline::Latest)
            .expect_err("timeline 2 is not")
            .to_string();
        assert!(text.contains(&name(2, 7)), "{text}");
    }

    #[test]
    fn verify_walks_every_timeline_across_switches() {
        // A failover inside segment 4: timeline 1 ends with 4.partial, timeline 2 goes on.
        let mut wals: Vec<_> = (1..=3).map(|n| wal(1, n, 0)).collect();
        wals.push(partial(1, 4));
        wals.extend((4..=9).map(|n| wal(2, n, 0)));
        wals.push(history(2));
        let histories = BTreeMap::from([(2, vec![switch(1, 4 * SEG + 10)])]);
        let kept = |timeline: u32, start: u64| {
            vec![BackupWal {
                timeline,
                start: Lsn(start),
                stop: Lsn(start + 400),
            }]
        };
        let clean = check_wal_chains(&wals, &histories, SEG, &kept(1, SEG + 40));
        assert!(clean.is_clean(), "{clean:?}");

        wals.retain(|w| {
            !(w.timeline == 1 && w.segment_number == Some(2)
                || w.timeline == 2 && matches!(w.segment_number, Some(6 | 7)))
        });
        // Timeline 3 archived segments but its history file is gone.
        wals.extend((12..=13).map(|n| wal(3, n, 0)));
        let report = check_wal_chains(&wals, &histories, SEG, &kept(1, SEG + 40));
        assert_eq!(
            report.gaps,
            vec![
                WalGap {
                    timeline: 1,
                    first_missing: name(1, 2),
                    last_missing: name(1, 2),
                    missing: 1
                },
                WalGap {
                    timeline: 2,
                    first_missing: name(2, 6),
                    last_missing: name(2, 7),
                    missing: 2
                },
            ],
            "segment 2 is shared by both chains and named once"
        );
        assert_eq!(report.missing_histories, vec![3]);
        let problems = report.problems().join("\n");
        assert!(
            problems.contains(&format!(
                "segments {}..{} (2) missing on timeline 2",
                name(2, 6),
                name(2, 7)
            )) && problems.contains("00000003.history is missing"),
            "{problems}"
        );
        // Before the oldest backup nothing is needed.
        let later = check_wal_chains(&wals, &histories, SEG, &kept(2, 8 * SEG));
        assert!(later.gaps.is_empty(), "{later:?}");
        // A backup's own WAL is needed even past the newest segment archived.
        let ahead = check_wal_chains(&wals, &histories, SEG, &kept(2, 14 * SEG));
        assert_eq!(
            ahead
                .gaps
                .iter()
                .map(|g| g.first_missing.as_str())
                .collect::<Vec<_>>(),
            vec![name(2, 14).as_str()],
            "{ahead:?}"
        );
    }

    #[test]
    fn segment_numbers_cross_the_ff_boundary() {
        // With 16 MiB segments the name after ...000000FF is ...0000000100000000.
        let mut wals: Vec<_> = (0xFD..=0x102).map(|n| wal(1, n, 0)).collect();
        wals.retain(|w| !matches!(w.segment_number, Some(0xFF | 0x100)));
        let kept = [BackupWal {
            timeline: 1,
            start: Lsn(0xFD * SEG),
            stop: Lsn(0xFD * SEG + 400),
        }];
        let report = check_wal_chains(&wals, &BTreeMap::new(), SEG, &kept);
        assert_eq!(report.gaps.len(), 1, "{report:?}");
        assert_eq!(
            report.gaps[0].to_string(),
            "segments 0000000100000000000000FF..000000010000000100000000 (2) missing on timeline 1"
        );
        let b = backup("b", 1, 0xFD, 100);
        let text = plan_end_of_archive(&b, &wals, &BTreeMap::new(), SEG, TargetTimeline::Latest)
            .expect_err("gap")
            .to_string();
        assert!(
            text.contains("0000000100000000000000FF (and the 1 after it)")
                && text.contains("end of 0000000100000000000000FE (0/FF000000"),
            "{text}"
        );
    }

    /// Production stays on timeline 1 (backups "a" and "b", WAL archived up to time 1000). Long
    /// after, a copy restored from the older backup "a" with `--archive-mode preserve` promoted
    /// onto timeline 2, branching off at 0/3000064, and archived segments 3..5 at times 2300..2500.
    ///
    /// `restore --type pitr --until 950` (timeline latest, the default) must give production's
    /// rows at 950. The plan instead skips the newer backup "b", takes "a" and follows timeline 2:
    /// recovery replays timeline 1 to 0/3000064 (time ~300), then stops at timeline 2's first
    /// commit (after 2300 > 950) and promotes: production's writes from 300 to 950 are gone, with
    /// exit 0. Timeline 1 carries WAL past the switch point archived before the target, so at 950
    /// timeline 2 did not exist yet; the plan can see that.
    #[test]
    fn a_time_target_never_follows_a_timeline_created_after_it() {
        let backups = vec![backup("a", 1, 2, 250), backup("b", 1, 6, 650)];
        let mut wals: Vec<_> = (2..=10).map(|n| wal(1, n, n as i64 * 100)).collect();
        wals.extend((3..=5).map(|n| wal(2, n, 2000 + n as i64 * 100)));
        let mut history = wal(2, 0, 2000);
        history.kind = "history".into();
        history.name = "00000002.history".into();
        history.segment_number = None;
        wals.push(history);
        let histories = BTreeMap::from([(
            2,
            vec![TimelineSwitch {
                parent: TimelineId(1),
                switch_point: Lsn(3 * SEG + 100),
            }],
        )]);
        let target = ts(950);
        let plan = plan_pitr(
            &backups,
            &wals,
            &histories,
            target,
            SEG,
            TargetTimeline::Latest,
        )
        .expect("plan");
        assert_eq!(
            (plan.backup.backup_id.as_str(), plan.timeline.0),
            ("b", 1),
            "--until 950 follows a timeline created at 2300; notes: {:?}",
            plan.notes
        );
    }
}
