//! The repository stays private and keeps one owner whatever the operator does: files 0600 and
//! directories 0700 under the usual umask 022, a missing BACKUP_DIR refused rather than
//! created, and a run as root leaving everything to the repository's owner.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{Pg, Scratch, code, env_refs, seed, succeeded, text};

/// Who runs a command in these tests.
#[derive(Clone, Copy, PartialEq)]
enum As {
    Postgres,
    Root,
}

/// The uid and gid of the repository's owner (Scratch gives it to postgres).
fn owner_of(path: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(path).expect("stat");
    (meta.uid(), meta.gid())
}

/// Run lifeline under `umask 022` (as an operator's shell has it), with BACKUP_DIR set.
fn lifeline_umask_022(scratch: &Scratch, user: As, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("umask 022; exec \"$0\" \"$@\"")
        .arg(&scratch.bin)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TZ", "UTC")
        .env("BACKUP_DIR", &scratch.repo)
        .current_dir(scratch.dir.path());
    if user == As::Postgres {
        let (uid, gid) = owner_of(&scratch.repo);
        cmd.uid(uid).gid(gid);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run lifeline")
}

/// Every path under `root` (not `root` itself), not following links.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if std::fs::symlink_metadata(&path).expect("stat").is_dir() {
                stack.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

/// A cluster whose archive_command runs `prefix` and then `lifeline wal push %p`.
fn cluster_archiving_with(scratch: &Scratch, prefix: &str) -> Pg {
    let pg = Pg::init(scratch, "primary");
    let conf = pg.data.join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf).expect("read conf");
    text.push_str(&format!(
        "archive_command = '{prefix} {} {} wal push %p'\n",
        scratch.bin.display(),
        scratch.repository_args()
    ));
    std::fs::write(&conf, text).expect("write conf");
    pg.start();
    pg
}

