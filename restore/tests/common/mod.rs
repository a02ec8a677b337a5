//! What the base-restore tests share: the options of a restore into a data directory.

use std::path::Path;

use restore::{ArchiveMode, RecoveryTarget, RestoreOptions, TablespaceMapping, TargetTimeline};

/// A restore into `data_dir` to the backup's consistent end, two workers, two transfers,
/// tablespaces back where they were, no archiving.
pub fn options(data_dir: &Path) -> RestoreOptions {
    RestoreOptions {
        data_dir: data_dir.to_path_buf(),
        parallelism: 2,
        transfers: 2,
        direct_io: true,
        verify_first: false,
        target: RecoveryTarget::Immediate,
        restore_command: "lifeline wal fetch %f %p".into(),
        tablespaces: TablespaceMapping::default(),
        waldir: None,
        archive_mode: ArchiveMode::Off,
        timeline: TargetTimeline::Latest,
        interrupted: Default::default(),
        owner: storage::private::Owner::KEEP,
        progress: storage::progress::none(),
        delta: false,
        discard_unarchived_wal: false,
        plan_window: restore::PLAN_WINDOW,
    }
}
