pub mod backup;
pub mod catalog;
pub mod drill;
pub mod dump;
pub mod failover;
pub mod info;
pub mod prune;
pub mod restore;
pub mod runbook;
pub mod status_file;
mod steps;
pub mod verify;
pub mod verify_recovery;
pub mod wal;

/// A spinner with the elapsed time and the current phase, on a terminal only (indicatif hides
/// it when stderr is not one, as under systemd or PostgreSQL).
pub fn spinner(operation: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new_spinner();
    let template = format!("{{spinner}} {operation} {{elapsed:>4}} {{msg}}");
    bar.set_style(
        indicatif::ProgressStyle::with_template(&template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// Tell Slack and email (when configured) how `operation` ended. Delivery failures are
/// warnings: the operation's own outcome stands.
pub async fn notify(
    settings: &crate::config::Settings,
    operation: &str,
    ok: bool,
    summary: &str,
    details: &str,
) {
    let notifier = ops::Notifier::new(settings.ops.notify.clone(), host_name());
    if !notifier.is_configured() {
        return;
    }
    let event = ops::Event {
        operation: operation.to_string(),
        ok,
        summary: summary.to_string(),
        details: details.to_string(),
    };
    notifier.send(&event).await;
}

/// The newest `count` logs of `operation` (oldest first), each with its RESULT line.
pub fn recent_logs(
    settings: &crate::config::Settings,
    operation: &str,
    count: usize,
) -> Vec<(String, String)> {
    let Ok(dir) = settings.backup_dir().map(|d| d.join("logs")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("{operation}_")) && n.ends_with(".log"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let skip = names.len().saturating_sub(count);
    names
        .into_iter()
        .skip(skip)
        .map(|name| {
            let result = std::fs::read_to_string(dir.join(&name))
                .ok()
                .and_then(|text| {
                    text.lines()
                        .rev()
                        .find_map(|l| l.split_once("RESULT: ").map(|(_, r)| r.to_string()))
                })
                .unwrap_or_else(|| "no result recorded (interrupted?)".into());
            (name, result)
        })
        .collect()
}

/// This host's name as it may appear in a repository key, or `host`.
pub fn host_name() -> String {
    storage::lease::host_name()
}

/// Tell `prune` that a restore is using `backup_id` (for a day: recovery goes on fetching WAL
/// after lifeline exits). A lease that cannot be written only warns: the restore matters more.
pub async fn take_lease(storage: &dyn storage::Storage, backup_id: &str) {
    storage::lease::take_here(storage, backup_id).await;
}