/// The system identifier and the archived segment names, oldest first, from `wal/`.
fn archived_segments(repo: &Path) -> (String, Vec<String>) {
    let sysid = std::fs::read_dir(repo.join("wal"))
        .expect("wal/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .next()
        .expect("a cluster in wal/");
    let mut names: Vec<String> = walk(&repo.join("wal").join(&sysid))
        .iter()
        .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    names.sort();
    (sysid, names)
}

#[test]
fn a_repository_stays_private_under_umask_022() {
    let scratch = Scratch::new();
    let pg = cluster_archiving_with(&scratch, "umask 022;");
    seed(&pg);
    pg.switch_and_archive();
    let env = pg.db_env();
    let env = env_refs(&env);
    let run = |args: &[&str], env: &[(&str, &str)], what: &str| {
        succeeded(&lifeline_umask_022(&scratch, As::Postgres, args, env), what)
    };
    run(&["backup", "postgres"], &env, "backup");
    pg.psql("INSERT INTO orders (account, amount) VALUES (1, 1)");
    pg.switch_and_archive();
    pg.psql("INSERT INTO orders (account, amount) VALUES (2, 2)");
    pg.switch_and_archive();
    run(&["status"], &[], "status");
    run(&["verify"], &[], "verify");
    run(&["prune", "--dry-run"], &[], "prune --dry-run");
    let restored = scratch.path("restored");
    let restored_s = restored.to_string_lossy().into_owned();
    run(
        &[
            "restore",
            "postgres",
            "--type",
            "full",
            "--data-dir",
            &restored_s,
        ],
        &[],
        "restore (which takes a lease)",
    );
    // The spool `wal fetch` reads ahead into.
    let (sysid, segments) = archived_segments(&scratch.repo);
    run(
        &["wal", "prefetch", &segments[0], "--cluster", &sysid],
        &[("LIFELINE_WAL_PREFETCH", "4")],
        "wal prefetch",
    );

    for expected in [
        "catalog.db",
        "cluster.json",
        ".backup_status",
        "logs",
        "wal",
        "packs",
        "backups",
        "leases",
        "spool",
    ] {
        assert!(
            scratch.repo.join(expected).exists(),
            "{expected} missing from the repository"
        );
    }
    let exposed: Vec<String> = walk(&scratch.repo)
        .into_iter()
        .filter_map(|path| {
            let mode = std::fs::symlink_metadata(&path).expect("stat").mode() & 0o7777;
            (mode & 0o077 != 0).then(|| format!("{} {mode:o}", path.display()))
        })
        .collect();
    assert!(
        exposed.is_empty(),
        "readable by group or others under umask 022:\n{}",
        exposed.join("\n")
    );
}

#[test]
fn a_missing_backup_dir_is_refused_and_never_created() {
    let scratch = Scratch::new();
    let pg = Pg::init(&scratch, "primary");
    let segment = pg.data.join("pg_wal/000000010000000000000001");
    let segment_s = segment.to_string_lossy().into_owned();
    let missing = scratch.path("unmounted");
    let missing_s = missing.to_string_lossy().into_owned();
    let env = pg.db_env();
    let mut env = env_refs(&env);
    env.push(("BACKUP_DIR", &missing_s));
    for args in [
        vec!["wal", "push", segment_s.as_str()],
        vec!["backup", "postgres"],
        vec!["prune"],
        vec!["list"],
    ] {
        let out = scratch.lifeline(&args, &env);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert_eq!(code(&out), 1, "{args:?}: {}", text(&out));
        assert!(
            stderr.contains(&missing_s) && stderr.contains("does not exist"),
            "{args:?} does not say that {missing_s} does not exist: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(!missing.exists(), "{args:?} created {missing_s}");
    }
    let out = scratch.lifeline(&["wal", "push", &segment_s], &env);
    assert!(
        text(&out).contains(&format!("mkdir -m 700 {missing_s}")),
        "the fix is not named: {}",
        text(&out)
    );
}

#[test]
fn a_run_as_root_leaves_everything_to_the_repository_owner() {
    let scratch = Scratch::new();
    let staging = scratch.path("staging");
    std::fs::create_dir(&staging).expect("mkdir");
    common::chown_postgres(&staging);
    // Every segment is also kept aside, for root to push again below.
    let pg = cluster_archiving_with(&scratch, &format!("cp %p {}/%f &&", staging.display()));
    seed(&pg);
    pg.switch_and_archive();
    let (uid, gid) = owner_of(&scratch.repo);
    assert_ne!(uid, 0);
    let env = pg.db_env();
    let env = env_refs(&env);

    // Root: a backup, WAL pushes that create the WAL directories again, status and verify.
    let as_root = |args: &[&str], env: &[(&str, &str)], what: &str| {
        succeeded(&lifeline_umask_022(&scratch, As::Root, args, env), what)
    };
    as_root(&["backup", "postgres"], &env, "backup as root");
    pg.psql("INSERT INTO orders (account, amount) VALUES (2, 2)");
    pg.switch_and_archive();
    let (sysid, _) = archived_segments(&scratch.repo);
    std::fs::remove_dir_all(scratch.repo.join("wal").join(&sysid)).expect("rm wal");
    let mut kept: Vec<PathBuf> = std::fs::read_dir(&staging)
        .expect("staging")
        .map(|e| e.expect("entry").path())
        .collect();
    kept.sort();
    assert!(!kept.is_empty(), "nothing was archived");
    for segment in &kept {
        let segment = segment.to_string_lossy().into_owned();
        as_root(&["wal", "push", &segment], &[], "wal push as root");
    }
    as_root(&["status"], &[], "status as root");
    as_root(&["verify"], &[], "verify as root");

    let foreign: Vec<String> = walk(&scratch.repo)
        .into_iter()
        .filter_map(|path| {
            let meta = std::fs::symlink_metadata(&path).expect("stat");
            ((meta.uid(), meta.gid()) != (uid, gid))
                .then(|| format!("{} {}:{}", path.display(), meta.uid(), meta.gid()))
        })
        .collect();
    assert!(
        foreign.is_empty(),
        "not owned by the repository's owner ({uid}:{gid}) after runs as root:\n{}",
        foreign.join("\n")
    );

    // The nightly job, as postgres, carries on.
    let as_postgres = |args: &[&str], env: &[(&str, &str)], what: &str| {
        succeeded(&lifeline_umask_022(&scratch, As::Postgres, args, env), what)
    };
    pg.psql("INSERT INTO orders (account, amount) VALUES (1, 1)");
    as_postgres(
        &["backup", "postgres"],
        &env,
        "backup as postgres after root",
    );
    pg.psql("INSERT INTO orders (account, amount) VALUES (3, 3)");
    pg.switch_and_archive();
    as_postgres(&["prune", "--dry-run"], &[], "prune --dry-run as postgres");
    as_postgres(&["verify"], &[], "verify as postgres");
}

#[test]
fn another_user_is_told_to_run_as_the_owner() {
    let scratch = Scratch::new();
    let pg = Pg::init(&scratch, "primary");
    let segment = pg.data.join("pg_wal/000000010000000000000001");
    let nobody = Command::new(&scratch.bin)
        .args(["wal", "push"])
        .arg(&segment)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("BACKUP_DIR", &scratch.repo)
        .current_dir("/")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody");
    assert_eq!(code(&nobody), 1, "{}", text(&nobody));
    assert!(
        text(&nobody).contains("run it as postgres")
            && text(&nobody).contains("runuser -u postgres"),
        "{}",
        text(&nobody)
    );
    assert!(
        walk(&scratch.repo).is_empty(),
        "a refused push wrote into the repository"
    );
}
