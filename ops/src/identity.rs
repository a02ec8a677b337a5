//! Who lifeline runs as, decided before the first thread starts: the repository's owner, and
//! with room to open the files a large restore needs.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// One owner for the repository. Run as root against a repository that belongs to another
/// user, lifeline becomes that user before it touches anything, so nothing it creates is root's
/// and no link planted in the repository can make root write, chown or delete elsewhere;
/// `keep_root` (failover: it starts services and rewrites the application's files) keeps root
/// and gives what it creates to the owner instead. Any other user is refused before it writes.
/// Call it before any thread starts: the whole process changes user.
pub fn act_as_repository_owner(backup_dir: &Path, keep_root: bool) -> Result<(), String> {
    // A missing BACKUP_DIR: the command itself says what to do.
    let Ok(meta) = std::fs::metadata(backup_dir) else {
        return Ok(());
    };
    let (uid, gid) = (meta.uid(), meta.gid());
    let me = rustix::process::geteuid();
    if me.as_raw() == uid {
        return Ok(());
    }
    let owner = storage::private::user_name(uid);
    let dir = backup_dir.display();
    if !me.is_root() {
        return Err(format!(
            "BACKUP_DIR {dir} belongs to {owner} and lifeline runs as {}: run it as {owner} (runuser -u {owner} -- lifeline ...)",
            storage::private::user_name(me.as_raw())
        ));
    }
    if uid == 0 || keep_root {
        return Ok(());
    }
    let (user, group) = (
        rustix::process::Uid::from_raw(uid),
        rustix::process::Gid::from_raw(gid),
    );
    rustix::thread::set_thread_groups(&[group])
        .and_then(|()| rustix::thread::set_thread_res_gid(group, group, group))
        .and_then(|()| rustix::thread::set_thread_res_uid(user, user, user))
        .map_err(|e| {
            format!(
                "cannot become {owner}, the owner of BACKUP_DIR {dir} ({e}): run it as {owner} (runuser -u {owner} -- lifeline ...)"
            )
        })
}

/// Raise the soft limit on open files to the hard one: a restore of a large data directory
/// keeps a bounded number open, but the default soft limit (1024, or less under a tight
/// `ulimit -n`) leaves little room beside the runtime's own descriptors.
pub fn raise_open_file_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::debug!("the open-file limit stays at {:?}: {e}", limit.current);
        }
    }
}
