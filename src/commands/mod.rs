pub mod backup;
pub mod catalog;
pub mod check;
pub mod drill;
pub mod dump;
pub mod failover;
pub mod info;
pub mod key;
mod platform;
pub mod prune;
pub mod restore;
pub mod runbook;
pub mod verify;
pub mod verify_recovery;
pub mod wal;

/// A spinner with the elapsed time and the phase; indicatif hides it when stderr is no terminal.
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
