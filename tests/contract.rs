//! The archive_command / restore_command contract, corruption handling and bad input, against a
//! real PostgreSQL 15 cluster.

mod common;

use std::path::Path;

use common::{Pg, Scratch, backup, code, succeeded, text};

/// The first archived segment's name and its original bytes (fetched and verified).
fn archived_segment(scratch: &Scratch) -> (String, Vec<u8>) {
    let mut names: Vec<String> = walk(&scratch.repo.join("wal"))
        .into_iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    let name = names.first().expect("a segment was archived").clone();
    let dest = scratch.path("fetched-original");
    let out = scratch.lifeline(&["wal", "fetch", &name, dest.to_str().expect("utf8")], &[]);
    assert!(out.status.success(), "fetch: {}", text(&out));
    (name, std::fs::read(&dest).expect("read fetched"))
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn write_as_postgres(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write");
    std::process::Command::new("chown")
        .arg("postgres:postgres")
        .arg(path)
        .status()
        .expect("chown");
}

#[test]
fn wal_push_and_fetch_contract() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    pg.switch_and_archive();
    let (name, original) = archived_segment(&scratch);
    assert_eq!(original.len(), 16 << 20);

    // An identical re-push succeeds.
    let incoming = scratch.path("incoming");
    std::fs::create_dir(&incoming).expect("mkdir");
    std::process::Command::new("chown")
        .arg("postgres:postgres")
        .arg(&incoming)
        .status()
        .expect("chown");
    let same = incoming.join(&name);
    write_as_postgres(&same, &original);
    let out = scratch.lifeline(&["wal", "push", same.to_str().expect("utf8")], &[]);
    assert_eq!(code(&out), 0, "identical re-push: {}", text(&out));

    // Different bytes under the archived name: refused, exit <= 125, original kept.
    let mut changed = original.clone();
    changed[100_000] ^= 0xFF;
    write_as_postgres(&same, &changed);
    let out = scratch.lifeline(&["wal", "push", same.to_str().expect("utf8")], &[]);
    assert!(
        code(&out) != 0 && code(&out) <= 125,
        "conflicting push exit {}: {}",
        code(&out),
        text(&out)
    );
    assert!(
        text(&out).contains("already archived with different contents"),
        "{}",
        text(&out)
    );
    let (_, after) = archived_segment(&scratch);
    assert!(after == original, "the archived segment was overwritten");

    // An unwritable catalog does not stop archiving: the object is what counts.
    write_as_postgres(&same, &original);
    let third = scratch.path("third-repo");
    std::fs::create_dir(&third).expect("mkdir");
    common::chown_postgres(&third);
    let out = scratch.lifeline(
        &["wal", "push", same.to_str().expect("utf8")],
        &[
            ("BACKUP_DIR", third.to_str().expect("utf8")),
            ("LIFELINE_CATALOG", "/proc/no-such-dir/catalog.db"),
        ],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(
        text(&out).contains("not recorded in the catalog"),
        "{}",
        text(&out)
    );
    assert!(walk(&third.join("wal")).iter().any(|p| p.ends_with(&name)));

    // A segment from another cluster: refused.
    let other = Pg::init(&scratch, "other");
    let foreign = other.data.join("pg_wal/000000010000000000000001");
    let out = scratch.lifeline(&["wal", "push", foreign.to_str().expect("utf8")], &[]);
    assert!(code(&out) != 0 && code(&out) <= 125, "{}", text(&out));
    assert!(text(&out).contains("belongs to cluster"), "{}", text(&out));

    // Not a WAL file, and a truncated segment: refused with a clear message.
    let bogus = incoming.join("000000010000000000000099");
    write_as_postgres(&bogus, &original[..1 << 20]);
    let out = scratch.lifeline(&["wal", "push", bogus.to_str().expect("utf8")], &[]);
    assert!(
        code(&out) != 0 && code(&out) <= 125 && text(&out).contains("not an archivable WAL file"),
        "{}",
        text(&out)
    );

    // A partial segment longer than a segment: refused before it is read.
    let partial = incoming.join(format!("{name}.partial"));
    let mut longer = original.clone();
    longer.push(0);
    write_as_postgres(&partial, &longer);
    let out = scratch.lifeline(&["wal", "push", partial.to_str().expect("utf8")], &[]);
    assert!(
        code(&out) != 0 && code(&out) <= 125 && text(&out).contains("more than the"),
        "{}",
        text(&out)
    );
    // At a segment's size it is archived (compressed in halves) and fetched back as it was.
    write_as_postgres(&partial, &original);
    let out = scratch.lifeline(&["wal", "push", partial.to_str().expect("utf8")], &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    let fetched = incoming.join("fetched-partial");
    let out = scratch.lifeline(
        &[
            "wal",
            "fetch",
            &format!("{name}.partial"),
            fetched.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(std::fs::read(&fetched).expect("fetched") == original);

    // Fetch of a name never archived: exit 1, quietly.
    let dest = incoming.join("RECOVERYXLOG");
    let out = scratch.lifeline(
        &[
            "wal",
            "fetch",
            "0000000100000000000000FF",
            dest.to_str().expect("utf8"),
        ],
        &[],
    );
    assert_eq!(code(&out), 1, "{}", text(&out));
    assert!(
        !text(&out).contains("ERROR") && !dest.exists(),
        "{}",
        text(&out)
    );

    // Fetch writes exactly the archived bytes.
    let out = scratch.lifeline(&["wal", "fetch", &name, dest.to_str().expect("utf8")], &[]);
    assert_eq!(code(&out), 0, "{}", text(&out));
    assert!(std::fs::read(&dest).expect("read") == original);

    // A corrupted object: exit above 125, and nothing written.
    let object = walk(&scratch.repo.join("wal"))
        .into_iter()
        .find(|p| p.ends_with(&name))
        .expect("object");
    let mut stored = std::fs::read(&object).expect("read object");
    let mid = stored.len() / 2;
    stored[mid] ^= 0x55;
    std::fs::write(&object, &stored).expect("corrupt");
    let dest2 = incoming.join("RECOVERYXLOG2");
    let out = scratch.lifeline(&["wal", "fetch", &name, dest2.to_str().expect("utf8")], &[]);
    assert!(
        code(&out) > 125,
        "corrupt fetch exit {}: {}",
        code(&out),
        text(&out)
    );
    assert!(!dest2.exists());
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    assert!(
        code(&out) != 0 && text(&out).contains(&name) && text(&out).contains("corrupt"),
        "verify --read-data missed the corrupt WAL object: {}",
        text(&out)
    );

    // The repository cannot be read: exit above 125.
    let out = scratch.lifeline(
        &["wal", "fetch", &name, dest2.to_str().expect("utf8")],
        &[("BACKUP_DIR", "/nonexistent/repo")],
    );
    assert!(
        code(&out) > 125,
        "missing repository exit {}: {}",
        code(&out),
        text(&out)
    );
}

#[test]
fn concurrent_pushes_all_land_in_the_catalog() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    for i in 0..6 {
        pg.psql(&format!(
            "CREATE TABLE t{i} AS SELECT g FROM generate_series(1, 20000) g"
        ));
        pg.switch_and_archive();
    }
    let segments: Vec<std::path::PathBuf> = walk(&scratch.repo.join("wal"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.len() == 24))
        .collect();
    assert!(segments.len() >= 6, "{segments:?}");
    let incoming = scratch.path("incoming");
    std::fs::create_dir(&incoming).expect("mkdir");
    std::process::Command::new("chown")
        .args(["postgres:postgres"])
        .arg(&incoming)
        .status()
        .expect("chown");
    for segment in &segments {
        let name = segment
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        let dest = incoming.join(&name);
        let out = scratch.lifeline(&["wal", "fetch", &name, dest.to_str().expect("utf8")], &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    std::process::Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&incoming)
        .status()
        .expect("chown");
    // Every segment pushed at once by its own process into a fresh (empty) repository.
    let second = scratch.path("second-repo");
    std::fs::create_dir(&second).expect("mkdir");
    common::chown_postgres(&second);
    let second_s = second.to_str().expect("utf8").to_string();
    let handles: Vec<_> = std::fs::read_dir(&incoming)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .map(|path| {
            let scratch_bin = scratch.bin.clone();
            let second_s = second_s.clone();
            std::thread::spawn(move || {
                common::lifeline_as_postgres(
                    &scratch_bin,
                    &["wal", "push", path.to_str().expect("utf8")],
                    &[("BACKUP_DIR", &second_s)],
                )
            })
        })
        .collect();
    for h in handles {
        let out = h.join().expect("push thread");
        assert!(
            out.status.success(),
            "concurrent push failed: {}",
            text(&out)
        );
    }
    let out = scratch.lifeline(&["status", "--json"], &[("BACKUP_DIR", &second_s)]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert_eq!(
        status["wal_files"].as_u64(),
        Some(segments.len() as u64),
        "{status}"
    );
    let out = scratch.lifeline(&["verify", "--read-data"], &[("BACKUP_DIR", &second_s)]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn pitr_refuses_a_gap_in_the_archive() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    pg.psql("CREATE TABLE t (g int)");
    backup(&scratch, &pg);
    for _ in 0..3 {
        pg.psql("INSERT INTO t SELECT generate_series(1, 1000)");
        pg.switch_and_archive();
    }
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let target = common::server_second(&pg);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    pg.psql("INSERT INTO t VALUES (0)");
    pg.switch_and_archive();

    // Lose one segment between the backup and the target.
    let mut segments: Vec<_> = walk(&scratch.repo.join("wal"))
        .into_iter()
        .filter(|p| p.file_name().is_some_and(|n| n.len() == 24))
        .collect();
    segments.sort();
    let lost = segments[segments.len() - 3].clone();
    let lost_name = lost
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    std::fs::remove_file(&lost).expect("remove segment");
    let dir = scratch.path("restored");
    let out = scratch.restore(&["--type", "pitr", "--until", &target], &dir);
    assert!(
        code(&out) != 0,
        "a restore across a gap was allowed: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("gap") && text(&out).contains(&lost_name),
        "{}",
        text(&out)
    );
    assert!(
        !dir.exists(),
        "the refused restore wrote into the data directory"
    );
}

#[test]
fn corrupted_and_missing_chunks_and_bad_input() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 50000) g");
    backup(&scratch, &pg);
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    assert!(
        out.status.success(),
        "verify of a fresh repository: {}",
        text(&out)
    );

    // A manifest copied under another backup's name (to pass an old backup off as a new one)
    // is reported and skipped by a catalog rebuild, and flagged by verify.
    let backups = scratch.repo.join("backups");
    let original = std::fs::read_dir(&backups)
        .expect("backups")
        .flatten()
        .find(|e| e.path().join("manifest").exists())
        .expect("a backup")
        .file_name();
    let forged = backups.join("backup_20990101_000000");
    common::copy_tree(&backups.join(&original), &forged);
    let out = scratch.lifeline(&["catalog", "rebuild"], &[]);
    assert!(
        code(&out) == 1
            && text(&out).contains("backup_20990101_000000")
            && text(&out).contains("claims to be backup"),
        "{}",
        text(&out)
    );
    let listed = succeeded(&scratch.lifeline(&["list"], &[]), "list");
    assert!(!listed.contains("backup_20990101_000000"), "{listed}");
    let out = scratch.lifeline(&["verify"], &[]);
    assert!(
        code(&out) != 0 && text(&out).contains("claims to be backup"),
        "{}",
        text(&out)
    );
    std::fs::remove_dir_all(&forged).expect("remove the copy");
    succeeded(&scratch.lifeline(&["catalog", "rebuild"], &[]), "rebuild");

    // Bad input, each a one-line error naming the fix, nothing written.
    let dir = scratch.path("target");
    let dir_s = dir.to_str().expect("utf8");
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                "restore",
                "postgres",
                "--type",
                "pitr",
                "--until",
                "yesterday at noon",
                "--data-dir",
                dir_s,
            ],
            vec![],
            "is not a time",
        ),
        (
            vec![
                "restore",
                "postgres",
                "--type",
                "pitr",
                "--until",
                "2001-01-01 00:00:00+00:00",
                "--data-dir",
                dir_s,
            ],
            vec![],
            "no base backup ended before",
        ),
        (
            vec![
                "restore",
                "postgres",
                "--type",
                "pitr",
                "--until",
                "2999-01-01 00:00:00+00:00",
                "--data-dir",
                dir_s,
            ],
            vec![],
            "past the end of the archive",
        ),
        (
            vec![
                "restore",
                "postgres",
                "--type",
                "full",
                "--from",
                "backup_19990101_000000",
                "--data-dir",
                dir_s,
            ],
            vec![],
            "no backup backup_19990101_000000",
        ),
        (
            vec!["list"],
            vec![("BACKUP_DIR", "/nonexistent/repo")],
            "BACKUP_DIR",
        ),
        (
            vec!["restore", "postgres", "--type", "full", "--data-dir", dir_s],
            vec![("BACKUP_DIR", "/nonexistent/repo")],
            "BACKUP_DIR",
        ),
    ];
    for (args, env, expected) in cases {
        let out = scratch.lifeline(&args, &env);
        assert!(code(&out) != 0, "{args:?} succeeded");
        assert!(
            text(&out).contains(expected),
            "{args:?}: expected {expected:?} in {}",
            text(&out)
        );
        assert!(!dir.exists(), "{args:?} wrote into the data directory");
    }
    // A non-empty data directory is refused and left alone.
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("precious"), "keep me").expect("write");
    std::process::Command::new("chown")
        .args(["-R", "postgres:postgres"])
        .arg(&dir)
        .status()
        .expect("chown");
    let out = scratch.lifeline(
        &["restore", "postgres", "--type", "full", "--data-dir", dir_s],
        &[],
    );
    assert!(
        code(&out) != 0 && text(&out).contains("is not empty"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("precious")).expect("read"),
        "keep me"
    );
    assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 1);

    // Corrupt bytes inside a pack: verify --read-data names it; a restore refuses and leaves nothing.
    let packs: Vec<_> = walk(&scratch.repo.join("packs"));
    let victim = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a chunk")
        .clone();
    let victim_name = victim
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let mut bytes = std::fs::read(&victim).expect("read pack");
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 16] {
        *b ^= 0x01;
    }
    std::fs::write(&victim, &bytes).expect("corrupt pack");
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    assert!(
        code(&out) != 0,
        "verify missed the corruption: {}",
        text(&out)
    );
    assert!(
        text(&out).contains(&victim_name) && text(&out).contains("corrupt"),
        "{}",
        text(&out)
    );
    let fresh = scratch.path("fresh");
    let out = scratch.restore(&["--type", "full"], &fresh);
    assert!(
        code(&out) != 0,
        "restore used a corrupt chunk: {}",
        text(&out)
    );
    assert!(text(&out).contains(&victim_name), "{}", text(&out));
    assert!(!fresh.exists(), "a half-restored directory was left behind");

    // Delete the pack: plain verify names it missing; restore refuses before writing anything.
    std::fs::remove_file(&victim).expect("remove pack");
    let out = scratch.lifeline(&["verify"], &[]);
    assert!(
        code(&out) != 0 && text(&out).contains(&victim_name) && text(&out).contains("missing"),
        "{}",
        text(&out)
    );
    let out = scratch.restore(&["--type", "full"], &fresh);
    assert!(
        code(&out) != 0 && text(&out).contains("missing"),
        "{}",
        text(&out)
    );
    assert!(!fresh.exists());
}

