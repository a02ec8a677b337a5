//! Whether a path is the root of a mount, a bind-mounted file included: a delta restore must
//! neither remove another file system nor write the backup's copy of a file through a mount
//! into the file mounted there.

use std::os::fd::AsRawFd;
use std::path::Path;

use crate::RestoreError;

/// Whether `path` (never followed if a link) is the root of a mount: asked of the kernel
/// (statx, Linux 5.8 and later: bind mounts too, of a directory or a file, and not a btrfs
/// subvolume, which has a device of its own). Before 5.8 (RHEL 8), by the mount ids of it and
/// of the directory it is in, which differ exactly across a mount (`/proc/self/fdinfo`, Linux
/// 3.15 and later), or, for a directory, by `devices` (its parent's and its own) when they
/// differ. A file's device alone says nothing: overlayfs reports the layer's. When the kernel
/// cannot tell, the restore is refused rather than guessed.
pub(crate) fn mount_root(path: &Path, devices: Option<(u64, u64)>) -> Result<bool, RestoreError> {
    use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags, statx};
    if let Ok(found) = statx(
        CWD,
        path,
        AtFlags::NO_AUTOMOUNT | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::empty(),
    ) && found
        .stx_attributes_mask
        .contains(StatxAttributes::MOUNT_ROOT)
    {
        return Ok(found.stx_attributes.contains(StatxAttributes::MOUNT_ROOT));
    }
    if devices.is_some_and(|(parent, own)| parent != own) {
        return Ok(true);
    }
    crosses_mount(path).map_err(|e| {
        RestoreError::Refused(format!(
            "--delta: cannot tell whether {} is a mount point ({e}: this kernel's statx does not \
             say, and /proc/self/fdinfo gave no mount id); a delta restore must not write \
             through a mount. Mount /proc, or restore into an empty or new directory instead",
            path.display()
        ))
    })
}

/// Whether `path` lies on another mount than the directory it is in, by their mount ids.
fn crosses_mount(path: &Path) -> std::io::Result<bool> {
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    Ok(mount_id(path)? != mount_id(parent)?)
}

/// The id of the mount `path` (not followed if a link) lies on, from `/proc/self/fdinfo`.
fn mount_id(path: &Path) -> std::io::Result<u64> {
    use rustix::fs::{Mode, OFlags, open};
    let fd = open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    info.lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))
        .and_then(|id| id.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no mnt_id line"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The way kernels before 5.8 are answered, against a real bind mount of a file and of a
    /// directory, in a path with odd characters (root only: mounting needs it).
    #[test]
    #[allow(clippy::disallowed_methods)] // a plain test thread: no runtime to block
    fn bind_mounts_cross_a_mount_and_plain_entries_do_not() {
        if !storage::private::running_as_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let scratch = tempfile::tempdir().expect("tempdir");
        let dir = scratch.path().join("data 'x' %\\");
        let (outside, inside, plain) = (
            scratch.path().join("outside"),
            dir.join("pg_hba.conf"),
            dir.join("plain"),
        );
        let (outside_dir, inside_dir) = (scratch.path().join("outside_dir"), dir.join("base"));
        std::fs::create_dir_all(&outside_dir).expect("mkdir");
        std::fs::create_dir_all(&inside_dir).expect("mkdir");
        for file in [&outside, &inside, &plain] {
            std::fs::write(file, b"x").expect("write");
        }
        let mount = |from: &Path, to: &Path| {
            let status = std::process::Command::new("mount")
                .arg("--bind")
                .args([from, to])
                .status()
                .expect("mount runs");
            assert!(status.success(), "mount --bind failed");
        };
        mount(&outside, &inside);
        mount(&outside_dir, &inside_dir);
        let found = [&inside, &inside_dir, &plain, &dir].map(|p| crosses_mount(p).ok());
        for mounted in [&inside, &inside_dir] {
            let status = std::process::Command::new("umount")
                .arg(mounted)
                .status()
                .expect("umount runs");
            assert!(status.success(), "umount failed");
        }
        assert_eq!(found, [Some(true), Some(true), Some(false), Some(false)]);
        assert_eq!(crosses_mount(&inside).ok(), Some(false), "unmounted");
        assert!(crosses_mount(&dir.join("missing")).is_err(), "cannot tell");
    }
}
