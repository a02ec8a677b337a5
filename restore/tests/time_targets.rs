//! Timeline planning for a time target on the default timeline (latest): a timeline created
//! after the target is never followed.

use std::collections::BTreeMap;

use catalog::{BackupRecord, BackupState, WalRecord};
use restore::{TargetTimeline, plan_pitr};
use storage::wal::{Lsn, Segment, TimelineId, TimelineSwitch};

const SEG: u64 = 16 << 20;

fn backup(id: &str, start_seg: u64, finished: i64) -> BackupRecord {
    BackupRecord {
        backup_id: id.into(),
        service: "postgresql".into(),
        kind: "base".into(),
        system_identifier: 1,
        timeline: 1,
        start_lsn: start_seg * SEG + 40,
        stop_lsn: start_seg * SEG + 400,
        start_wal: String::new(),
        stop_wal: String::new(),
        started_at_us: finished - 5,
        finished_at_us: finished,
        size_bytes: 0,
        new_bytes: 0,
        file_count: 0,
        state: BackupState::Complete,
        retention: "7_days".into(),
        restorability: "UNVERIFIED".into(),
    }
}

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
    let backups = vec![backup("a", 2, 250), backup("b", 6, 650)];
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
    let target = jiff::Timestamp::from_microsecond(950).expect("time");
    let plan = plan_pitr(
        &backups,
        &wals,
        &histories,
        target,
        SEG,
        TargetTimeline::Latest,
    );
    match plan {
        Err(refused) => assert!(
            refused.to_string().contains("--target-timeline"),
            "{refused}"
        ),
        Ok(plan) => assert_eq!(
            (plan.backup.backup_id.as_str(), plan.timeline.0),
            ("b", 1),
            "--until 950 follows a timeline created at 2300; notes: {:?}",
            plan.notes
        ),
    }
}
