//! The repository's owner (the `postgres` account) is not root: what it plants in BACKUP_DIR
//! must never make a run as root write, chown, read or delete anything outside the repository,
//! and a refused run by another user must leave nothing behind that the owner cannot use.
//! No PostgreSQL is needed: every command here fails to connect or has nothing to do.
mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{Scratch, free_port};

const VICTIM_TEXT: &str = "root:$6$not-a-real-hash:19000:0:99999:7:::\n";

/// A root-owned 0640 file outside the repository standing for /etc/shadow.
fn victim(scratch: &Scratch) -> std::path::PathBuf {
    let outside = scratch.path("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::os::unix::fs::chown(&outside, Some(0), Some(0)).expect("chown");
    let path = outside.join("shadow");
    std::fs::write(&path, VICTIM_TEXT).expect("write");
    std::os::unix::fs::chown(&path, Some(0), Some(0)).expect("chown");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    path
}

fn assert_untouched(path: &Path) {
    let meta = std::fs::metadata(path).expect("the victim is still there");
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (0, 0o640),
        "a root run changed the owner or mode of {} through a link",
        path.display()
    );
    assert_eq!(
        std::fs::read_to_string(path).expect("read"),
        VICTIM_TEXT,
        "a root run wrote into {} through a link",
        path.display()
    );
}

/// `lifeline ARGS` as root (this test's user), BACKUP_DIR the scratch repository and no
/// PostgreSQL listening where DB_PORT points.
fn as_root(scratch: &Scratch) -> Command {
    let mut cmd = Command::new(&scratch.bin);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TZ", "UTC")
        .env("BACKUP_DIR", &scratch.repo)
        .env("DB_HOST", "127.0.0.1")
        .env("DB_PORT", free_port().to_string());
    cmd
}

fn run(mut cmd: Command, args: &[&str]) -> Output {
    cmd.args(args).output().expect("run lifeline")
}

#[test]
fn a_root_run_never_writes_through_a_link_planted_at_the_status_temp_name() {
    let scratch = Scratch::new();
    let shadow = victim(&scratch);
    // The process is held before exec so that its pid (which exec keeps) is known: an owner
    // can watch /proc for a lifeline process and plant the link while a backup runs.
    let mut held = Command::new("sh");
    held.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TZ", "UTC")
        .env("BACKUP_DIR", &scratch.repo)
        .env("DB_HOST", "127.0.0.1")
        .env("DB_PORT", free_port().to_string())
        .args(["-c", "read go; exec \"$0\" backup postgres"])
        .arg(&scratch.bin)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = held.spawn().expect("spawn");
    let pid = child.id();
    // The status file is written through storage::atomic, at `.tmp.<name>.<pid>.<n>`, n counting
    // that process's atomic writes: a link at each plausible n.
    for n in 0..256 {
        symlink(
            &shadow,
            scratch.repo.join(format!(".tmp..backup_status.{pid}.{n}")),
        )
        .expect("plant link");
    }
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"go\n")
        .expect("release");
    let status = child.wait().expect("wait");
    assert!(!status.success(), "the backup had no server to back up");
    assert_untouched(&shadow);
    // The write met a planted link (else the links above were not where it writes, and the
    // test proved nothing): it refused it rather than follow it.
    assert!(
        std::fs::symlink_metadata(scratch.repo.join(".backup_status")).is_err(),
        "the status was written under a temporary name no link was planted at"
    );
}

#[test]
fn a_root_run_never_copies_a_linked_status_file_into_the_repository() {
    let scratch = Scratch::new();
    let secret = scratch.path("outside.json");
    std::fs::write(
        &secret,
        "{\"auths\":{\"registry\":{\"auth\":\"c2VjcmV0\"}}}",
    )
    .expect("w");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(&secret, Some(0), Some(0)).expect("chown");
    symlink(&secret, scratch.repo.join(".backup_status")).expect("plant link");
    let out = run(as_root(&scratch), &["backup", "postgres"]);
    assert!(!out.status.success());
    let status = std::fs::read_to_string(scratch.repo.join(".backup_status")).unwrap_or_default();
    assert!(
        !status.contains("c2VjcmV0"),
        "a root-only file the owner linked as .backup_status was copied into the repository: \
         {status}"
    );
}

