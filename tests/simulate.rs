//! `SIMULATE_MODE=true` against a real PostgreSQL and a real redis-server: every command that
//! would change something runs its read-only checks, says what it would do, and changes
//! nothing: no backup, no restored file, no pruned backup, no archived WAL, no key, no status
//! or operation log of an operation that did not happen. `wal push` does not exit 0, so that
//! PostgreSQL keeps a segment that was not archived.

mod common;

use std::path::{Path, PathBuf};

use common::redis::Redis;
use common::{Pg, Scratch, code, env_refs, files_under, succeeded, text};

const SIMULATE: (&str, &str) = ("SIMULATE_MODE", "true");

/// What a command must leave alone: each file under these places with its size and mtime.
fn state(places: &[PathBuf]) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    places
        .iter()
        .flat_map(|p| files_under(p))
        .map(|f| {
            let meta = std::fs::symlink_metadata(&f).expect("stat");
            (f, meta.len(), meta.modified().expect("mtime"))
        })
        .collect()
}

fn repository_places(scratch: &Scratch) -> Vec<PathBuf> {
    ["backups", "packs", "logs", "keys.json", ".backup_status"]
        .iter()
        .map(|p| scratch.repo.join(p))
        .collect()
}

fn simulated<'a>(env: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all = env.to_vec();
    all.push(SIMULATE);
    all
}

