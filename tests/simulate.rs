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

    // A delta restore onto the stopped restored directory: checked, and left as it was.
    let out = simulated_restore(&scratch, &["--type", "full", "--delta"], &target);
    let said = succeeded(&out, "simulated delta restore");
    assert!(
        said.contains("onto the stopped data directory of its cluster"),
        "{said}"
    );
    assert_eq!(
        state(std::slice::from_ref(&target)),
        restored,
        "a simulated delta restore changed files"
    );
    unchanged("restore postgres");

    // Prune: the plan, nothing deleted (the same as --dry-run).
    let out = scratch.lifeline(&["prune"], &env);
    succeeded(&out, "simulated prune");
    unchanged("prune");

    let out = scratch.lifeline(&["catalog", "rebuild"], &env);
    let said = succeeded(&out, "simulated catalog rebuild");
    assert!(
        said.contains("SIMULATE_MODE: would rebuild the catalog"),
        "{said}"
    );

    for (args, says) in [
        (
            &["repo", "init"][..],
            "would make this repository encrypted",
        ),
        (&["key", "add"][..], "would add a key slot"),
    ] {
        let out = scratch.lifeline(args, &env);
        let said = succeeded(&out, &args.join(" "));
        assert!(said.contains(says), "{said}");
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
    let dir = dir.to_string_lossy().into_owned();
    let mut all = vec!["restore", "postgres"];
    all.extend_from_slice(args);
    all.extend(["--data-dir", dir.as_str()]);
    scratch.lifeline(&all, &[SIMULATE])
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
    assert_eq!(state(&repository_places(&scratch)), before);
}
