//! The retention policy as a pure function: which backups to keep, why, and which WAL the kept
//! ones (and the point-in-time window) need. Prune acts on this plan; nothing here deletes.
//!
//! Backups are grouped by service and kind and ordered by their recorded finish time and stop
//! LSN, never by name (tools have deleted their newest backups by sorting names). Within the
//! last `daily` days, `weekly` ISO weeks and `monthly` months (in the operator's time zone), the
//! newest backup of each day, week and month is kept. The newest backup of every group is always
//! kept, and so is every backup a restore is using.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use jiff::civil::Date;
use jiff::tz::TimeZone;

use storage::{BackupKind, Service};

use crate::{BackupRecord, RetentionClass};

const DAY_US: i64 = 86_400_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionPolicy {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    /// Days of WAL kept for point-in-time restores.
    pub wal_days: u32,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        RetentionPolicy {
            daily: 7,
            weekly: 4,
            monthly: 12,
            wal_days: 7,
        }
    }
}

impl RetentionPolicy {
    /// Operation logs and drill reports last modified before this are removed by prune: they
    /// describe backups, restores and drills, and none is needed past the longest window the
    /// policy keeps anything for (the monthly backups, by default a year). Never less than a
    /// day, so that a policy of zeros cannot remove the running prune's own log; a window
    /// beyond the calendar keeps everything.
    pub fn log_cutoff(&self, now: jiff::Timestamp, tz: &TimeZone) -> jiff::Timestamp {
        let now = now.to_zoned(tz.clone());
        let windows = [
            jiff::Span::new().try_months(i64::from(self.monthly)),
            jiff::Span::new().try_weeks(i64::from(self.weekly)),
            jiff::Span::new().try_days(i64::from(self.daily)),
            jiff::Span::new().try_days(i64::from(self.wal_days)),
            jiff::Span::new().try_days(1),
        ];
        windows
            .into_iter()
            .map(|span| {
                span.and_then(|span| now.checked_sub(span))
                    .map_or(jiff::Timestamp::MIN, |z| z.timestamp())
            })
            .min()
            .unwrap_or(jiff::Timestamp::MIN)
    }
}

/// Why a backup is kept.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Daily(Date),
    Weekly {
        year: i16,
        week: i8,
    },
    Monthly {
        year: i16,
        month: i8,
    },
    /// The newest base backup that finished before the PITR window opened: a restore to the
    /// window's first second starts from it. Keeping it costs its changed chunks; without it the
    /// window would need all WAL back to the previous kept backup, days more of it.
    PitrAnchor,
    /// The newest backup of its service and kind.
    Newest,
    /// A restore is reading it.
    InUse,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Daily(date) => write!(f, "daily {date}"),
            Reason::Weekly { year, week } => write!(f, "weekly {year}-W{week:02}"),
            Reason::Monthly { year, month } => write!(f, "monthly {year}-{month:02}"),
            Reason::PitrAnchor => f.write_str("start of the PITR window"),
            Reason::Newest => f.write_str("newest"),
            Reason::InUse => f.write_str("in use by a restore"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub backup_id: String,
    pub service: Service,
    pub kind: BackupKind,
    pub keep: bool,
    pub reasons: Vec<Reason>,
}

impl Decision {
    /// The retention class the catalog and `.metadata` record: the longest that applies.
    pub fn class(&self) -> Option<RetentionClass> {
        let has = |f: fn(&Reason) -> bool| self.reasons.iter().any(f);
        if has(|r| matches!(r, Reason::Monthly { .. })) {
            Some(RetentionClass::Monthly)
        } else if has(|r| matches!(r, Reason::Weekly { .. })) {
            Some(RetentionClass::Weekly)
        } else if self.keep {
            Some(RetentionClass::Daily)
        } else {
            None
        }
    }
}

/// WAL of one cluster that must stay: from `start_lsn` up to `end_lsn` (`None`: up to the
/// newest archived).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WalRange {
    pub system_identifier: u64,
    pub start_lsn: u64,
    pub end_lsn: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPlan {
    /// One decision per backup, in the order given.
    pub decisions: Vec<Decision>,
    pub wal_keep: Vec<WalRange>,
}