#[test]
fn list_and_status_report_backups_and_wal() {
    let scratch = Scratch::new();
    let pg = Pg::running(&scratch, "primary");
    pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");
    backup(&scratch, &pg);
    let out = scratch.lifeline(&["list", "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json is JSON");
    let backup = &list[0];
    assert_eq!(backup["service"], "postgresql");
    assert_eq!(backup["state"], "complete");
    let id = backup["backup_id"].as_str().expect("id");
    let metadata: serde_json::Value = serde_json::from_slice(
        &std::fs::read(scratch.repo.join(format!("backups/{id}/{id}.metadata")))
            .expect("metadata file"),
    )
    .expect("metadata is JSON");
    for field in [
        "backup_id",
        "type",
        "service",
        "timestamp",
        "size_bytes",
        "size_readable",
        "duration_seconds",
        "files",
        "checksum",
        "verified",
        "retention",
        "restorability",
    ] {
        assert!(metadata.get(field).is_some(), "metadata lacks {field}");
    }
    // The manifest records the row counts that post-recovery checks compare against.
    let key = format!("backups/{id}/manifest");
    let framed = std::fs::read(scratch.repo.join(&key)).expect("manifest object");
    let plain = storage::object::decode(&key, &framed).expect("manifest decodes");
    let manifest = storage::manifest::BackupManifest::from_json(&key, &plain).expect("manifest");
    assert_eq!(
        manifest.row_counts.get("public.t"),
        Some(&1000),
        "{:?}",
        manifest.row_counts
    );
    assert_eq!(manifest.backup_id, id);
    let out = scratch.lifeline(&["status", "--json"], &[]);
    let status: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    assert!(status["last_wal"]["name"].as_str().is_some(), "{status}");
    assert!(status["repository_bytes"].as_u64().expect("bytes") > 0);
    let out = scratch.lifeline(&["list"], &[]);
    assert!(text(&out).contains(id));
}

#[test]
fn the_command_line_describes_itself_and_takes_postgres_for_postgresql() {
    let scratch = Scratch::new();
    let out = scratch.lifeline(&["--version"], &[]);
    let said = text(&out);
    assert!(
        said.starts_with("lifeline ") && said.contains("(commit "),
        "{said}"
    );
    for (shell, expected) in [
        ("bash", "_lifeline()"),
        ("zsh", "#compdef lifeline"),
        ("fish", "complete -c lifeline"),
    ] {
        let out = scratch.lifeline(&["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {}", text(&out));
        assert!(text(&out).contains(expected), "{shell}: {}", text(&out));
        assert!(
            text(&out).contains("verify-recovery"),
            "{shell} completes the commands"
        );
    }
    let out = scratch.lifeline(&["man"], &[]);
    assert!(
        out.status.success() && text(&out).contains(".TH lifeline 1"),
        "{}",
        text(&out)
    );
    let out = scratch.lifeline(&["list", "--service", "postgres"], &[]);
    assert!(
        out.status.success(),
        "list --service postgres: {}",
        text(&out)
    );
    // Every --json output is versioned; the runbook keeps the seed's keys.
    let out = scratch.lifeline(&["runbook", "--json"], &[]);
    let runbook: serde_json::Value = serde_json::from_slice(&out.stdout).expect("runbook json");
    assert_eq!(runbook["schema"], 1);
    assert_eq!(runbook["backup_retention_policy"]["daily"], 7);
    let out = scratch.lifeline(&["status", "--json"], &[]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status json");
    assert_eq!(status["schema"], 1, "{status}");
    // Every flag says what it does.
    for command in [
        &["list"][..],
        &["status"],
        &["verify"],
        &["drill"],
        &["backup", "postgres"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let help = text(&scratch.lifeline(&args, &[]));
        let bare: Vec<&str> = help
            .lines()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0].trim_start().starts_with("--") && w[1].trim().is_empty())
            .map(|w| w[0])
            .collect();
        assert!(bare.is_empty(), "{command:?}: flags without help: {bare:?}");
    }
}
