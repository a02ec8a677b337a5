//! Restores that cannot harm production: a restored server archives nothing unless asked, its
//! recovery settings survive any path, and a low open-file limit does not break a restore of a
//! data directory with more than a thousand files.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::{Pg, Scratch, chown_postgres, run_as_postgres, seed, succeeded, text};

/// WAL files of `timeline` in the repository (any cluster).
fn archived_on_timeline(repo: &Path, timeline: u32) -> Vec<String> {
    let mut names = Vec::new();
    let Ok(clusters) = std::fs::read_dir(repo.join("wal")) else {
        return names;
    };
    for cluster in clusters.flatten() {
        let Ok(files) = std::fs::read_dir(cluster.path().join(timeline.to_string())) else {
            continue;
        };
        names.extend(
            files
                .flatten()
                .map(|f| f.file_name().to_string_lossy().into_owned()),
        );
    }
    names
}

#[test]
fn a_restored_server_started_with_defaults_archives_nothing() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    common::backup(&scratch, &pg);

    let dir = scratch.path("copy");
    let out = scratch.restore(&["--type", "full"], &dir);
    let said = succeeded(&out, "restore with defaults");
    assert!(
        said.contains("will not archive") && said.contains("--archive-mode preserve"),
        "the closing message does not say the copy will not archive: {said}"
    );
    let copy = Pg::recover(&scratch, dir);
    assert_eq!(copy.psql("SHOW archive_mode"), "off");
    // The copy promotes onto timeline 2 and writes; nothing of it reaches the repository.
    copy.psql("INSERT INTO accounts VALUES (90001, 'the copy', 1)");
    copy.psql("SELECT pg_switch_wal()");
    copy.psql("CHECKPOINT");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        archived_on_timeline(&scratch.repo, 2),
        Vec::<String>::new(),
        "a restored copy archived into production's repository"
    );
    assert_eq!(
        copy.psql("SELECT archived_count FROM pg_stat_archiver"),
        "0"
    );
    copy.stop();
    pg.stop();
}

#[test]
fn recovery_settings_survive_a_space_quote_percent_and_backslash_in_paths() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    common::backup(&scratch, &pg);
    pg.psql("INSERT INTO accounts VALUES (90002, 'after the backup', 2)");
    pg.switch_and_archive();
    let expected = pg.snapshot();
    pg.stop();

    // The binary and the repository move to a directory whose name PostgreSQL's configuration
    // syntax, its `%` expansion and the shell would all misread if written verbatim.
    let odd = scratch.path(r"it's 100%f \odd dir");
    std::fs::create_dir(&odd).expect("mkdir");
    let bin = odd.join("life line");
    std::fs::copy(&scratch.bin, &bin).expect("copy binary");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let repo = odd.join(r"re'po\%p");
    common::copy_tree(&scratch.repo, &repo);
    chown_postgres(&odd);

    let dir = scratch.path("restored");
    let repo_text = repo.to_string_lossy().into_owned();
    let dir_text = dir.to_string_lossy().into_owned();
    let out = common::lifeline_as_postgres(
        &bin,
        &[
            "restore",
            "postgres",
            "--type",
            "pitr",
            "--until",
            "latest",
            "--data-dir",
            &dir_text,
        ],
        &[("BACKUP_DIR", &repo_text)],
    );
    succeeded(&out, "restore from the odd repository");
    let copy = Pg::recover(&scratch, dir);
    assert_eq!(
        copy.snapshot(),
        expected,
        "rows differ after recovery through the odd restore_command"
    );
    let log = copy.log();
    assert!(
        log.contains("restored log file"),
        "recovery did not fetch WAL through restore_command:\n{log}"
    );
    copy.stop();
}

#[test]
fn a_low_open_file_limit_still_restores_a_thousand_files() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    // 1,100 tables with a row each: one small relation file each, so that one chunk of the
    // small-file bundle spans a hundred files.
    pg.psql(
        "DO $$ BEGIN FOR i IN 1..1100 LOOP \
         EXECUTE format('CREATE TABLE t%s (id int)', i); \
         EXECUTE format('INSERT INTO t%s VALUES (%s)', i, i); END LOOP; END $$",
    );
    common::backup(&scratch, &pg);
    pg.stop();
    let files = walk_count(&pg.data.join("base"));
    assert!(files > 1000, "only {files} files in base/");

    let dir = scratch.path("restored");
    let script = format!(
        "ulimit -n 256 && exec {} restore postgres --type full --data-dir {}",
        scratch.bin.display(),
        dir.display()
    );
    let out = run_as_postgres_env("bash", &["-c", &script], &scratch.repo);
    succeeded(&out, "restore under ulimit -n 256");
    let copy = Pg::recover(&scratch, dir);
    assert_eq!(
        copy.psql("SELECT count(*) FROM pg_class WHERE relname ~ '^t[0-9]+$'"),
        "1100"
    );
    for i in [1, 2, 550, 1099, 1100] {
        assert_eq!(copy.psql(&format!("SELECT id FROM t{i}")), i.to_string());
    }
    copy.stop();
}