/// Decide, for every backup, keep or delete and why; and which WAL must stay.
pub fn plan_retention(
    backups: &[BackupRecord],
    policy: &RetentionPolicy,
    now: jiff::Timestamp,
    tz: &TimeZone,
    in_use: &HashSet<String>,
) -> RetentionPlan {
    let mut reasons: Vec<Vec<Reason>> = vec![Vec::new(); backups.len()];
    let today = now.to_zoned(tz.clone()).date();
    let mut groups: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
    for (i, b) in backups.iter().enumerate() {
        if in_use.contains(&b.backup_id) {
            reasons[i].push(Reason::InUse);
        }
        groups
            .entry((b.service.as_str(), b.kind.as_str()))
            .or_default()
            .push(i);
    }
    for members in groups.values_mut() {
        // Oldest first, by what was recorded; the id only breaks exact ties.
        members.sort_by_key(|&i| {
            let b = &backups[i];
            (b.finished_at_us, b.stop_lsn, b.backup_id.clone())
        });
        let mut newest_of: BTreeMap<Reason, usize> = BTreeMap::new();
        for &i in members.iter() {
            let Some(date) = local_date(backups[i].finished_at_us, tz) else {
                continue;
            };
            for reason in periods(date, today, policy) {
                // Later members overwrite earlier ones: the newest of each period wins.
                newest_of.insert(reason, i);
            }
        }
        for (reason, i) in newest_of {
            reasons[i].push(reason);
        }
        if let Some(&newest) = members.last() {
            reasons[newest].push(Reason::Newest);
        }
        let window_start = now.as_microsecond() - i64::from(policy.wal_days) * DAY_US;
        let anchor = members.iter().rev().find(|&&i| {
            backups[i].kind == BackupKind::Base && backups[i].finished_at_us <= window_start
        });
        if let Some(&i) = anchor {
            reasons[i].push(Reason::PitrAnchor);
        }
    }
    let decisions: Vec<Decision> = backups
        .iter()
        .zip(reasons)
        .map(|(b, mut reasons)| {
            reasons.sort();
            Decision {
                backup_id: b.backup_id.clone(),
                service: b.service,
                kind: b.kind,
                keep: !reasons.is_empty(),
                reasons,
            }
        })
        .collect();
    let wal_keep = wal_to_keep(backups, &decisions, policy, now);
    RetentionPlan {
        decisions,
        wal_keep,
    }
}

fn local_date(us: i64, tz: &TimeZone) -> Option<Date> {
    jiff::Timestamp::from_microsecond(us)
        .ok()
        .map(|t| t.to_zoned(tz.clone()).date())
}

/// The periods of the policy that `date` falls in, counted back from `today`.
fn periods(date: Date, today: Date, policy: &RetentionPolicy) -> Vec<Reason> {
    let mut out = Vec::new();
    if date > today {
        return out;
    }
    let days_back = (today - date).get_days();
    if days_back < i32::try_from(policy.daily).unwrap_or(i32::MAX) {
        out.push(Reason::Daily(date));
    }
    let (week, this_week) = (date.iso_week_date(), today.iso_week_date());
    let monday = |w: jiff::civil::ISOWeekDate| w.first_of_week().ok().map(|m| m.date());
    if let (Some(a), Some(b)) = (monday(week), monday(this_week)) {
        let weeks_back = (b - a).get_days() / 7;
        if weeks_back < i32::try_from(policy.weekly).unwrap_or(i32::MAX) {
            out.push(Reason::Weekly {
                year: week.year(),
                week: week.week(),
            });
        }
    }
    let months_back = (i32::from(today.year()) * 12 + i32::from(today.month()))
        - (i32::from(date.year()) * 12 + i32::from(date.month()));
    if months_back < i32::try_from(policy.monthly).unwrap_or(i32::MAX) {
        out.push(Reason::Monthly {
            year: date.year(),
            month: date.month(),
        });
    }
    out
}

