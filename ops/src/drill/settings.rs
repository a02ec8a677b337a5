//! The restored data directory made into a scratch server's: production's paths and
//! replication cut off, the drill's own settings for each recovery phase.

use std::path::Path;

use restore::quote_setting;

use super::access::{ScratchAccess, write_private};
use crate::DrillError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Stop at the backup's consistent point and pause there, readable.
    ConsistentPoint,
    /// Replay all of the archive on the planned timeline, then promote.
    EndOfArchive(u32),
}

/// Marks the settings the drill owns in postgresql.auto.conf: everything from it to the end
/// of the file (after the restore's own block). Later lines win in PostgreSQL's configuration.
const DRILL_MARK: &str = "# Added by lifeline drill";

fn utf8(path: &Path) -> Result<&str, DrillError> {
    path.to_str()
        .ok_or_else(|| DrillError::NotUtf8(path.to_path_buf()))
}

fn read_if_any(path: &Path) -> Result<Option<String>, DrillError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(DrillError::Io {
            doing: format!("read {}", path.display()),
            source,
        }),
    }
}

/// A data directory whose configuration lives elsewhere (Debian's /etc/postgresql) gets an
/// empty postgresql.conf; one that names another data directory would start on it (the
/// production one), so that setting is commented out; a standby.signal would keep the server
/// from ever promoting. Blocking.
pub(super) fn prepare_data_dir(data_dir: &Path) -> Result<(), DrillError> {
    let conf = data_dir.join("postgresql.conf");
    match read_if_any(&conf)? {
        Some(text) => {
            let mut changed = false;
            let lines: Vec<String> = text
                .lines()
                .map(|line| {
                    if setting_name(line).is_some_and(|n| n.eq_ignore_ascii_case("data_directory"))
                    {
                        changed = true;
                        format!("#(lifeline drill) {line}")
                    } else {
                        line.to_string()
                    }
                })
                .collect();
            if changed {
                write_private(&conf, &(lines.join("\n") + "\n"))?;
            }
        }
        None => write_private(&conf, "")?,
    }
    let standby = data_dir.join("standby.signal");
    if standby.exists() {
        std::fs::remove_file(&standby).map_err(|source| DrillError::Io {
            doing: format!("remove {}", standby.display()),
            source,
        })?;
    }
    Ok(())
}

/// The major version of the server the data directory is for (its `PG_VERSION`), if it says.
fn server_major(data_dir: &Path) -> Result<Option<u32>, DrillError> {
    Ok(read_if_any(&data_dir.join("PG_VERSION"))?.and_then(|v| v.trim().parse().ok()))
}

/// The parameter a configuration line sets, if it sets one.
fn setting_name(line: &str) -> Option<&str> {
    let line = line.trim_start();
    let end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(line.len());
    let name = &line[..end];
    let rest = line[end..].trim_start();
    (!name.is_empty() && (rest.starts_with('=') || (!rest.is_empty() && !rest.starts_with('#'))))
        .then_some(name)
}

/// The primary's limits recorded in pg_control: a hot standby refuses to run with less. They
/// matter when the configuration was not in the data directory and defaults apply.
pub(super) async fn control_limits(pg_bin: &Path, data_dir: &Path) -> Vec<(&'static str, u64)> {
    const LIMITS: [(&str, &str); 5] = [
        ("max_connections", "max_connections setting:"),
        ("max_worker_processes", "max_worker_processes setting:"),
        ("max_wal_senders", "max_wal_senders setting:"),
        ("max_prepared_transactions", "max_prepared_xacts setting:"),
        ("max_locks_per_transaction", "max_locks_per_xact setting:"),
    ];
    let Ok(out) = tokio::process::Command::new(pg_bin.join("pg_controldata"))
        .arg("-D")
        .arg(data_dir)
        .env("LC_ALL", "C")
        .output()
        .await
    else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    LIMITS
        .iter()
        .filter_map(|(name, label)| {
            let line = text.lines().find(|l| l.starts_with(label))?;
            let value = line[label.len()..].trim().parse().ok()?;
            Some((*name, value))
        })
        .collect()
}

