//! Issue 12: a repository that stays consistent whatever the machine does. History and
//! backup-history files are checked before they are archived; verify names truncated packs
//! and broken history files from listings alone; `kill -9` leftovers are counted by verify and
//! removed by prune; old operation logs are removed by prune.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Pg, Scratch, backup, code, files_under, seed, succeeded, text};

/// Files under `dir` whose name starts with `.tmp.` (what a local put writes before its rename).
fn temp_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp."))
        })
        .collect()
}

fn wal_objects(scratch: &Scratch) -> Vec<PathBuf> {
    files_under(&scratch.repo.join("wal"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/.tmp."))
        .collect()
}

/// `lifeline ARGS` as postgres, running in the background.
fn spawn_lifeline(scratch: &Scratch, args: &[&str], env: &[(String, String)]) -> Child {
    use std::os::unix::process::CommandExt;
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("id")
    };
    let mut cmd = Command::new(&scratch.bin);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("TZ", "UTC")
        .env("BACKUP_DIR", &scratch.repo)
        .current_dir(scratch.dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .uid(id("-u"))
        .gid(id("-g"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("spawn lifeline")
}

/// Start `lifeline ARGS` and `kill -9` it as soon as a temporary file appears under `watch`.
/// Returns whether it was caught mid-write (false: it finished first).
fn kill_while_writing(
    scratch: &Scratch,
    args: &[&str],
    env: &[(String, String)],
    watch: &Path,
) -> bool {
    let before = temp_files(watch).len();
    let mut child = spawn_lifeline(scratch, args, env);
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if temp_files(watch).len() > before {
            child.kill().expect("kill -9");
            child.wait().expect("wait");
            return true;
        }
        if child.try_wait().expect("try_wait").is_some() {
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "lifeline {args:?} never finished"
        );
    }
}

/// `rows` rows of 1 MiB of random bytes each, stored uncompressed: WAL and packs that
/// compression cannot shrink, so writing them takes long enough to be interrupted.
fn add_noise(pg: &Pg, first: i32, rows: i32) {
    pg.psql(&format!(
        "INSERT INTO noise SELECT g, decode(string_agg(md5(random()::text || i), ''), 'hex') \
         FROM generate_series({first}, {}) g, generate_series(1, 65536) i GROUP BY g",
        first + rows - 1
    ));
}

fn noise_digest(pg: &Pg) -> String {
    pg.psql("SELECT count(*) || ':' || md5(string_agg(md5(b), '' ORDER BY id)) FROM noise")
}

#[test]
fn wal_push_refuses_history_files_that_do_not_parse_and_verify_names_them() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    pg.switch_and_archive();
    backup(&scratch, &pg);
    // PostgreSQL archived the backup's real backup-history file through the same checks. The
    // backup waits for its last segment only; the archiver pushes the history file after it.
    let archived = |scratch: &Scratch| {
        wal_objects(scratch)
            .iter()
            .any(|p| p.to_string_lossy().ends_with(".backup"))
    };
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    while !archived(&scratch) && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(
        archived(&scratch),
        "the backup-history file was not archived: {:?}",
        wal_objects(&scratch)
    );
    let objects_before = wal_objects(&scratch);

    let incoming = scratch.path("incoming");
    std::fs::create_dir(&incoming).expect("mkdir");
    let push = |name: &str, bytes: &[u8]| {
        let path = incoming.join(name);
        std::fs::write(&path, bytes).expect("write");
        let out = scratch.lifeline(&["wal", "push", path.to_str().expect("utf8")], &[]);
        (code(&out), text(&out))
    };
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let refused: [(&str, &[u8], &str); 5] = [
        ("00000002.history", &random, "not text"),
        (
            "00000002.history",
            b"1\t0/3000158\n",
            "no reason after the LSN",
        ),
        (
            "00000002.history",
            b"2\t0/3000158\tno recovery target specified\n",
            "as a parent of timeline 2",
        ),
        (
            "000000010000000000000009.00000028.backup",
            b"LABEL: nightly\nSTART TIME: 2025-01-01 00:00:00 UTC\n",
            "START WAL LOCATION, STOP WAL LOCATION, CHECKPOINT LOCATION",
        ),
        (
            "000000010000000000000009.00000028.backup",
            &random,
            "not text",
        ),
    ];
    for (name, bytes, why) in refused {
        let (status, out) = push(name, bytes);
        assert_eq!(status, 1, "{name} ({why}) was not refused with 1: {out}");
        assert!(out.contains(name) && out.contains(why), "{why}: {out}");
        assert!(out.contains("nothing was archived"), "{out}");
        assert_eq!(
            wal_objects(&scratch),
            objects_before,
            "{why}: something stored"
        );
    }

    // A correct history file is archived.
    let (status, out) = push(
        "00000002.history",
        b"1\t0/3000158\tno recovery target specified\n",
    );
    assert_eq!(status, 0, "a valid history file was refused: {out}");
    let history = wal_objects(&scratch)
        .into_iter()
        .find(|p| p.ends_with("00000002.history"))
        .expect("history archived");
    let out = scratch.lifeline(&["verify"], &[]);
    succeeded(&out, "verify of a sound repository");

    // One that an older version archived unchecked: verify names it, with or without
    // --read-data, and fails.
    let key = history
        .strip_prefix(&scratch.repo)
        .expect("in repo")
        .to_string_lossy()
        .into_owned();
    let (_, garbage) = storage::object::encode(
        &random,
        storage::Compression {
            codec: storage::Codec::None,
            level: 0,
            workers: 0,
        },
    )
    .expect("encode");
    std::fs::write(&history, garbage).expect("overwrite");
    for args in [&["verify"][..], &["verify", "--read-data"][..]] {
        let out = scratch.lifeline(args, &[]);
        assert_eq!(code(&out), 1, "{args:?}: {}", text(&out));
        assert!(
            text(&out).contains(&format!(
                "history file {key} does not parse: it is not text"
            )),
            "{args:?}: {}",
            text(&out)
        );
    }
}

#[test]
fn verify_without_read_data_names_a_truncated_pack() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    pg.switch_and_archive();
    backup(&scratch, &pg);
    succeeded(&scratch.lifeline(&["verify"], &[]), "verify before");
    let list = scratch.lifeline(&["list", "--json"], &[]);
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).expect("json");
    let backup_id = list[0]["backup_id"]
        .as_str()
        .expect("backup id")
        .to_string();

    let pack = files_under(&scratch.repo.join("packs"))
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a pack");
    let len = std::fs::metadata(&pack).expect("pack").len();
    std::fs::File::options()
        .write(true)
        .open(&pack)
        .and_then(|f| f.set_len(len / 2))
        .expect("truncate");
    let key = pack
        .strip_prefix(&scratch.repo)
        .expect("in repo")
        .to_string_lossy()
        .into_owned();

    let out = scratch.lifeline(&["verify"], &[]);
    assert_eq!(code(&out), 1, "{}", text(&out));
    let line = text(&out)
        .lines()
        .find(|l| l.contains(&key))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("{key} not named: {}", text(&out)));
    assert!(line.contains("truncated"), "{line}");
    assert!(line.contains(&backup_id), "{line}");
}