#[test]
fn a_root_run_never_creates_a_catalog_outside_the_repository_through_a_dangling_link() {
    let scratch = Scratch::new();
    let outside = scratch.path("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::os::unix::fs::chown(&outside, Some(0), Some(0)).expect("chown");
    // Standing for /etc/nologin: any file there locks every other user out.
    let planted = outside.join("nologin");
    symlink(&planted, scratch.repo.join("catalog.db")).expect("plant link");
    let _ = run(as_root(&scratch), &["list"]);
    assert!(
        !planted.exists(),
        "a root run created {} through the catalog link",
        planted.display()
    );
}

#[test]
fn prune_as_root_never_deletes_logs_outside_the_repository_through_a_linked_logs_directory() {
    let scratch = Scratch::new();
    let varlog = scratch.path("varlog");
    std::fs::create_dir(&varlog).expect("mkdir");
    std::os::unix::fs::chown(&varlog, Some(0), Some(0)).expect("chown");
    let auth_log = varlog.join("auth.log");
    std::fs::write(&auth_log, "an audit trail\n").expect("write");
    let three_years = std::time::Duration::from_secs(3 * 365 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&auth_log)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() - three_years))
        .expect("age");
    symlink(&varlog, scratch.repo.join("logs")).expect("plant link");
    let out = run(as_root(&scratch), &["prune"]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(
        auth_log.exists(),
        "prune as root deleted {} through a logs link the owner planted",
        auth_log.display()
    );
}

#[test]
fn prune_as_root_never_deletes_files_outside_the_repository_through_a_linked_spool() {
    let scratch = Scratch::new();
    let elsewhere = scratch.path("elsewhere");
    std::fs::create_dir_all(elsewhere.join("deep")).expect("mkdir");
    let file = elsewhere.join("deep/report.partial.42");
    std::fs::write(&file, "not a spool file\n").expect("write");
    let three_days = std::time::Duration::from_secs(3 * 24 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .and_then(|f| f.set_modified(std::time::SystemTime::now() - three_days))
        .expect("age");
    symlink(&elsewhere, scratch.repo.join("spool")).expect("plant link");
    let out = run(as_root(&scratch), &["prune"]);
    assert!(out.status.success(), "{}", common::text(&out));
    assert!(
        file.exists(),
        "prune as root deleted {} through a spool link the owner planted",
        file.display()
    );
}

#[test]
fn a_refused_run_by_another_user_leaves_nothing_the_owner_cannot_use() {
    let scratch = Scratch::new();
    // A repository shared with an operators' group: writable by the group, owned by postgres.
    std::fs::set_permissions(&scratch.repo, std::fs::Permissions::from_mode(0o770)).expect("chmod");
    let gid = std::fs::metadata(&scratch.repo).expect("stat").gid();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups"])
        .arg(&scratch.bin)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("BACKUP_DIR", &scratch.repo)
        .env("DB_HOST", "127.0.0.1")
        .env("DB_PORT", free_port().to_string())
        .args(["backup", "postgres"])
        .output()
        .expect("setpriv");
    assert!(!out.status.success(), "another user's backup is refused");
    let owner = std::fs::metadata(&scratch.repo).expect("stat").uid();
    for entry in std::fs::read_dir(&scratch.repo).expect("ls") {
        let entry = entry.expect("entry");
        assert_eq!(
            entry.metadata().expect("stat").uid(),
            owner,
            "a refused run left {} owned by another user",
            entry.path().display()
        );
    }
    let listed = scratch.lifeline(&["list"], &[]);
    assert!(listed.status.success(), "{}", common::text(&listed));
}

#[test]
fn a_failed_command_whose_stderr_is_closed_does_not_exit_0() {
    let scratch = Scratch::new();
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = as_root(&scratch)
        .args(["backup", "postgres"])
        .stdout(Stdio::null())
        .stderr(writer)
        .output()
        .expect("run");
    assert_ne!(
        out.status.code(),
        Some(0),
        "a failed backup exited 0 because nobody read its error"
    );
}