/// Settings that keep the scratch server to itself: no TCP, its own socket and
/// authentication, no archiving into the production repository, no replication towards or from
/// production, nothing written to production's paths, modest memory. Blocking.
pub(super) fn write_drill_settings(
    data_dir: &Path,
    access: &ScratchAccess,
    port: u16,
    limits: &[(&str, u64)],
    phase: Phase,
) -> Result<(), DrillError> {
    let mut settings: Vec<(&str, String)> = vec![
        ("port", port.to_string()),
        ("listen_addresses", quote_setting("")),
        (
            "unix_socket_directories",
            quote_setting(utf8(&access.socket_dir)?),
        ),
        ("unix_socket_permissions", "0700".into()),
        ("unix_socket_group", quote_setting("")),
        ("hba_file", quote_setting(utf8(&access.hba_file)?)),
        ("ident_file", quote_setting(utf8(&access.ident_file)?)),
        ("ssl", "off".into()),
        ("external_pid_file", quote_setting("")),
        ("archive_mode", quote_setting("off")),
        ("primary_conninfo", quote_setting("")),
        ("primary_slot_name", quote_setting("")),
        ("synchronous_standby_names", quote_setting("")),
        ("shared_buffers", quote_setting("128MB")),
        ("logging_collector", "off".into()),
        ("log_destination", quote_setting("stderr")),
        ("hot_standby", "on".into()),
    ];
    // Before 15 the statistics collector writes to stats_temp_directory, which production's
    // postgresql.conf may set to an absolute path (a tmpfs it shares): the scratch server's
    // own, inside its data directory. 15 and later reject the setting.
    if server_major(data_dir)?.is_some_and(|major| major < 15) {
        settings.push(("stats_temp_directory", quote_setting("pg_stat_tmp")));
    }
    settings.extend(
        limits
            .iter()
            .map(|(name, value)| (*name, value.to_string())),
    );
    match phase {
        Phase::ConsistentPoint => {
            // The restore wrote recovery_target = 'immediate' for RecoveryTarget::Immediate.
            settings.push(("recovery_target_action", quote_setting("pause")));
        }
        Phase::EndOfArchive(timeline) => {
            settings.push(("recovery_target", quote_setting("")));
            settings.push(("recovery_target_action", quote_setting("promote")));
            // The timeline the plan checked, not PostgreSQL's 'latest', which could take one
            // that branched off before the backup.
            settings.push((
                "recovery_target_timeline",
                quote_setting(&timeline.to_string()),
            ));
        }
    }
    let auto = data_dir.join("postgresql.auto.conf");
    let text = read_if_any(&auto)?.unwrap_or_default();
    let mut out = match text.find(&format!("\n{DRILL_MARK}")) {
        Some(at) => text[..at].to_string(),
        None => text.trim_end_matches('\n').to_string(),
    };
    out.push_str(&format!(
        "\n{DRILL_MARK} ({})\n",
        match phase {
            Phase::ConsistentPoint => "phase 1: pause at the backup's consistent point",
            Phase::EndOfArchive(_) => "phase 2: replay the archive and promote",
        }
    ));
    for (name, value) in settings {
        out.push_str(&format!("{name} = {value}\n"));
    }
    write_private(&auto, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_for_postgresql() {
        assert_eq!(quote_setting("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(quote_setting("it's"), "'it''s'");
        assert_eq!(quote_setting(r"C:\x"), r"'C:\\x'");
        assert_eq!(quote_setting(""), "''");
        assert_eq!(quote_setting("/tmp/a\nb\r"), r"'/tmp/a\nb\r'");
    }

    #[test]
    fn before_15_the_statistics_stay_in_the_scratch_data_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        let access =
            ScratchAccess::write(dir.path(), dir.path(), "postgres", "app").expect("access");
        let auto = data.join("postgresql.auto.conf");
        for (version, wanted) in [
            ("13\n", true),
            ("14\n", true),
            ("15\n", false),
            ("17\n", false),
        ] {
            std::fs::write(data.join("PG_VERSION"), version).expect("write");
            for phase in [Phase::ConsistentPoint, Phase::EndOfArchive(1)] {
                write_drill_settings(&data, &access, 5555, &[], phase).expect("settings");
                let text = std::fs::read_to_string(&auto).expect("read");
                assert_eq!(
                    text.contains("\nstats_temp_directory = 'pg_stat_tmp'\n"),
                    wanted,
                    "PG_VERSION {version}: {text}"
                );
            }
        }
        std::fs::remove_file(data.join("PG_VERSION")).expect("rm");
        write_drill_settings(&data, &access, 5555, &[], Phase::ConsistentPoint).expect("settings");
        assert!(
            !std::fs::read_to_string(&auto)
                .expect("read")
                .contains("stats_temp_directory")
        );
    }

    #[test]
    fn only_settings_are_recognised() {
        assert_eq!(
            setting_name("data_directory = '/x'"),
            Some("data_directory")
        );
        assert_eq!(
            setting_name("  data_directory '/x'"),
            Some("data_directory")
        );
        assert_eq!(setting_name("#data_directory = '/x'"), None);
        assert_eq!(setting_name(""), None);
        assert_eq!(setting_name("port=5432"), Some("port"));
    }

    #[test]
    fn the_drill_rewrites_only_its_own_block() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("mkdir");
        let auto = data.join("postgresql.auto.conf");
        let restored = "work_mem = '8MB'\n\n# Added by lifeline restore of b\nrecovery_target = 'immediate'\nrecovery_target_action = 'promote'\n";
        std::fs::write(&auto, restored).expect("write");
        let access =
            ScratchAccess::write(dir.path(), dir.path(), "postgres", "app").expect("access");
        assert_eq!(access.roles, ["postgres", "app"]);
        let limits = [("max_connections", 200)];
        write_drill_settings(&data, &access, 5555, &limits, Phase::ConsistentPoint)
            .expect("phase 1");
        let phase1 = std::fs::read_to_string(&auto).expect("read");
        assert!(phase1.starts_with(restored), "{phase1}");
        assert!(
            phase1.contains("recovery_target_action = 'pause'\n"),
            "{phase1}"
        );
        assert!(phase1.contains("listen_addresses = ''\n"), "{phase1}");
        assert!(phase1.contains("max_connections = 200\n"), "{phase1}");
        write_drill_settings(&data, &access, 5555, &limits, Phase::EndOfArchive(1))
            .expect("phase 2");
        let phase2 = std::fs::read_to_string(&auto).expect("read");
        assert!(phase2.starts_with(restored), "{phase2}");
        assert_eq!(phase2.matches(DRILL_MARK).count(), 1, "{phase2}");
        assert!(!phase2.contains("'pause'"), "{phase2}");
        assert!(phase2.ends_with("recovery_target = ''\nrecovery_target_action = 'promote'\nrecovery_target_timeline = '1'\n"), "{phase2}");
        let hba = std::fs::read_to_string(&access.hba_file).expect("hba");
        assert!(
            hba.contains("\nlocal all all peer map=lifeline_drill\n"),
            "{hba}"
        );
        let ident = std::fs::read_to_string(&access.ident_file).expect("ident");
        assert!(
            ident.contains("lifeline_drill postgres postgres\nlifeline_drill postgres app\n"),
            "{ident}"
        );
    }
}