#[test]
fn prune_removes_logs_older_than_the_longest_retention() {
    let scratch = Scratch::new();
    let logs = scratch.repo.join("logs");
    std::fs::create_dir(&logs).expect("mkdir");
    let touch = |name: &str, ago: &str| {
        let path = logs.join(name);
        std::fs::write(&path, "RESULT: SUCCESS\n").expect("write");
        let out = Command::new("touch")
            .args(["-d", ago])
            .arg(&path)
            .output()
            .expect("touch");
        assert!(out.status.success());
        path
    };
    let old_log = touch("backup_20231101_010000.log", "2 years ago");
    let old_drill = touch("drill_20231101_020000.json", "2 years ago");
    let recent_log = touch("backup_20250101_010000.log", "11 months ago");
    let fresh_log = touch("verify_20251101_010000.log", "now");
    let not_a_log = touch("notes.txt", "2 years ago");
    common::chown_postgres(&scratch.repo);
    let kept = [&recent_log, &fresh_log, &not_a_log];

    let out = scratch.lifeline(&["prune", "--dry-run"], &[]);
    let printed = succeeded(&out, "prune --dry-run");
    assert!(
        printed.contains("would remove 2 operation logs and drill reports"),
        "{printed}"
    );
    for path in [&old_log, &old_drill] {
        assert!(printed.contains(&path.display().to_string()), "{printed}");
        assert!(path.exists(), "the dry run removed {}", path.display());
    }
    for path in kept {
        assert!(!printed.contains(&path.display().to_string()), "{printed}");
    }

    let out = scratch.lifeline(&["prune"], &[]);
    let printed = succeeded(&out, "prune");
    assert!(
        printed.contains("removed 2 operation logs and drill reports"),
        "{printed}"
    );
    assert!(!old_log.exists() && !old_drill.exists(), "old logs stayed");
    for path in kept {
        assert!(path.exists(), "{} removed", path.display());
    }

    // A shorter configured monthly window: the 11-month-old log goes too.
    let config = scratch.path("short.toml");
    std::fs::write(&config, "keep-monthly = 6\n").expect("config");
    let config = config.to_string_lossy().into_owned();
    let out = scratch.lifeline(&["prune"], &[("LIFELINE_CONFIG", config.as_str())]);
    succeeded(&out, "prune with keep-monthly = 6");
    assert!(
        !recent_log.exists(),
        "an 11-month-old log outlived 6 months"
    );
    assert!(fresh_log.exists() && not_a_log.exists());
}