fn walk_count(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    if e.path().is_dir() {
                        walk_count(&e.path())
                    } else {
                        1
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A program run as postgres with BACKUP_DIR set (for a shell that lowers its limits first).
fn run_as_postgres_env(program: &str, args: &[&str], repo: &Path) -> std::process::Output {
    let out = run_as_postgres(
        "env",
        &[
            &[
                "-i",
                "PATH=/usr/bin:/bin",
                "TZ=UTC",
                &format!("BACKUP_DIR={}", repo.display()),
                program,
            ][..],
            args,
        ]
        .concat(),
    );
    if !out.status.success() {
        eprintln!("{}", text(&out));
    }
    out
}

#[test]
fn a_restore_stopped_by_a_signal_removes_what_it_wrote() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    // Enough data that the restore is still writing when the signal comes.
    pg.psql("CREATE TABLE big AS SELECT g, md5(g::text) AS h FROM generate_series(1, 3000000) g");
    common::backup(&scratch, &pg);
    pg.stop();

    let dir = scratch.path("restored");
    let (uid, gid) = (
        std::fs::metadata(&scratch.repo).map(|m| std::os::unix::fs::MetadataExt::uid(&m)),
        std::fs::metadata(&scratch.repo).map(|m| std::os::unix::fs::MetadataExt::gid(&m)),
    );
    let child = {
        use std::os::unix::process::CommandExt;
        std::process::Command::new(&scratch.bin)
            .args(["restore", "postgres", "--type", "full", "--data-dir"])
            .arg(&dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("BACKUP_DIR", &scratch.repo)
            .env("LIFELINE_TRANSFERS", "1")
            .current_dir(scratch.dir.path())
            .uid(uid.expect("uid"))
            .gid(gid.expect("gid"))
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the restore")
    };
    // As soon as the restore has begun writing, stop it as systemd or Ctrl-C would.
    let marker = dir.join(".lifeline-restore-incomplete");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !marker.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the restore never started writing"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = child.id().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let out = child.wait_with_output().expect("wait");
    let said = text(&out);
    assert!(!out.status.success(), "the restore finished anyway: {said}");
    assert!(said.contains("interrupted"), "{said}");
    assert!(
        !dir.exists(),
        "an interrupted restore left {}: {:?}",
        dir.display(),
        std::fs::read_dir(&dir).map(|d| d.count())
    );
    // A second restore into the same place works.
    let out = scratch.restore(&["--type", "full"], &dir);
    succeeded(&out, "a restore after the interrupted one");
}

/// Resident bytes of `path` in the page cache (util-linux `fincore`).
fn cached_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--raw", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("run fincore");
    assert!(out.status.success(), "fincore: {}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("fincore prints a number")
}

/// A restore writes through the page cache, leaving the restored files there for the server;
/// `LIFELINE_DIRECT_IO=true` writes relation blocks with O_DIRECT, leaving them out of it.
/// Both recover every row.
#[test]
fn direct_writes_can_be_asked_for_and_both_restores_recover_every_row() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    pg.psql("CREATE TABLE wide AS SELECT g AS id, repeat(md5(g::text), 8) AS pad FROM generate_series(1, 20000) g");
    let table = pg.psql("SELECT pg_relation_filepath('wide')");
    let before = pg.snapshot();
    common::backup(&scratch, &pg);
    pg.stop();

    for (name, env) in [
        ("direct", vec![("LIFELINE_DIRECT_IO", "true")]),
        ("cached", vec![]),
    ] {
        let dir = scratch.path(name);
        let out = scratch.restore_with(&["--type", "full"], &dir, &env);
        succeeded(&out, &format!("restore ({name})"));
        let file = dir.join(&table);
        let size = std::fs::metadata(&file).expect("the table's file").len();
        assert!(size > 4 << 20, "the table is only {size} bytes");
        let cached = cached_bytes(&file);
        if name == "direct" {
            // Only the last piece, when it is short, goes through the page cache.
            assert!(
                cached < 256 << 10,
                "{cached} of {size} bytes left in the page cache"
            );
        } else {
            assert!(
                cached > size / 2,
                "only {cached} of {size} bytes in the page cache"
            );
        }
        let copy = Pg::recover(&scratch, dir);
        assert_eq!(copy.snapshot(), before, "{name}");
        copy.stop();
    }
}
