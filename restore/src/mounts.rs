//! Whether a path is the root of a mount, a bind-mounted file included: a delta restore must
//! neither remove another file system nor write the backup's copy of a file through a mount
//! into the file mounted there.

use std::cell::OnceCell;
use std::collections::HashSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The mount points `/proc/self/mountinfo` lists, read once per walk and only when the kernel's
/// statx cannot tell (Linux before 5.8, as on RHEL 8).
#[derive(Debug, Default)]
pub(crate) struct MountTable(OnceCell<HashSet<PathBuf>>);

impl MountTable {
    /// Whether `path` (not a link) is listed as a mount point, by its real path.
    fn lists(&self, path: &Path) -> bool {
        let points = self.0.get_or_init(|| {
            std::fs::read_to_string("/proc/self/mountinfo")
                .map(|text| mount_points(&text))
                .unwrap_or_default()
        });
        std::fs::canonicalize(path).is_ok_and(|real| points.contains(&real))
    }
}

/// Whether `path` is the root of a mount: asked of the kernel (statx, Linux 5.8 and later:
/// bind mounts too, of a directory or a file, and not a btrfs subvolume, which has a device of
/// its own); else whether the mount table lists it, or, for a directory, whether its device
/// differs from its parent's (`devices`: the parent's and its own). A file's device alone says
/// nothing: overlayfs reports the layer's.
pub(crate) fn mount_root(path: &Path, devices: Option<(u64, u64)>, table: &MountTable) -> bool {
    use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags, statx};
    match statx(
        CWD,
        path,
        AtFlags::NO_AUTOMOUNT | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::empty(),
    ) {
        Ok(found)
            if found
                .stx_attributes_mask
                .contains(StatxAttributes::MOUNT_ROOT) =>
        {
            found.stx_attributes.contains(StatxAttributes::MOUNT_ROOT)
        }
        _ => devices.is_some_and(|(parent, own)| parent != own) || table.lists(path),
    }
}

/// The mount points (fifth field) of a `mountinfo` text, with the kernel's octal escapes of
/// space, tab, newline and backslash undone.
fn mount_points(mountinfo: &str) -> HashSet<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(unescape)
        .collect()
}

fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .map(|d| (d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_read_with_their_escapes_undone() {
        let text = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n\
            35 22 8:1 /etc/hba /srv/pg\\040data/pg_hba.conf rw - ext4 /dev/vda1 rw\n\
            36 22 0:5 / /srv/a\\134b\\011c\\012d rw - tmpfs tmpfs rw\n\
            37 22 0:6 / /srv/odd\\9 rw - tmpfs tmpfs rw\n";
        let points = mount_points(text);
        for want in [
            "/",
            "/srv/pg data/pg_hba.conf",
            "/srv/a\\b\tc\nd",
            "/srv/odd\\9",
        ] {
            assert!(points.contains(Path::new(want)), "{want:?} in {points:?}");
        }
        assert_eq!(points.len(), 4);
    }

    /// The fallback for kernels whose statx cannot tell, against a real bind mount of a file
    /// (root only: mounting needs it).
    #[test]
    #[allow(clippy::disallowed_methods)] // a plain test thread: no runtime to block
    fn a_bind_mounted_file_is_listed_in_the_mount_table() {
        if !storage::private::running_as_root() {
            eprintln!("skipped: mounting needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (outside, inside, plain) = (
            dir.path().join("outside"),
            dir.path().join("in 'side'"),
            dir.path().join("plain"),
        );
        for file in [&outside, &inside, &plain] {
            std::fs::write(file, b"x").expect("write");
        }
        let mounted = std::process::Command::new("mount")
            .arg("--bind")
            .args([&outside, &inside])
            .status()
            .expect("mount runs");
        assert!(mounted.success(), "mount --bind failed");
        let table = MountTable::default();
        let (found, not_found) = (table.lists(&inside), table.lists(&plain));
        let unmounted = std::process::Command::new("umount")
            .arg(&inside)
            .status()
            .expect("umount runs");
        assert!(unmounted.success(), "umount failed");
        assert!(found, "the bind-mounted file is listed");
        assert!(!not_found, "a plain file is not");
        assert!(
            !MountTable::default().lists(&inside),
            "unmounted, no longer"
        );
    }
}