#[test]
fn leftovers_of_kill_9_are_counted_by_verify_and_removed_by_prune() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    let db_env = pg.db_env();
    seed(&pg);
    pg.psql("CREATE TABLE noise (id int PRIMARY KEY, b bytea)");
    pg.psql("ALTER TABLE noise ALTER b SET STORAGE EXTERNAL");
    add_noise(&pg, 1, 14);
    pg.switch_and_archive();
    backup(&scratch, &pg);
    let expected = (pg.snapshot_in("postgres").len(), noise_digest(&pg));
    let accounts = pg.psql("SELECT count(*) || ':' || sum(balance) FROM accounts");

    // A `wal push` of a 16 MiB segment of random bytes killed while it writes: take the
    // largest archived segment out of the repository and push it again.
    let segment_object = wal_objects(&scratch)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a segment");
    let key = segment_object
        .strip_prefix(&scratch.repo)
        .expect("in repo")
        .to_string_lossy()
        .into_owned();
    let plain = storage::object::decode(&key, &std::fs::read(&segment_object).expect("read"))
        .expect("decode");
    assert_eq!(plain.len(), 16 << 20);
    let incoming = scratch.path("incoming");
    std::fs::create_dir(&incoming).expect("mkdir");
    let segment = incoming.join(segment_object.file_name().expect("name"));
    std::fs::write(&segment, &plain).expect("write segment");
    let segment_arg = segment.to_string_lossy().into_owned();
    let wal_dir = segment_object.parent().expect("dir").to_path_buf();
    let mut caught = false;
    for _ in 0..20 {
        std::fs::remove_file(&segment_object).ok();
        if kill_while_writing(&scratch, &["wal", "push", &segment_arg], &[], &wal_dir) {
            caught = true;
            break;
        }
    }
    assert!(caught, "never caught wal push writing");

    // A backup killed while it writes a pack (new random rows, so it has packs to write).
    let mut caught = false;
    for round in 0..5 {
        add_noise(&pg, 100 + round * 40, 40);
        if kill_while_writing(
            &scratch,
            &["backup", "postgres"],
            &db_env,
            &scratch.repo.join("packs"),
        ) {
            caught = true;
            break;
        }
    }
    assert!(caught, "never caught a backup writing a pack");
    // And a `wal fetch` spool write cut short.
    let spool_temp = scratch
        .repo
        .join("spool/7/000000010000000000000003.partial.4242");
    std::fs::create_dir_all(spool_temp.parent().expect("dir")).expect("mkdir");
    std::fs::write(&spool_temp, vec![0u8; 4096]).expect("spool temp");
    common::chown_postgres(&scratch.repo.join("spool"));

    // Archive the segment whole again: the repository itself is complete.
    let out = scratch.lifeline(&["wal", "push", &segment_arg], &[]);
    succeeded(&out, "wal push after the killed one");

    let mut leftovers = temp_files(&scratch.repo);
    assert!(
        leftovers.iter().any(|p| p.starts_with(&wal_dir))
            && leftovers
                .iter()
                .any(|p| p.starts_with(scratch.repo.join("packs"))),
        "expected leftovers in wal/ and packs/: {leftovers:?}"
    );
    leftovers.push(spool_temp.clone());
    let out = scratch.lifeline(&["verify"], &[]);
    let printed = succeeded(&out, "verify with leftovers (not a failure)");
    assert!(
        printed.contains(&format!(
            "{} temporary files left by interrupted runs (",
            leftovers.len()
        )),
        "{printed}"
    );
    assert!(
        printed.contains("removed by prune after the grace period"),
        "{printed}"
    );

    // Within the default grace period (24 h) prune leaves them: a live writer's look the same.
    let out = scratch.lifeline(&["prune"], &[]);
    let printed = succeeded(&out, "prune within the grace period");
    assert!(
        printed.contains(&format!("{} temporary files (", leftovers.len()))
            && printed.contains("younger than the 24 h grace period"),
        "{printed}"
    );
    assert!(leftovers.iter().all(|p| p.exists()));

    let grace0 = [("LIFELINE_PRUNE_GRACE_SECONDS", "0")];
    let out = scratch.lifeline(&["prune", "--dry-run"], &grace0);
    let printed = succeeded(&out, "prune --dry-run");
    for path in &leftovers {
        assert!(printed.contains(&path.display().to_string()), "{printed}");
        assert!(path.exists(), "the dry run removed {}", path.display());
    }
    let out = scratch.lifeline(&["prune"], &grace0);
    let printed = succeeded(&out, "prune after the grace period");
    assert!(
        printed.contains(&format!(
            "removed {} temporary files left by interrupted runs",
            leftovers.len()
        )),
        "{printed}"
    );
    assert_eq!(temp_files(&scratch.repo), Vec::<PathBuf>::new());
    assert!(!spool_temp.exists());

    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    let printed = succeeded(&out, "verify after prune");
    assert!(!printed.contains("temporary files"), "{printed}");

    // The repository still restores: the backup taken before the kills, recovered.
    drop(pg);
    let restored = scratch.restore_and_recover(&["--type", "full"], "restored", "restore");
    let backup_state = (
        restored.snapshot_in("postgres").len(),
        noise_digest(&restored),
    );
    let noise_rows: i64 = backup_state
        .1
        .split(':')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("count");
    assert_eq!(
        restored.psql("SELECT count(*) || ':' || sum(balance) FROM accounts"),
        accounts
    );
    // The latest complete backup is the first one unless a later backup finished before it
    // was caught; either way it holds at least what the first had.
    assert!(noise_rows >= 14, "{backup_state:?} vs {expected:?}");
    if noise_rows == 14 {
        assert_eq!(backup_state, expected);
    }
}
