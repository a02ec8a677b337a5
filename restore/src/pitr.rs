//! Point-in-time recovery planning: pick the backup and prove the archive reaches the target.
//!
//! PostgreSQL follows the newest timeline (`recovery_target_timeline = 'latest'`): for each
//! segment number it reads the segment of the newest timeline on the path whose branch point is
//! at or before that segment. The plan walks the same path and demands every segment from the
//! backup's start to the first one archived after the target; a missing one is a gap, and no
//! segment archived after the target means the target lies past the end of the archive.

use std::collections::{BTreeMap, HashSet};

use catalog::{BackupRecord, BackupState, WalRecord};
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
#[derive(Debug, Clone, Copy)]
struct PathStep {
    timeline: TimelineId,
    begin: u64,
    /// Where the next timeline branched off (None: the newest timeline).
    end: Option<Lsn>,
}

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
    use storage::StorageExt;
    let target_us = target.as_microsecond();
    let mut newest = None;
    for name in &plan.candidates {
        let parsed: storage::wal::WalFileName = name.parse().map_err(RestoreError::Refused)?;
        let key = storage::layout::wal_key(system_identifier, &parsed);
        let bytes = storage.get_bytes(&key).await?;
        let latest = tokio::task::spawn_blocking(move || {
            storage::object::decode(&key, &bytes)
                .map(|plain| storage::wal::last_transaction_time(&plain))
        })
        .await
        .map_err(|e| RestoreError::Refused(format!("WAL scan failed: {e}")))??;
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

/// Choose the newest base backup that ended before `target` and check the WAL can reach it.
pub fn plan_pitr(
    backups: &[BackupRecord],
    wal: &[WalRecord],
    histories: &BTreeMap<u32, Vec<TimelineSwitch>>,
    target: jiff::Timestamp,
    segment_size: u64,
    _timeline: TargetTimeline,
) -> Result<PitrPlan, RestoreError> {
    let target_us = target.as_microsecond();
    // The newest timeline, as PostgreSQL's 'latest' would pick.
    let newest = wal
        .iter()
        .map(|w| w.timeline)
        .chain(histories.keys().copied())
        .max()
        .unwrap_or(1);
    let path = timeline_path(TimelineId(newest), histories, segment_size);
    let on_path = |b: &BackupRecord| {
        path.iter()
            .any(|s| s.timeline.0 == b.timeline && s.end.is_none_or(|end| b.stop_lsn <= end.0))
    };
    let candidates: Vec<&BackupRecord> = backups
        .iter()
        .filter(|b| {
            b.state == BackupState::Complete && b.kind == "base" && b.service == "postgresql"
        })
        .collect();
    let Some(backup) = candidates
        .iter()
        .rfind(|b| b.finished_at_us < target_us && on_path(b))
    else {
        let oldest = candidates.first().map(|b| fmt_time(b.finished_at_us));
        return Err(RestoreError::Refused(match oldest {
            Some(t) => format!(
                "no base backup ended before {}: the oldest ended at {t}; choose a later --until",
                fmt_time(target_us)
            ),
            None => "there are no base backups: run `lifeline backup postgres` first".to_string(),
        }));
    };

    let archived: HashSet<(u32, u64)> = wal
        .iter()
        .filter(|w| w.kind == "segment")
        .filter_map(|w| w.segment_number.map(|n| (w.timeline, n)))
        .collect();
    let archived_at: BTreeMap<(u32, u64), i64> = wal
        .iter()
        .filter(|w| w.kind == "segment")
        .filter_map(|w| {
            w.segment_number
                .map(|n| ((w.timeline, n), w.archived_at_us))
        })
        .collect();
    let last_number = archived.iter().map(|(_, n)| *n).max().unwrap_or(0);
    let start = Lsn(backup.start_lsn).segment_number(segment_size);
    let mut candidates = Vec::new();
    let mut gap_after = None;
    for number in start..=last_number.max(start) {
        let step = path
            .iter()
            .rev()
            .find(|s| s.begin <= number)
            .copied()
            .unwrap_or(path[0]);
        let name = Segment {
            timeline: step.timeline,
            number,
        }
        .file_name(segment_size);
        if !archived.contains(&(step.timeline.0, number)) {
            if number < last_number {
                if candidates.is_empty() {
                    return Err(gap_error(&name, &backup.backup_id, target_us));
                }
                gap_after = Some(name);
            }
            break;
        }
        let at = archived_at
            .get(&(step.timeline.0, number))
            .copied()
            .unwrap_or(0);
        // A segment archived before the target holds nothing written after it.
        if at >= target_us || !candidates.is_empty() {
            candidates.push(name);
        }
    }
    if !candidates.is_empty() {
        return Ok(PitrPlan {
            backup: (*backup).clone(),
            timeline: TimelineId(newest),
            candidates,
            gap_after,
            notes: Vec::new(),
        });
    }
    let last = wal
        .iter()
        .filter(|w| w.kind == "segment")
        .max_by_key(|w| w.archived_at_us);
    Err(RestoreError::Refused(match last {
        Some(w) => format!(
            "{} is past the end of the archive: the newest WAL ({}) was archived at {}. Wait for the \
             next segment to be archived (archive_timeout), or run SELECT pg_switch_wal() on the primary, \
             or choose an earlier --until",
            fmt_time(target_us),
            w.name,
            fmt_time(w.archived_at_us)
        ),
        None => {
            "no WAL has been archived: set archive_command = 'lifeline wal push %p'".to_string()
        }
    }))
}

/// For `--until latest`: the WAL from `backup`'s start along the chosen timeline path must be
/// unbroken up to the newest segment archived on that path; a gap is refused, naming the last
/// point recovery could reach. (Not yet checked: to be filled in.)
pub fn plan_end_of_archive(
    backup: &BackupRecord,
    _wal: &[WalRecord],
    _histories: &BTreeMap<u32, Vec<TimelineSwitch>>,
    _segment_size: u64,
    _timeline: TargetTimeline,
) -> Result<PitrPlan, RestoreError> {
    Ok(PitrPlan {
        backup: backup.clone(),
        timeline: TimelineId(backup.timeline),
        candidates: Vec::new(),
        gap_after: None,
        notes: Vec::new(),
    })
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
    Ok(listing
        .iter()
        .filter_map(|meta| {
            let (sysid, name) = storage::layout::parse_wal_key(&meta.key)?;
            (sysid == system_identifier)
                .then(|| WalRecord::from_listing(sysid, &name, meta, None, segment_size))
        })
        .collect())
}

/// Read and parse every archived `.history` file of a cluster, by timeline.
pub async fn timeline_histories(
    storage: &dyn storage::Storage,
    system_identifier: u64,
    wal: &[WalRecord],
) -> Result<BTreeMap<u32, Vec<TimelineSwitch>>, RestoreError> {
    use storage::StorageExt;
    let mut out = BTreeMap::new();
    for w in wal.iter().filter(|w| w.kind == "history") {
        let name: storage::wal::WalFileName = w.name.parse().map_err(RestoreError::Refused)?;
        let key = storage::layout::wal_key(system_identifier, &name);
        let plain = storage::object::decode(&key, &storage.get_bytes(&key).await?)?;
        let text = String::from_utf8_lossy(&plain);
        let switches = storage::wal::parse_history(&text)
            .map_err(|e| RestoreError::Refused(format!("{key}: {e}")))?;
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
    fn picks_the_newest_backup_before_the_target() {
        let backups = vec![backup("a", 1, 2, 100), backup("b", 1, 4, 300)];
        let wal: Vec<_> = (2..=7).map(|n| wal(1, n, n as i64 * 100)).collect();
        let plan = plan_pitr(
            &backups,
            &wal,
            &BTreeMap::new(),
            ts(250),
            SEG,
            TargetTimeline::Latest,
        )
        .expect("plan");
        assert_eq!(plan.backup.backup_id, "a");
        let plan = plan_pitr(
            &backups,
            &wal,
            &BTreeMap::new(),
            ts(550),
            SEG,
            TargetTimeline::Latest,
        )
        .expect("plan");
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
        let err = plan_pitr(
            &backups,
            &wals,
            &BTreeMap::new(),
            ts(50),
            SEG,
            TargetTimeline::Latest,
        )
        .expect_err("before");
        assert!(
            err.to_string().contains("no base backup ended before"),
            "{err}"
        );
        let err = plan_pitr(
            &backups,
            &wals,
            &BTreeMap::new(),
            ts(900),
            SEG,
            TargetTimeline::Latest,
        )
        .expect_err("past");
        assert!(
            err.to_string().contains("past the end of the archive"),
            "{err}"
        );
        wals.remove(2);
        let err = plan_pitr(
            &backups,
            &wals,
            &BTreeMap::new(),
            ts(650),
            SEG,
            TargetTimeline::Latest,
        )
        .expect_err("gap");
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
        let plan = plan_pitr(
            &backups,
            &wals,
            &histories,
            ts(650),
            SEG,
            TargetTimeline::Latest,
        )
        .expect("plan");
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
        assert!(
            plan_pitr(
                &backups,
                &wals,
                &histories,
                ts(750),
                SEG,
                TargetTimeline::Latest
            )
            .is_err()
        );
    }
}
