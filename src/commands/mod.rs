pub mod backup;
pub mod catalog;
pub mod dump;
pub mod info;
pub mod prune;
pub mod restore;
pub mod status_file;
pub mod verify;
pub mod wal;

/// `db0=12 db3=5`, or `none`: the key counts a Redis backup recorded.
pub fn counts_line(counts: &std::collections::BTreeMap<String, u64>) -> String {
    if counts.is_empty() {
        return "none".to_string();
    }
    counts
        .iter()
        .map(|(db, n)| format!("{db}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}