#[test]
fn postgres_commands_under_simulate_mode_say_what_they_would_do_and_change_nothing() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    common::seed(&pg);
    let first = common::backup(&scratch, &pg);
    let db_env = pg.db_env();
    let env = simulated(&env_refs(&db_env));
    // A real restore first (it logs, and records itself in .backup_status): the stopped data
    // directory a delta restore would reuse.
    let target = scratch.path("restored here");
    succeeded(&scratch.restore(&["--type", "full"], &target), "restore");
    let restored = state(std::slice::from_ref(&target));
    assert!(!restored.is_empty());
    let before = state(&repository_places(&scratch));
    let unchanged = |what: &str| {
        assert_eq!(
            state(&repository_places(&scratch)),
            before,
            "{what} under SIMULATE_MODE changed the repository, its logs or .backup_status"
        );
    };

    let out = scratch.lifeline(&["backup", "postgres"], &env);
    let said = succeeded(&out, "simulated base backup");
    assert!(
        said.contains("SIMULATE_MODE: would take a base backup of PostgreSQL")
            && said.contains("building on backup_")
            && said.contains("nothing was changed"),
        "{said}"
    );
    unchanged("backup postgres");

    let out = scratch.lifeline(&["backup", "postgres", "--kind", "dump"], &env);
    let said = succeeded(&out, "simulated dump");
    assert!(
        said.contains("SIMULATE_MODE: would dump database postgres"),
        "{said}"
    );
    unchanged("backup postgres --kind dump");

    // The same checks as a real backup: a server that does not answer fails it.
    let mut wrong = env.clone();
    wrong.push(("DB_PORT", "1"));
    let out = scratch.lifeline(&["backup", "postgres"], &wrong);
    assert_eq!(code(&out), 1, "{}", text(&out));
    // ... and so does a user who may read the settings but not start a backup.
    pg.psql("CREATE ROLE reader LOGIN IN ROLE pg_read_all_settings");
    let mut reader = env.clone();
    reader.push(("DB_USER", "reader"));
    let out = scratch.lifeline(&["backup", "postgres"], &reader);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("may not run pg_backup_start()"),
        "{}",
        text(&out)
    );

    // A restore into a new directory: planned and checked, nothing created.
    let fresh = scratch.path("new 'dir' %");
    let out = simulated_restore(&scratch, &["--type", "full"], &fresh);
    let said = succeeded(&out, "simulated restore");
    assert!(
        said.contains("SIMULATE_MODE: would restore backup backup_")
            && said.contains("every pack it needs is in the repository"),
        "{said}"
    );
    assert!(
        !fresh.exists(),
        "a simulated restore created {}",
        fresh.display()
    );

    // The same refusal as a real restore: a directory that is not empty.
    let out = simulated_restore(&scratch, &["--type", "full"], &target);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("is not empty"), "{}", text(&out));

    // ... and a directory this user may not create.
    let out = simulated_restore(
        &scratch,
        &["--type", "full"],
        Path::new("/usr/lifeline-x/data"),
    );
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("cannot be written by this user"),
        "{}",
        text(&out)
    );

    // A delta restore onto the stopped restored directory: checked, and left as it was; what
    // it would remove is counted (one more once a file the backup lacks is added).
    let removals = |out: &std::process::Output| -> usize {
        let said = succeeded(out, "simulated delta restore");
        assert!(
            said.contains("onto the stopped data directory of its cluster"),
            "{said}"
        );
        let (_, after) = said.split_once("removing ").expect("a count");
        after
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a number")
    };
    let restored = state(std::slice::from_ref(&target));
    let lacking = removals(&simulated_restore(
        &scratch,
        &["--type", "full", "--delta"],
        &target,
    ));
    let extra = target.join("left over");
    std::fs::write(&extra, b"not in the backup").expect("extra file");
    common::chown_postgres(&extra);
    let with_extra = state(std::slice::from_ref(&target));
    let second = removals(&simulated_restore(
        &scratch,
        &["--type", "full", "--delta"],
        &target,
    ));
    assert_eq!(second, lacking + 1);
    assert_eq!(
        state(std::slice::from_ref(&target)),
        with_extra,
        "a simulated delta restore changed files"
    );
    assert_ne!(restored, with_extra);
    // What the real delta restore would refuse midway, the simulation refuses too.
    let locked = target.join("locked");
    std::fs::create_dir_all(locked.join("sub")).expect("mkdir");
    common::chown_postgres(&locked);
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000))
        .expect("chmod");
    let out = simulated_restore(&scratch, &["--type", "full", "--delta"], &target);
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .expect("chmod");
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("--delta"), "{}", text(&out));
    unchanged("restore postgres");

    // Prune: the plan, nothing deleted (the same as --dry-run), and no catalog written: one
    // that is missing stays missing.
    let absent = scratch.path("no catalog.db");
    let absent_text = absent.to_string_lossy().into_owned();
    let mut no_catalog = env.clone();
    no_catalog.push(("LIFELINE_CATALOG", absent_text.as_str()));
    let out = scratch.lifeline(&["prune"], &no_catalog);
    let said = succeeded(&out, "simulated prune");
    assert!(said.contains("keep") && said.contains("dry run"), "{said}");
    assert!(!absent.exists(), "a simulated prune created the catalog");
    let out = simulated_restore_with(&scratch, &["--type", "full"], &fresh, &no_catalog);
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(!absent.exists(), "a simulated restore created the catalog");
    unchanged("prune");

    // A dump that is not there is refused, as by the real restore.
    let out = scratch.lifeline(
        &[
            "restore",
            "postgres",
            "--type",
            "full",
            "--file",
            "/nonexistent.dump",
        ],
        &env,
    );
    assert_eq!(code(&out), 1, "{}", text(&out));

    let out = scratch.lifeline(&["catalog", "rebuild"], &env);
    let said = succeeded(&out, "simulated catalog rebuild");
    assert!(
        said.contains("SIMULATE_MODE: would rebuild the catalog"),
        "{said}"
    );

    // Key changes on a plain repository holding backups: refused, as the real runs refuse.
    let mut with_passphrase = env.clone();
    with_passphrase.push(("LIFELINE_PASSPHRASE", "a passphrase"));
    with_passphrase.push(("LIFELINE_NEW_PASSPHRASE", "another passphrase"));
    for (args, refusal) in [
        (&["repo", "init"][..], "already holds backups or WAL"),
        (&["key", "add"][..], "is not encrypted"),
        (&["key", "remove", "7"][..], "is not encrypted"),
    ] {
        let out = scratch.lifeline(args, &with_passphrase);
        assert_eq!(code(&out), 1, "{}: {}", args.join(" "), text(&out));
        assert!(text(&out).contains(refusal), "{}", text(&out));
    }
    unchanged("repo init and key add");

    // wal push: nothing archived, and exit 1 so that PostgreSQL keeps the file and asks again.
    let segment = scratch.path("00000001000000000000FFFF");
    std::fs::write(&segment, vec![0u8; 16 << 20]).expect("segment");
    common::chown_postgres(&segment);
    let out = scratch.lifeline(&["wal", "push", &segment.to_string_lossy()], &env);
    let said = text(&out);
    assert_eq!(code(&out), 1, "{said}");
    assert!(
        said.contains("SIMULATE_MODE=true: would archive") && said.contains("not archived"),
        "{said}"
    );
    let archived = files_under(&scratch.repo.join("wal"));
    assert!(
        !archived
            .iter()
            .any(|f| f.ends_with("00000001000000000000FFFF")),
        "a simulated push archived the segment"
    );
    unchanged("wal push");

    // And the data is what it was: the backup taken first is still the newest.
    let out = scratch.lifeline(&["list", "--json"], &[]);
    let listed = succeeded(&out, "list");
    assert_eq!(
        listed.matches("\"backup_id\"").count(),
        1,
        "{listed}\n{first}"
    );
}

fn simulated_restore(scratch: &Scratch, args: &[&str], dir: &Path) -> std::process::Output {
    simulated_restore_with(scratch, args, dir, &[SIMULATE])
}

fn simulated_restore_with(
    scratch: &Scratch,
    args: &[&str],
    dir: &Path,
    env: &[(&str, &str)],
) -> std::process::Output {
    let dir = dir.to_string_lossy().into_owned();
    let mut all = vec!["restore", "postgres"];
    all.extend_from_slice(args);
    all.extend(["--data-dir", dir.as_str()]);
    scratch.lifeline(&all, env)
}

