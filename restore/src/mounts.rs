//! Whether a path is the root of a mount, a bind-mounted file included: a delta restore must
//! neither remove another file system nor write the backup's copy of a file through a mount
//! into the file mounted there.

use std::os::fd::AsRawFd;
use std::path::Path;

use crate::RestoreError;

/// Whether `path` (never followed if a link), an entry of directory `parent`, is the root of a
/// mount: asked of the kernel (statx, Linux 5.8 and later: bind mounts too, of a directory or a
/// file, and not a btrfs subvolume, which has a device of its own). Before 5.8 (RHEL 8), by the
/// mount ids of it and of `parent`, which differ exactly across a mount (`/proc/self/fdinfo`,
/// Linux 3.15 and later); where those cannot be read, a directory whose device (`devices`: its
/// parent's and its own) differs counts as one, and otherwise the restore is refused rather
/// than guessed. A file's device alone says nothing: overlayfs reports the layer's.
pub(crate) fn mount_root(
    path: &Path,
    parent: &Path,
    devices: Option<(u64, u64)>,
) -> Result<bool, RestoreError> {
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
    match crosses_mount(path, parent)? {
        Some(crosses) => Ok(crosses),
        None if devices.is_some_and(|(parent, own)| parent != own) => Ok(true),
        None => Err(RestoreError::Refused(format!(
            "--delta: cannot tell whether {} is a mount point: this kernel's statx does not \
             say, and /proc/self/fdinfo gives no mount id; a delta restore must not write \
             through a mount. Mount /proc, or restore into an empty or new directory instead",
            path.display()
        ))),
    }
}

/// The id of the mount `path` lies on (`follow`: through a link it is), from
/// `/proc/self/fdinfo`; `None` when that does not say.
fn mount_id(path: &Path, follow: bool) -> Result<Option<u64>, RestoreError> {
    use rustix::fs::{Mode, OFlags, open};
    let flags = match follow {
        true => OFlags::PATH | OFlags::CLOEXEC,
        false => OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
    };
    let fd = open(path, flags, Mode::empty())
        .map_err(|e| RestoreError::io(path, std::io::Error::from(e)))?;
    let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())) else {
        return Ok(None);
    };
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("mnt_id:"))
        .and_then(|id| id.trim().parse().ok()))
}

/// Whether `path`, an entry of directory `parent`, lies on another mount, by mount ids alone;
/// `None` when `/proc/self/fdinfo` does not say.
fn crosses_mount(path: &Path, parent: &Path) -> Result<Option<bool>, RestoreError> {
    match (mount_id(path, false)?, mount_id(parent, true)?) {
        (Some(own), Some(parents)) => Ok(Some(own != parents)),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The way kernels before 5.8 are answered, against real mounts (root only): a bind mount
    /// of a file and of a directory inside a data directory on a file system of its own, named
    /// through a link, in a path with odd characters.
    #[test]
    #[allow(clippy::disallowed_methods)] // a plain test thread: no runtime to block
    fn bind_mounts_cross_a_mount_and_plain_entries_do_not() {
        if !storage::private::running_as_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let run = |args: &[&std::ffi::OsStr]| {
            let status = std::process::Command::new(args[0])
                .args(&args[1..])
                .status()
                .expect("runs");
            assert!(status.success(), "{args:?} failed");
        };
        let scratch = tempfile::tempdir().expect("tempdir");
        let mnt = scratch.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        run(&[
            "mount".as_ref(),
            "-t".as_ref(),
            "tmpfs".as_ref(),
            "tmpfs".as_ref(),
            mnt.as_ref(),
        ]);
        let real = mnt.join("data 'x' %\\");
        let (outside, outside_dir) = (scratch.path().join("outside"), scratch.path().join("od"));
        for dir in [&real.join("base"), &outside_dir] {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        for file in [
            &outside,
            &real.join("pg_hba.conf"),
            &real.join("PG_VERSION"),
        ] {
            std::fs::write(file, b"x").expect("write");
        }
        let link = scratch.path().join("link");
        std::os::unix::fs::symlink(&real, &link).expect("symlink");
        let bind = |from: &Path, to: &Path| {
            run(&[
                "mount".as_ref(),
                "--bind".as_ref(),
                from.as_ref(),
                to.as_ref(),
            ]);
        };
        bind(&outside, &real.join("pg_hba.conf"));
        bind(&outside_dir, &real.join("base"));
        // Entries as the walk names them, through the link; the data directory by its real path.
        let seen = [
            crosses_mount(&link.join("pg_hba.conf"), &link)
                .ok()
                .flatten(),
            crosses_mount(&link.join("base"), &link).ok().flatten(),
            crosses_mount(&link.join("PG_VERSION"), &link)
                .ok()
                .flatten(),
            crosses_mount(&real, &mnt).ok().flatten(),
            crosses_mount(&mnt, scratch.path()).ok().flatten(),
        ];
        for mounted in [real.join("pg_hba.conf"), real.join("base"), mnt.clone()] {
            run(&["umount".as_ref(), mounted.as_ref()]);
        }
        assert_eq!(
            seen,
            [Some(true), Some(true), Some(false), Some(false), Some(true)],
            "bound file, bound directory, plain file, the data directory, the tmpfs"
        );
        assert!(
            mount_id(&link.join("gone"), false).is_err(),
            "a missing path"
        );
    }
}