/// Every kept base backup needs its WAL from start to stop; the PITR window needs all WAL from
/// the start of the newest kept base backup that finished before the window opened (or the
/// oldest kept one, if none did) onwards.
fn wal_to_keep(
    backups: &[BackupRecord],
    decisions: &[Decision],
    policy: &RetentionPolicy,
    now: jiff::Timestamp,
) -> Vec<WalRange> {
    let window_start = now.as_microsecond() - i64::from(policy.wal_days) * DAY_US;
    let mut ranges = Vec::new();
    let mut by_cluster: BTreeMap<u64, Vec<&BackupRecord>> = BTreeMap::new();
    for (b, d) in backups.iter().zip(decisions) {
        if d.keep && b.kind == BackupKind::Base {
            // A restore in progress may recover past the backup's end: all WAL after it stays.
            let in_use = d.reasons.contains(&Reason::InUse);
            ranges.push(WalRange {
                system_identifier: b.system_identifier,
                start_lsn: b.start_lsn,
                end_lsn: (!in_use).then_some(b.stop_lsn),
            });
            by_cluster.entry(b.system_identifier).or_default().push(b);
        }
    }
    for (sysid, mut kept) in by_cluster {
        kept.sort_by_key(|b| (b.finished_at_us, b.stop_lsn));
        let anchor = kept
            .iter()
            .rev()
            .find(|b| b.finished_at_us <= window_start)
            .or(kept.first());
        if let Some(anchor) = anchor {
            ranges.push(WalRange {
                system_identifier: sysid,
                start_lsn: anchor.start_lsn,
                end_lsn: None,
            });
        }
    }
    ranges.sort();
    ranges.dedup();
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn utc() -> TimeZone {
        TimeZone::UTC
    }

    #[test]
    fn logs_are_kept_for_the_longest_window() {
        let now: jiff::Timestamp = "2025-06-15T12:00:00Z".parse().expect("now");
        let at = |s: &str| s.parse::<jiff::Timestamp>().expect("time");
        // 12 months by default: a log of two years ago goes, one of eleven months stays.
        let cutoff = RetentionPolicy::default().log_cutoff(now, &utc());
        assert_eq!(cutoff, at("2024-06-15T12:00:00Z"));
        assert!(at("2023-06-15T12:00:00Z") < cutoff);
        assert!(at("2024-07-15T12:00:00Z") > cutoff);
        // The monthly count is the configured one; a longer weekly or WAL window wins.
        let policy = |daily, weekly, monthly, wal_days| RetentionPolicy {
            daily,
            weekly,
            monthly,
            wal_days,
        };
        assert_eq!(
            policy(7, 4, 3, 7).log_cutoff(now, &utc()),
            at("2025-03-15T12:00:00Z")
        );
        assert_eq!(
            policy(7, 52, 3, 7).log_cutoff(now, &utc()),
            at("2024-06-16T12:00:00Z")
        );
        assert_eq!(
            policy(1, 1, 0, 400).log_cutoff(now, &utc()),
            at("2024-05-11T12:00:00Z")
        );
        // Zeros keep a day; a window past the calendar keeps everything.
        assert_eq!(
            policy(0, 0, 0, 0).log_cutoff(now, &utc()),
            at("2025-06-14T12:00:00Z")
        );
        assert_eq!(
            policy(0, 0, u32::MAX, 0).log_cutoff(now, &utc()),
            jiff::Timestamp::MIN
        );
    }

    /// Nightly base backups at 01:00 UTC for `days` days ending the night of `last`.
    fn nightly(last: Date, days: i64) -> Vec<BackupRecord> {
        (0..days)
            .map(|back| {
                let date = last - jiff::Span::new().days(back);
                let at = date
                    .at(1, 0, 0, 0)
                    .to_zoned(utc())
                    .expect("valid")
                    .timestamp()
                    .as_microsecond();
                let n = u64::try_from(days - back).expect("positive");
                BackupRecord {
                    // Names that sort against time: the policy must not care.
                    backup_id: format!("backup_{}", 1_000_000 - n),
                    service: Service::Postgresql,
                    kind: BackupKind::Base,
                    system_identifier: 7,
                    timeline: 1,
                    start_lsn: n * 1000,
                    stop_lsn: n * 1000 + 10,
                    start_wal: String::new(),
                    stop_wal: String::new(),
                    started_at_us: at - 60_000_000,
                    finished_at_us: at,
                    size_bytes: 0,
                    new_bytes: 0,
                    file_count: 0,
                    retention: String::new(),
                    restorability: storage::Restorability::Unverified,
                    server_version: String::new(),
                    source: storage::BackupSource::Primary,
                }
            })
            .collect()
    }

    fn date_of(b: &BackupRecord) -> Date {
        local_date(b.finished_at_us, &utc()).expect("date")
    }

    fn noon(date: Date) -> jiff::Timestamp {
        date.at(12, 0, 0, 0)
            .to_zoned(utc())
            .expect("valid")
            .timestamp()
    }

    /// The survivors computed another way: by walking calendar periods back from today, plus
    /// the newest backup from before the 7-day PITR window.
    fn expected_survivors(
        backups: &[BackupRecord],
        today: Date,
        now: jiff::Timestamp,
    ) -> HashSet<String> {
        let newest_in = |pred: &dyn Fn(Date) -> bool| {
            backups
                .iter()
                .filter(|b| pred(date_of(b)))
                .max_by_key(|b| b.finished_at_us)
                .map(|b| b.backup_id.clone())
        };
        let mut keep = HashSet::new();
        for back in 0..7 {
            let day = today - jiff::Span::new().days(back);
            keep.extend(newest_in(&|d| d == day));
        }
        for back in 0..4 {
            let monday = today
                - jiff::Span::new()
                    .days(i64::from(today.weekday().to_monday_zero_offset()) + 7 * back);
            let sunday = monday + jiff::Span::new().days(6);
            keep.extend(newest_in(&|d| d >= monday && d <= sunday));
        }
        for back in 0..12 {
            let first = today.first_of_month() - jiff::Span::new().months(back);
            keep.extend(newest_in(&|d| {
                d.year() == first.year() && d.month() == first.month()
            }));
        }
        keep.extend(newest_in(&|_| true));
        let window_start = now.as_microsecond() - 7 * DAY_US;
        keep.extend(
            backups
                .iter()
                .filter(|b| b.finished_at_us <= window_start)
                .max_by_key(|b| b.finished_at_us)
                .map(|b| b.backup_id.clone()),
        );
        keep
    }

    #[test]
    fn four_hundred_nights_keep_exactly_the_expected_backups() {
        let today = jiff::civil::date(2025, 12, 27);
        let backups = nightly(today, 400);
        let plan = plan_retention(
            &backups,
            &RetentionPolicy::default(),
            noon(today),
            &utc(),
            &HashSet::new(),
        );
        let kept: HashSet<String> = plan
            .decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.backup_id.clone())
            .collect();
        assert_eq!(kept, expected_survivors(&backups, today, noon(today)));
        let anchor = plan
            .decisions
            .iter()
            .find(|d| d.reasons == [Reason::PitrAnchor])
            .expect("the backup before the PITR window is kept for it alone");
        let anchor = backups
            .iter()
            .find(|b| b.backup_id == anchor.backup_id)
            .expect("anchor");
        assert_eq!(date_of(anchor), today - jiff::Span::new().days(7));
        // The window's WAL starts at that backup, not at an older weekly one.
        assert!(
            plan.wal_keep
                .iter()
                .any(|r| r.start_lsn == anchor.start_lsn && r.end_lsn.is_none())
        );
        // 7 days, plus the Sundays of 3 earlier weeks, plus 11 earlier month ends (some
        // overlap): about 20, never the whole history.
        assert!((18..=23).contains(&kept.len()), "{} kept", kept.len());
        let newest = plan
            .decisions
            .iter()
            .find(|d| d.reasons.contains(&Reason::Newest))
            .expect("newest");
        assert_eq!(
            newest.backup_id, backups[0].backup_id,
            "the newest by time, not by name"
        );
        assert!(newest.reasons.contains(&Reason::Daily(today)));
        assert_eq!(newest.class(), Some(RetentionClass::Monthly));
        let text: Vec<String> = newest.reasons.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                "daily 2025-12-27",
                "weekly 2025-W52",
                "monthly 2025-12",
                "newest"
            ]
        );
    }

    #[test]
    fn the_newest_and_those_in_use_survive_a_zero_policy() {
        let today = jiff::civil::date(2025, 6, 1);
        let backups = nightly(today, 30);
        let zero = RetentionPolicy {
            daily: 0,
            weekly: 0,
            monthly: 0,
            wal_days: 0,
        };
        let in_use: HashSet<String> = [backups[10].backup_id.clone()].into();
        let plan = plan_retention(&backups, &zero, noon(today), &utc(), &in_use);
        let kept: Vec<&str> = plan
            .decisions
            .iter()
            .filter(|d| d.keep)
            .map(|d| d.backup_id.as_str())
            .collect();
        assert_eq!(kept.len(), 2);
        assert!(kept.contains(&backups[0].backup_id.as_str()), "the newest");
        assert!(
            kept.contains(&backups[10].backup_id.as_str()),
            "the one in use"
        );
    }

    #[test]
    fn groups_are_separate() {
        let today = jiff::civil::date(2025, 6, 1);
        let mut backups = nightly(today, 3);
        let mut redis = nightly(today, 1);
        redis[0].service = Service::Redis;
        redis[0].kind = BackupKind::Rdb;
        redis[0].backup_id = "redis_only".into();
        redis[0].finished_at_us -= 300 * DAY_US;
        backups.extend(redis);
        let zero = RetentionPolicy {
            daily: 0,
            weekly: 0,
            monthly: 0,
            wal_days: 0,
        };
        let plan = plan_retention(&backups, &zero, noon(today), &utc(), &HashSet::new());
        let keep: Vec<bool> = plan.decisions.iter().map(|d| d.keep).collect();
        // The newest PostgreSQL backup (the first: also the start of the empty PITR window) and
        // the only Redis one, however old: a group's newest is judged within its group.
        assert_eq!(keep, [true, false, false, true], "{:?}", plan.decisions);
        assert_eq!(plan.decisions[3].reasons, [Reason::Newest]);
    }

    proptest! {
        #[test]
        fn policy_invariants(days in 1i64..120, daily in 0u32..10, weekly in 0u32..6, monthly in 0u32..14,
                             wal_days in 0u32..20, skip in proptest::collection::vec(any::<bool>(), 120)) {
            let today = jiff::civil::date(2025, 3, 15);
            let backups: Vec<BackupRecord> = nightly(today, days)
                .into_iter()
                .enumerate()
                .filter(|(i, _)| *i == 0 || !skip[*i])
                .map(|(_, b)| b)
                .collect();
            let policy = RetentionPolicy { daily, weekly, monthly, wal_days };
            let now = noon(today);
            let plan = plan_retention(&backups, &policy, now, &utc(), &HashSet::new());
            // The newest backup always survives.
            let newest = backups.iter().max_by_key(|b| b.finished_at_us).expect("one");
            prop_assert!(plan.decisions.iter().any(|d| d.backup_id == newest.backup_id && d.keep));
            // Every kept base backup keeps the WAL from its start to its stop.
            for (b, d) in backups.iter().zip(&plan.decisions) {
                if d.keep {
                    prop_assert!(plan.wal_keep.iter().any(|r| r.start_lsn <= b.start_lsn
                        && r.end_lsn.is_none_or(|end| end >= b.stop_lsn)));
                }
            }
            // Pruning twice changes nothing: the survivors all survive a second plan.
            let survivors: Vec<BackupRecord> = backups.iter().zip(&plan.decisions)
                .filter(|(_, d)| d.keep).map(|(b, _)| b.clone()).collect();
            let again = plan_retention(&survivors, &policy, now, &utc(), &HashSet::new());
            prop_assert!(again.decisions.iter().all(|d| d.keep));
        }
    }
}
