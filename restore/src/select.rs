//! Which backup `--from` means.

use std::str::FromStr;

use catalog::BackupRecord;
use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::RestoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupSelector {
    /// The newest backup (`latest`, or `daily`: the newest of the daily class).
    Latest,
    /// The newest backup taken before the current ISO week began.
    Weekly,
    /// The newest backup taken before the current month began.
    Monthly,
    /// The newest backup taken on that local day.
    Day(Date),
    Id(String),
}

impl FromStr for BackupSelector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "latest" | "daily" => return Ok(BackupSelector::Latest),
            "weekly" => return Ok(BackupSelector::Weekly),
            "monthly" => return Ok(BackupSelector::Monthly),
            _ => {}
        }
        if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit()) {
            return Date::strptime("%Y%m%d", s)
                .map(BackupSelector::Day)
                .map_err(|_| format!("--from {s}: not a valid date; use YYYYMMDD"));
        }
        if !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Ok(BackupSelector::Id(s.to_string()));
        }
        Err(format!(
            "--from {s:?}: use latest, daily, weekly, monthly, a date YYYYMMDD or a backup id from `lifeline list`"
        ))
    }
}

/// Pick a complete backup of `kind` (ordered by finish time, never by name).
pub fn select_backup(
    backups: &[BackupRecord],
    kind: storage::BackupKind,
    selector: &BackupSelector,
    now: jiff::Timestamp,
    tz: &TimeZone,
) -> Result<BackupRecord, RestoreError> {
    let mut usable = backups.iter().filter(|b| b.kind == kind);
    let local_date = |us: i64| {
        jiff::Timestamp::from_microsecond(us)
            .map(|t| t.to_zoned(tz.clone()).date())
            .ok()
    };
    let today = now.to_zoned(tz.clone()).date();
    let found = match selector {
        BackupSelector::Latest => usable.next_back(),
        BackupSelector::Weekly => {
            let week_start = today
                .checked_sub(
                    jiff::Span::new().days(i64::from(today.weekday().to_monday_zero_offset())),
                )
                .unwrap_or(today);
            usable.rfind(|b| local_date(b.started_at_us).is_some_and(|d| d < week_start))
        }
        BackupSelector::Monthly => {
            let month_start = today.first_of_month();
            usable.rfind(|b| local_date(b.started_at_us).is_some_and(|d| d < month_start))
        }
        BackupSelector::Day(day) => usable.rfind(|b| local_date(b.started_at_us) == Some(*day)),
        BackupSelector::Id(id) => {
            return backups.iter().find(|b| &b.backup_id == id).cloned().ok_or_else(|| {
                RestoreError::Refused(format!("no backup {id} in the catalog: see `lifeline list` for the ids (or `lifeline catalog rebuild` if the catalog is stale)"))
            });
        }
    };
    found.cloned().ok_or_else(|| {
        RestoreError::Refused(format!(
            "no complete {kind} backup matches --from {}: see `lifeline list`",
            match selector {
                BackupSelector::Latest => "latest".to_string(),
                BackupSelector::Weekly => "weekly".to_string(),
                BackupSelector::Monthly => "monthly".to_string(),
                BackupSelector::Day(d) => d.strftime("%Y%m%d").to_string(),
                BackupSelector::Id(id) => id.clone(),
            }
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup(id: &str, at: &str) -> BackupRecord {
        let us = at
            .parse::<jiff::Timestamp>()
            .expect("time")
            .as_microsecond();
        crate::test_support::complete_backup(id, 1, (0, 0), (us, us + 1))
    }

    #[test]
    fn selectors_pick_by_time() {
        let backups = vec![
            backup("b1", "2025-11-28T01:00:00Z"),
            backup("b2", "2025-12-20T01:00:00Z"),
            backup("b3", "2025-12-24T01:00:00Z"),
            backup("b4", "2025-12-27T01:00:00Z"),
        ];
        let now: jiff::Timestamp = "2025-12-27T12:00:00Z".parse().expect("now");
        let tz = TimeZone::UTC;
        let pick = |s: &str| {
            select_backup(
                &backups,
                storage::BackupKind::Base,
                &s.parse().expect("selector"),
                now,
                &tz,
            )
            .map(|b| b.backup_id)
        };
        assert_eq!(pick("latest").expect("latest"), "b4");
        // 2025-12-27 is a Saturday; the ISO week began on Monday 22nd.
        assert_eq!(pick("weekly").expect("weekly"), "b2");
        assert_eq!(pick("monthly").expect("monthly"), "b1");
        assert_eq!(pick("20251224").expect("day"), "b3");
        assert_eq!(pick("b2").expect("id"), "b2");
        assert!(pick("20251225").is_err());
        assert!(pick("nope").is_err());
        assert!("../x".parse::<BackupSelector>().is_err());
        assert!("20251399".parse::<BackupSelector>().is_err());
    }
}
