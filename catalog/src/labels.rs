//! Which retention class keeps a backup, and the label recorded for it in the catalog and the
//! backup's `.metadata`.

use crate::RetentionPolicy;

/// Which window of the retention policy keeps a backup: the longest that applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RetentionClass {
    Daily,
    Weekly,
    Monthly,
}

impl RetentionClass {
    /// The label recorded for the class under `policy`: `7_days`, `4_weeks`, `12_months` with
    /// the default policy, `14_days` when 14 daily backups are kept.
    pub fn label(self, policy: &RetentionPolicy) -> String {
        let (count, unit) = match self {
            RetentionClass::Daily => (policy.daily, "day"),
            RetentionClass::Weekly => (policy.weekly, "week"),
            RetentionClass::Monthly => (policy.monthly, "month"),
        };
        let plural = if count == 1 { "" } else { "s" };
        format!("{count}_{unit}{plural}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage::Restorability;

    #[test]
    fn labels_follow_the_configured_policy() {
        let default = RetentionPolicy::default();
        assert_eq!(RetentionClass::Daily.label(&default), "7_days");
        assert_eq!(RetentionClass::Weekly.label(&default), "4_weeks");
        assert_eq!(RetentionClass::Monthly.label(&default), "12_months");
        let longer = RetentionPolicy {
            daily: 14,
            ..default
        };
        assert_eq!(RetentionClass::Daily.label(&longer), "14_days");
        let one = RetentionPolicy {
            weekly: 1,
            ..default
        };
        assert_eq!(RetentionClass::Weekly.label(&one), "1_week");
        for r in [
            Restorability::Unverified,
            Restorability::Verified,
            Restorability::Failed,
        ] {
            assert_eq!(r.as_str().parse::<Restorability>(), Ok(r));
            let json = serde_json::to_string(&r).expect("serializes");
            assert_eq!(json, format!("\"{r}\""));
        }
        assert!("verified".parse::<Restorability>().is_err());
    }
}