#[test]
fn redis_backup_and_restore_under_simulate_mode_change_nothing() {
    let scratch = Scratch::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = Redis::start(dir.path(), None);
    redis.cli(&["SET", "greeting", "hello"]);
    let port = redis.port.to_string();
    let env = [("REDIS_HOST", "127.0.0.1"), ("REDIS_PORT", port.as_str())];
    succeeded(
        &scratch.lifeline(&["backup", "redis"], &env),
        "Redis backup",
    );
    let before = state(&repository_places(&scratch));

    let out = scratch.lifeline(&["backup", "redis"], &simulated(&env));
    let said = succeeded(&out, "simulated Redis backup");
    assert!(
        said.contains("SIMULATE_MODE: would back up Redis at 127.0.0.1")
            && said.contains("(1 keys)"),
        "{said}"
    );

    let target = scratch.path("redis restored");
    let out = scratch.lifeline(
        &["restore", "redis", "--data-dir", &target.to_string_lossy()],
        &simulated(&env),
    );
    let said = succeeded(&out, "simulated Redis restore");
    assert!(
        said.contains("SIMULATE_MODE: would restore the Redis RDB files of backup"),
        "{said}"
    );
    assert!(
        !target.exists(),
        "a simulated Redis restore created {}",
        target.display()
    );

    // Refused as the real runs refuse: an AOF backup of a Redis without one, an AOF "file",
    // and the directory the running Redis works in.
    let out = scratch.lifeline(&["backup", "redis", "--kind", "aof"], &simulated(&env));
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("appendonly off"), "{}", text(&out));
    let rdb = scratch.path("dump.rdb");
    std::fs::write(&rdb, b"REDIS0011").expect("rdb");
    common::chown_postgres(&rdb);
    let (rdb_arg, target_arg) = (rdb.to_string_lossy(), target.to_string_lossy());
    let out = scratch.lifeline(
        &[
            "restore",
            "redis",
            "--type",
            "aof",
            "--file",
            &rdb_arg,
            "--data-dir",
            &target_arg,
        ],
        &simulated(&env),
    );
    assert_eq!(code(&out), 1, "{}", text(&out));
    let out = scratch.lifeline(
        &[
            "restore",
            "redis",
            "--data-dir",
            &dir.path().to_string_lossy(),
        ],
        &simulated(&env),
    );
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(text(&out).contains("is running in"), "{}", text(&out));
    assert_eq!(state(&repository_places(&scratch)), before);
}

#[test]
fn key_changes_under_simulate_mode_are_checked_and_described_not_made() {
    let scratch = Scratch::new().encrypted("correct horse battery staple");
    succeeded(&scratch.lifeline(&["repo", "init"], &[]), "repo init");
    let keys = scratch.repo.join("keys.json");
    let before = std::fs::read(&keys).expect("keys.json");
    // With a home where the unlocked key would be cached: a simulation caches nothing.
    let home = scratch.path("home");
    std::fs::create_dir(&home).expect("mkdir home");
    common::chown_postgres(&home);
    let home_arg = home.to_string_lossy().into_owned();
    let new = [
        SIMULATE,
        ("LIFELINE_NEW_PASSPHRASE", "a second passphrase"),
        ("HOME", home_arg.as_str()),
    ];
    for (args, says) in [
        (&["key", "add"][..], "would add a key slot"),
        (&["key", "rotate"][..], "would start data key epoch 2"),
        (
            &["key", "rotate", "--rewrite", "--new-master"][..],
            "with a new master key",
        ),
    ] {
        let out = scratch.lifeline(args, &new);
        let said = succeeded(&out, &args.join(" "));
        assert!(said.contains(says), "{said}");
    }
    // The checks of the real runs: the last slot stays, a wrong passphrase unlocks nothing.
    let out = scratch.lifeline(&["key", "remove", "0"], &[SIMULATE]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let out = scratch.lifeline(
        &["key", "add"],
        &[SIMULATE, ("LIFELINE_PASSPHRASE", "wrong")],
    );
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert_eq!(
        std::fs::read(&keys).expect("keys.json"),
        before,
        "keys.json changed"
    );
    let out = scratch.lifeline(&["key", "list"], &[SIMULATE]);
    let listed = succeeded(&out, "key list");
    assert_eq!(listed.matches("slot").count(), 1, "{listed}");
    // A command that opens the repository the usual way (key commands unlock it uncached).
    succeeded(&scratch.lifeline(&["prune"], &new), "simulated prune");
    assert_eq!(
        std::fs::read_dir(&home).expect("home").count(),
        0,
        "a simulated run wrote into HOME: {:?}",
        files_under(&home)
    );
    // A run that changes nothing without SIMULATE_MODE caches the key in the same home: the
    // check above can fail.
    succeeded(&scratch.lifeline(&["verify"], &new[1..]), "verify");
    assert_eq!(files_under(&home.join(".cache")).len(), 1);
}
