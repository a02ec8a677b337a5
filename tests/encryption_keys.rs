//! Encrypted repositories under attack and under key management, against real PostgreSQL 15
//! clusters: tampered, truncated or misplaced sealed objects are refused with a clear error
//! (never a panic, never wrong rows); key slots and epochs change while every backup stays
//! restorable row for row; drills and prune with repacking work in an encrypted repository.

mod common;

use common::files_under;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{Pg, Scratch, backup, code, env_refs, run_as_postgres, seed, succeeded, text};

const PASSPHRASE: &str = "correct horse battery staple";
const SECOND: &str = "a second passphrase, for the night shift";
const HEADER_LEN: usize = 32;
/// 64 KiB of ciphertext and its 16-byte tag.
const STORED_SEGMENT: usize = (1 << 16) + 16;

/// Add `line` to the scratch's configuration file (the encrypted scratch has one).
fn configure(scratch: &Scratch, line: &str) {
    let config = scratch
        .config
        .clone()
        .expect("an encrypted scratch has a config");
    let mut text = std::fs::read_to_string(&config).expect("read config");
    text.push_str(line);
    text.push('\n');
    std::fs::write(&config, text).expect("write config");
}

/// A file only postgres can read, holding `content` and a newline.
fn secret_file(scratch: &Scratch, name: &str, content: &str) -> PathBuf {
    let path = scratch.path(name);
    std::fs::write(&path, format!("{content}\n")).expect("write secret");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    common::chown_postgres(&path);
    path
}

/// A directory owned by postgres.
fn postgres_dir(scratch: &Scratch, name: &str, mode: u32) -> PathBuf {
    let path = scratch.path(name);
    std::fs::create_dir(&path).expect("mkdir");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    common::chown_postgres(&path);
    path
}

/// The sealed objects under wal/, packs/ and backups/.
fn data_objects(repo: &Path) -> Vec<PathBuf> {
    ["wal", "packs", "backups"]
        .iter()
        .flat_map(|top| files_under(&repo.join(top)))
        .collect()
}

/// Every object `key rotate --rewrite` re-seals: cluster.json, wal/, packs/, backups/,
/// leases/, prune/.
fn sealed_objects(repo: &Path) -> Vec<PathBuf> {
    let mut all = vec![repo.join("cluster.json")];
    for top in ["wal", "packs", "backups", "leases", "prune"] {
        all.extend(files_under(&repo.join(top)));
    }
    all
}

fn key_of(repo: &Path, path: &Path) -> String {
    path.strip_prefix(repo)
        .expect("under the repository")
        .to_string_lossy()
        .into_owned()
}

/// The key epoch in a sealed object's header.
fn epoch(path: &Path) -> u32 {
    let bytes = std::fs::read(path).expect("read object");
    assert!(
        bytes.starts_with(b"LLOE"),
        "{} is not sealed",
        path.display()
    );
    u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"))
}

fn epochs(repo: &Path, paths: &[PathBuf]) -> BTreeMap<String, u32> {
    paths.iter().map(|p| (key_of(repo, p), epoch(p))).collect()
}

/// Flip one byte of `path` at `at`; returns the original bytes.
fn flip(path: &Path, at: usize) -> Vec<u8> {
    let original = std::fs::read(path).expect("read");
    let mut bytes = original.clone();
    bytes[at] ^= 0x20;
    std::fs::write(path, bytes).expect("write");
    original
}

/// A byte in the middle of the object's body (past the header).
fn middle(path: &Path) -> usize {
    let len = std::fs::metadata(path).expect("stat").len() as usize;
    assert!(len > HEADER_LEN + 16, "{} is too short", path.display());
    HEADER_LEN + (len - HEADER_LEN) / 2
}

/// The output of a command that must have failed cleanly: an exit code (not a signal), no
/// panic, something said.
fn refused(out: &Output, what: &str) -> String {
    let said = text(out);
    assert!(!out.status.success(), "{what} succeeded: {said}");
    assert!(
        out.status.code().is_some(),
        "{what} died of a signal: {said}"
    );
    assert!(!said.contains("panicked"), "{what} panicked: {said}");
    assert!(!said.trim().is_empty(), "{what} failed without a word");
    said
}

/// True when `said` explains that the object was refused as not authentic.
fn says_altered(said: &str) -> bool {
    said.contains("fails authentication") || said.contains("altered")
}

fn list_ids(scratch: &Scratch) -> Vec<String> {
    let out = scratch.lifeline(&["list", "--json"], &[]);
    let said = succeeded(&out, "list --json");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("list --json is not JSON ({e}): {said}"));
    let mut ids: Vec<String> = listed
        .as_array()
        .expect("an array")
        .iter()
        .map(|b| b["backup_id"].as_str().expect("backup_id").to_string())
        .collect();
    ids.sort();
    ids
}

/// `restore postgres --type full --from FROM` into a new directory, with `env`; recovered and
/// promoted.
fn restore_full(scratch: &Scratch, from: &str, name: &str, env: &[(&str, &str)]) -> Pg {
    let dir = scratch.path(name);
    let out = scratch.restore_with(&["--type", "full", "--from", from], &dir, env);
    succeeded(&out, &format!("full restore of {from} into {name}"));
    Pg::recover(scratch, dir)
}

/// A full restore that must be refused.
fn refused_restore(scratch: &Scratch, from: &str, name: &str, what: &str) -> String {
    let dir = scratch.path(name);
    let out = scratch.restore(&["--type", "full", "--from", from], &dir);
    refused(&out, what)
}

/// How a restored data directory's recovery ended.
enum Recovery {
    Promoted(Pg),
    /// The server stopped before promotion; its log.
    Stopped(String),
}

/// Start a restored data directory and wait until it is promoted or has stopped.
fn recover_or_stop(scratch: &Scratch, dir: PathBuf) -> Recovery {
    let pg = Pg::restored(scratch, dir);
    let log = pg.data.with_extension("log");
    let data = pg.data.to_string_lossy().into_owned();
    let pg_ctl = format!("{}/pg_ctl", common::PG_BIN);
    let _ = run_as_postgres(
        &pg_ctl,
        &[
            "-D",
            &data,
            "-l",
            log.to_str().expect("utf8"),
            "-w",
            "-t",
            "60",
            "start",
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = pg.try_psql("SELECT pg_is_in_recovery()");
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "f" {
            return Recovery::Promoted(pg);
        }
        let status = run_as_postgres(&pg_ctl, &["-D", &data, "status"]);
        if !status.status.success() {
            return Recovery::Stopped(pg.log());
        }
        assert!(
            Instant::now() < deadline,
            "recovery neither finished nor stopped; log:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Tampering
// ---------------------------------------------------------------------------------------------

#[test]
fn a_damaged_or_misplaced_pack_is_refused_by_verify_and_restore() {
    let scratch = Scratch::new().encrypted(PASSPHRASE);
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    backup(&scratch, &pg);
    pg.psql("CREATE TABLE later AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 20000) g");
    pg.switch_and_archive();
    backup(&scratch, &pg);
    let expected = pg.snapshot();
    drop(pg);

    let mut packs = files_under(&scratch.repo.join("packs"));
    assert!(packs.len() >= 2, "two backups wrote one pack: {packs:?}");
    packs.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).expect("stat").len()));
    let (victim, other) = (packs[0].clone(), packs[1].clone());
    let victim_key = key_of(&scratch.repo, &victim);
    let victim_id = victim
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();

    // A flipped byte in the middle of the biggest pack (the base files every backup shares).
    let original = flip(&victim, middle(&victim));
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    let said = refused(&out, "verify --read-data of a flipped pack");
    assert!(
        said.contains(&victim_id),
        "verify does not name the damaged pack {victim_key}: {said}"
    );
    let said = refused_restore(&scratch, "latest", "flipped", "restore from a flipped pack");
    assert!(
        says_altered(&said) || said.contains(&victim_id),
        "the restore does not say what is wrong: {said}"
    );
    std::fs::write(&victim, &original).expect("put back");

    // Another pack copied over its name: authentic bytes, but not this object's.
    std::fs::write(&victim, std::fs::read(&other).expect("read other")).expect("copy over");
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    let said = refused(&out, "verify --read-data of a pack under another's name");
    assert!(
        said.contains(&victim_id),
        "verify does not name the misplaced pack {victim_key}: {said}"
    );
    let said = refused_restore(&scratch, "latest", "swapped", "restore from a swapped pack");
    assert!(
        says_altered(&said) || said.contains(&victim_id),
        "the restore does not say what is wrong: {said}"
    );
    std::fs::write(&victim, &original).expect("put back");

    // Cut short by its last byte: verify reads every pack whole and must notice.
    std::fs::write(&victim, &original[..original.len() - 1]).expect("truncate");
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    let said = refused(&out, "verify --read-data of a truncated pack");
    assert!(said.contains(&victim_id), "{said}");
    std::fs::write(&victim, &original).expect("put back");

    // Put back, everything is whole again: verify passes and the rows come back.
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    succeeded(&out, "verify --read-data after putting the pack back");
    let restored = restore_full(&scratch, "latest", "restored", &[]);
    assert_eq!(
        restored.snapshot(),
        expected,
        "rows after the pack was put back"
    );
}

#[test]
fn a_damaged_or_misplaced_manifest_is_refused() {
    let scratch = Scratch::new().encrypted(PASSPHRASE);
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    backup(&scratch, &pg);
    let first_rows = pg.snapshot();
    pg.psql("DELETE FROM orders WHERE id % 2 = 0");
    pg.psql("INSERT INTO accounts VALUES (7777, 'second backup only', 1)");
    pg.switch_and_archive();
    backup(&scratch, &pg);
    let second_rows = pg.snapshot();
    drop(pg);
    assert_ne!(first_rows, second_rows);
    let ids = list_ids(&scratch);
    assert_eq!(ids.len(), 2, "{ids:?}");
    let (first, second) = (&ids[0], &ids[1]);
    let manifest = |id: &str| scratch.repo.join(format!("backups/{id}/manifest"));
    let (m1, m2) = (manifest(first), manifest(second));
    assert!(m2.exists(), "no manifest at {}", m2.display());

    // A flipped byte in the newest backup's manifest.
    let original = flip(&m2, middle(&m2));
    let said = refused_restore(
        &scratch,
        second,
        "flipped",
        "restore from a flipped manifest",
    );
    // Said as the decryption's refusal, not as an I/O failure to look for on the disk.
    assert!(
        says_altered(&said) && !said.contains("repository I/O"),
        "the restore does not say what is wrong: {said}"
    );
    let out = scratch.lifeline(&["verify"], &[]);
    let said = refused(&out, "verify of a flipped manifest");
    assert!(
        said.contains(second.as_str()),
        "verify does not name {second}: {said}"
    );
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    refused(&out, "verify --read-data of a flipped manifest");
    // A flipped header byte (the nonce prefix) is refused the same way.
    std::fs::write(&m2, &original).expect("put back");
    flip(&m2, 20);
    refused_restore(
        &scratch,
        second,
        "flipped-header",
        "restore from a manifest with a flipped header",
    );
    std::fs::write(&m2, &original).expect("put back");

    // The first backup's manifest copied over the second's: restoring "the second backup"
    // must not silently give the first one's rows.
    std::fs::write(&m2, std::fs::read(&m1).expect("read")).expect("copy over");
    let dir = scratch.path("swapped");
    let out = scratch.restore(&["--type", "full", "--from", second], &dir);
    if out.status.success() {
        let restored = Pg::recover(&scratch, dir);
        let rows = restored.snapshot();
        panic!(
            "a manifest copied under another backup's name was accepted; the restore gave {} rows",
            if rows == first_rows {
                "the first backup's"
            } else {
                "unexpected"
            }
        );
    }
    let said = refused(&out, "restore from a manifest under another backup's name");
    // Said as the decryption's refusal, not as an I/O failure to look for on the disk.
    assert!(
        says_altered(&said) && !said.contains("repository I/O"),
        "the restore does not say what is wrong: {said}"
    );
    std::fs::write(&m2, &original).expect("put back");

    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    succeeded(&out, "verify --read-data after putting the manifest back");
    let restored = restore_full(&scratch, second, "restored-second", &[]);
    assert_eq!(restored.snapshot(), second_rows);
    drop(restored);
    let restored = restore_full(&scratch, first, "restored-first", &[]);
    assert_eq!(restored.snapshot(), first_rows);
}

#[test]
fn a_damaged_or_misplaced_wal_object_is_refused_by_wal_fetch_and_stops_recovery() {
    let scratch = Scratch::new().encrypted(PASSPHRASE);
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    backup(&scratch, &pg);
    pg.psql("INSERT INTO accounts VALUES (9001, 'after the backup', 1)");
    let late_segment = pg.psql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    pg.switch_and_archive();
    pg.psql("CREATE TABLE filler AS SELECT g FROM generate_series(1, 1000) g");
    pg.switch_and_archive();
    let expected = pg.snapshot();
    let sysid = pg.psql("SELECT system_identifier FROM pg_control_system()");
    drop(pg);

    let timeline_dir = scratch.repo.join(format!("wal/{sysid}/00000001"));
    let segments: Vec<PathBuf> = files_under(&timeline_dir)
        .into_iter()
        .filter(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            name.len() == 24 && name.chars().all(|c| c.is_ascii_hexdigit())
        })
        .collect();
    assert!(segments.len() >= 3, "{segments:?}");
    let segment = timeline_dir.join(&late_segment);
    assert!(
        segment.exists(),
        "{late_segment} was not archived: {segments:?}"
    );
    let other = segments
        .iter()
        .find(|p| **p != segment)
        .expect("another segment")
        .clone();
    let original = std::fs::read(&segment).expect("read");
    let body_middle = middle(&segment);
    let env = [("LIFELINE_WAL_PREFETCH", "0")];
    let dest = scratch.path("fetched");
    let dest_arg = dest.to_string_lossy().into_owned();
    let fetch = || scratch.lifeline(&["wal", "fetch", &late_segment, &dest_arg], &env);

    let out = fetch();
    succeeded(&out, "wal fetch of an intact segment");
    assert_eq!(
        std::fs::metadata(&dest).expect("fetched").len(),
        16 << 20,
        "the fetched segment is not a whole segment"
    );
    std::fs::remove_file(&dest).expect("remove");

    // Each damage, alone: the fetch exits above 125 (recovery stops) and writes nothing.
    let last = original.len() - 1;
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let flipped = |at: usize| {
        let mut bytes = original.clone();
        bytes[at] ^= 0x20;
        bytes
    };
    cases.push(("a byte in the body".into(), flipped(body_middle)));
    cases.push(("the last tag byte".into(), flipped(last)));
    cases.push(("the magic".into(), flipped(0)));
    cases.push(("the format version".into(), flipped(4)));
    cases.push(("the epoch".into(), flipped(8)));
    cases.push(("a reserved header byte".into(), flipped(13)));
    cases.push(("the nonce prefix".into(), flipped(20)));
    cases.push(("its last byte cut".into(), original[..last].to_vec()));
    cases.push(("cut to its header".into(), original[..HEADER_LEN].to_vec()));
    if original.len() > HEADER_LEN + STORED_SEGMENT {
        // Cut on a segment boundary: every remaining segment is authentic, but not last.
        cases.push((
            "cut on a segment boundary".into(),
            original[..HEADER_LEN + STORED_SEGMENT].to_vec(),
        ));
    }
    cases.push((
        "another segment's object".into(),
        std::fs::read(&other).expect("read other"),
    ));
    let mut bodies = BTreeMap::new();
    for (what, bytes) in &cases {
        std::fs::write(&segment, bytes).expect("tamper");
        let out = fetch();
        let said = refused(&out, &format!("wal fetch with {what}"));
        assert!(
            code(&out) > 125,
            "wal fetch with {what} exited {} (recovery would end early instead of stopping): {said}",
            code(&out)
        );
        assert!(
            !dest.exists(),
            "wal fetch with {what} wrote {}",
            dest.display()
        );
        let leftovers: Vec<_> = std::fs::read_dir(scratch.dir.path())
            .expect("ls")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("fetched"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "wal fetch with {what} left {leftovers:?}"
        );
        assert!(
            said.contains(&late_segment),
            "wal fetch with {what} does not name the segment: {said}"
        );
        bodies.insert(what.clone(), said);
    }
    for what in [
        "a byte in the body",
        "the last tag byte",
        "a reserved header byte",
        "the nonce prefix",
        "its last byte cut",
        "another segment's object",
    ] {
        assert!(
            says_altered(&bodies[what]),
            "wal fetch with {what} does not say the object fails authentication: {}",
            bodies[what]
        );
    }
    assert!(
        bodies["the epoch"].contains("epoch"),
        "{}",
        bodies["the epoch"]
    );
    assert!(
        bodies["the magic"].contains("not sealed"),
        "{}",
        bodies["the magic"]
    );

    // Recovery through the damaged segment stops; it never promotes without the rows.
    std::fs::write(&segment, flipped(body_middle)).expect("tamper");
    let dir = scratch.path("through-damage");
    let out = scratch.restore(&["--type", "pitr", "--until", "latest"], &dir);
    if out.status.success() {
        match recover_or_stop(&scratch, dir) {
            Recovery::Promoted(pg) => {
                let rows = pg.snapshot();
                panic!(
                    "recovery promoted past a damaged WAL segment ({}): {:?}",
                    if rows == expected {
                        "rows complete: the segment was not read"
                    } else {
                        "rows missing"
                    },
                    rows.iter().map(|(t, _)| t).collect::<Vec<_>>()
                );
            }
            Recovery::Stopped(log) => assert!(
                log.contains(&late_segment) || log.contains("FATAL"),
                "recovery stopped without saying why:\n{log}"
            ),
        }
    } else {
        refused(&out, "PITR through a damaged segment");
    }

    // Put back: fetched again, and PITR to the end has every row.
    std::fs::write(&segment, &original).expect("put back");
    let out = fetch();
    succeeded(&out, "wal fetch after putting the segment back");
    std::fs::remove_file(&dest).expect("remove");
    let restored = scratch.restore_and_recover(
        &["--type", "pitr", "--until", "latest"],
        "restored",
        "PITR after putting the segment back",
    );
    assert_eq!(restored.snapshot(), expected);
}

// ---------------------------------------------------------------------------------------------
// 2. Key operations
// ---------------------------------------------------------------------------------------------

#[test]
fn key_slots_are_added_and_removed_with_restores_before_and_after() {
    let scratch = Scratch::new().encrypted(PASSPHRASE);
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    backup(&scratch, &pg);
    pg.switch_and_archive();
    let expected = pg.snapshot();
    drop(pg);

    let out = scratch.lifeline(&["key", "list"], &[]);
    let listed = succeeded(&out, "key list");
    assert!(listed.contains("slot 1 "), "{listed}");
    assert!(!listed.contains("slot 2"), "{listed}");
    assert!(listed.contains("data key epoch 1"), "{listed}");
    let keys_before = std::fs::read(scratch.repo.join("keys.json")).expect("keys.json");

    // A new passphrase from a file; no data is rewritten.
    let objects_before: Vec<(PathBuf, Vec<u8>)> = data_objects(&scratch.repo)
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("read");
            (p, bytes)
        })
        .collect();
    let second = secret_file(&scratch, "second-passphrase", SECOND);
    let second_arg = second.to_string_lossy().into_owned();
    let out = scratch.lifeline(&["key", "add", "--new-passphrase-file", &second_arg], &[]);
    let said = succeeded(&out, "key add");
    assert!(said.contains("added key slot 2"), "{said}");
    assert!(
        !said.contains(SECOND) && !said.contains(PASSPHRASE),
        "{said}"
    );
    let keys_json = std::fs::read_to_string(scratch.repo.join("keys.json")).expect("keys.json");
    assert!(!keys_json.contains(SECOND) && !keys_json.contains(PASSPHRASE));
    assert_ne!(keys_before, keys_json.as_bytes());
    for (path, bytes) in &objects_before {
        assert_eq!(
            &std::fs::read(path).expect("read"),
            bytes,
            "key add rewrote {}",
            path.display()
        );
    }
    let out = scratch.lifeline(&["key", "list"], &[]);
    let listed = succeeded(&out, "key list");
    assert!(
        listed.contains("slot 1 ") && listed.contains("slot 2 "),
        "{listed}"
    );
    assert!(listed.contains("data key epoch 1"), "{listed}");

    // The second passphrase alone restores every row (the environment names its file, over the
    // configuration's); restore_command names the file, never the passphrase.
    let only_second = [("LIFELINE_PASSPHRASE_FILE", second_arg.as_str())];
    let restored = restore_full(&scratch, "latest", "with-second", &only_second);
    assert_eq!(
        restored.snapshot(),
        expected,
        "rows with the second passphrase"
    );
    let auto = std::fs::read_to_string(restored.data.join("postgresql.auto.conf")).expect("auto");
    assert!(
        !auto.contains(SECOND),
        "restore_command holds the passphrase"
    );
    drop(restored);

    // Remove slot 1 (with the first passphrase, as the configuration still says).
    let out = scratch.lifeline(&["key", "remove", "1"], &[]);
    let said = succeeded(&out, "key remove 1");
    assert!(said.contains("removed key slot 1"), "{said}");
    let out = scratch.lifeline(&["key", "list"], &[]);
    let listed = succeeded(&out, "key list");
    assert!(
        !listed.contains("slot 1 ") && listed.contains("slot 2 "),
        "{listed}"
    );

    // The first passphrase opens nothing any more, and says so.
    for args in [
        &["verify"][..],
        &["restore", "postgres", "--type", "full", "--data-dir"][..],
    ] {
        let mut args = args.to_vec();
        let target = scratch.path("refused-restore");
        let target_arg = target.to_string_lossy().into_owned();
        if args[0] == "restore" {
            args.push(&target_arg);
        }
        let out = scratch.lifeline(&args, &[]);
        let said = refused(&out, &format!("{args:?} with the removed passphrase"));
        assert!(said.contains("wrong passphrase"), "{args:?}: {said}");
        assert!(!said.contains(PASSPHRASE), "{said}");
        assert!(!target.exists(), "a refused restore created its target");
    }
    let out = scratch.lifeline(&["key", "add", "--new-passphrase-file", &second_arg], &[]);
    let said = refused(&out, "key add with the removed passphrase");
    assert!(said.contains("wrong passphrase"), "{said}");

    // The configuration's file now holds the second passphrase: it restores every row.
    secret_file(&scratch, "passphrase", SECOND);
    let restored = restore_full(&scratch, "latest", "after-remove", &[]);
    assert_eq!(restored.snapshot(), expected, "rows after removing slot 1");
    drop(restored);

    // The last slot stays, and a slot that is not there is not removed.
    let out = scratch.lifeline(&["key", "remove", "2"], &[]);
    let said = refused(&out, "key remove of the last slot");
    assert!(said.contains("only one"), "{said}");
    let out = scratch.lifeline(&["key", "remove", "7"], &[]);
    let said = refused(&out, "key remove of a slot that does not exist");
    assert!(said.contains("no key slot 7"), "{said}");
    let out = scratch.lifeline(&["key", "list"], &[]);
    let listed = succeeded(&out, "key list");
    assert!(listed.contains("slot 2 "), "{listed}");
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    succeeded(&out, "verify --read-data with the remaining passphrase");
}

/// With a key cache (HOME set, as for any real postgres user), removing the slot of the
/// passphrase one is using must still leave that passphrase refused.
#[test]
fn a_removed_passphrase_is_refused_on_the_host_that_removed_it() {
    let scratch = Scratch::new().encrypted(PASSPHRASE);
    let home = postgres_dir(&scratch, "home", 0o700);
    let home_arg = home.to_string_lossy().into_owned();
    let env = [("HOME", home_arg.as_str())];
    let out = scratch.lifeline(&["repo", "init"], &env);
    succeeded(&out, "repo init");
    let out = scratch.lifeline(&["verify"], &env);
    succeeded(&out, "verify with the first passphrase");
    let second = secret_file(&scratch, "second-passphrase", SECOND);
    let second_arg = second.to_string_lossy().into_owned();
    let out = scratch.lifeline(&["key", "add", "--new-passphrase-file", &second_arg], &env);
    succeeded(&out, "key add");
    let out = scratch.lifeline(&["key", "remove", "1"], &env);
    succeeded(&out, "key remove 1");

    // Elsewhere (no cache), the first passphrase is refused...
    let out = scratch.lifeline(&["verify"], &[]);
    let said = refused(&out, "verify with the removed passphrase, no key cache");
    assert!(said.contains("wrong passphrase"), "{said}");
    // ...and on this host too: a removed passphrase must not live on in the key cache.
    let out = scratch.lifeline(&["verify"], &env);
    assert!(
        !out.status.success(),
        "the removed passphrase still opens the repository through this host's key cache \
         ({}): {}",
        files_under(&home.join(".cache"))
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        text(&out)
    );
    assert!(text(&out).contains("wrong passphrase"), "{}", text(&out));
}

#[test]
fn key_rotation_starts_an_epoch_and_rewrite_reseals_everything_with_every_row_restorable() {
    let scratch = Scratch::new().encrypted(PASSPHRASE);
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    backup(&scratch, &pg);
    pg.switch_and_archive();
    let first_rows = pg.snapshot();
    let first_objects = epochs(&scratch.repo, &data_objects(&scratch.repo));
    assert!(
        first_objects.values().all(|e| *e == 1),
        "objects before any rotation: {first_objects:?}"
    );
    assert_eq!(epoch(&scratch.repo.join("cluster.json")), 1);

    let out = scratch.lifeline(&["key", "rotate"], &[]);
    let said = succeeded(&out, "key rotate");
    assert!(
        said.contains("data key epoch 2: 0 objects re-sealed"),
        "{said}"
    );
    let out = scratch.lifeline(&["key", "list"], &[]);
    assert!(
        succeeded(&out, "key list").contains("data key epoch 2"),
        "{}",
        text(&out)
    );

    // New WAL and a new backup are sealed under epoch 2; the old objects keep epoch 1.
    pg.psql("CREATE TABLE after_rotation AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 3000) g");
    pg.psql("UPDATE accounts SET balance = balance * 2 WHERE id % 3 = 0");
    pg.switch_and_archive();
    backup(&scratch, &pg);
    pg.switch_and_archive();
    let second_rows = pg.snapshot();
    drop(pg);
    assert_ne!(first_rows, second_rows);
    let ids = list_ids(&scratch);
    assert_eq!(ids.len(), 2, "{ids:?}");
    let now = epochs(&scratch.repo, &data_objects(&scratch.repo));
    for top in ["wal/", "packs/", "backups/"] {
        let new: Vec<_> = now
            .iter()
            .filter(|(k, _)| k.starts_with(top) && !first_objects.contains_key(*k))
            .collect();
        assert!(!new.is_empty(), "nothing new under {top}");
        assert!(
            new.iter().all(|(_, e)| **e == 2),
            "objects written after the rotation not under epoch 2: {new:?}"
        );
    }
    for (key, e) in &first_objects {
        // The first backup's manifest, its packs and the WAL before the rotation are never
        // written again.
        if key.starts_with("packs/") || key.ends_with("/manifest") || key.starts_with("wal/") {
            assert_eq!(
                now.get(key),
                Some(e),
                "{key} changed epoch without --rewrite"
            );
        }
    }
    let restored = restore_full(&scratch, &ids[0], "first-epoch-1", &[]);
    assert_eq!(
        restored.snapshot(),
        first_rows,
        "the epoch-1 backup after rotation"
    );
    drop(restored);
    let restored = restore_full(&scratch, &ids[1], "second-epoch-2", &[]);
    assert_eq!(
        restored.snapshot(),
        second_rows,
        "the epoch-2 backup (sharing epoch-1 packs)"
    );
    drop(restored);

    // --rewrite: epoch 3, and every object is re-sealed under it (leases and the prune state
    // are their owners' to rewrite).
    let resealable = |repo: &Path| -> Vec<PathBuf> {
        sealed_objects(repo)
            .into_iter()
            .filter(|p| {
                let key = key_of(repo, p);
                !key.starts_with("leases/") && !key.starts_with("prune/")
            })
            .collect()
    };
    let objects = resealable(&scratch.repo);
    let out = scratch.lifeline(&["key", "rotate", "--rewrite"], &[]);
    let said = succeeded(&out, "key rotate --rewrite");
    assert!(
        said.contains(&format!(
            "data key epoch 3: {} objects re-sealed, 0 already under it",
            objects.len()
        )),
        "expected {} objects re-sealed: {said}",
        objects.len()
    );
    let after = epochs(&scratch.repo, &resealable(&scratch.repo));
    let behind: Vec<_> = after.iter().filter(|(_, e)| **e != 3).collect();
    assert!(behind.is_empty(), "objects not under epoch 3: {behind:?}");
    assert_eq!(
        after.len(),
        objects.len(),
        "the rewrite added or lost objects"
    );
    let keys_json = std::fs::read(scratch.repo.join("keys.json")).expect("keys.json");
    assert!(keys_json.starts_with(b"{"), "keys.json was sealed");
    let out = scratch.lifeline(&["key", "list"], &[]);
    assert!(
        succeeded(&out, "key list").contains("data key epoch 3"),
        "{}",
        text(&out)
    );

    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    succeeded(&out, "verify --read-data after the rewrite");
    let restored = restore_full(&scratch, &ids[0], "first-epoch-3", &[]);
    assert_eq!(
        restored.snapshot(),
        first_rows,
        "the first backup after the rewrite"
    );
    drop(restored);
    let restored = restore_full(&scratch, &ids[1], "second-epoch-3", &[]);
    assert_eq!(
        restored.snapshot(),
        second_rows,
        "the second backup after the rewrite"
    );
    drop(restored);

    // Nothing is left to re-seal, and no new epoch is started.
    let out = scratch.lifeline(&["key", "rotate", "--rewrite", "--resume"], &[]);
    let said = succeeded(&out, "key rotate --rewrite --resume");
    assert!(
        said.contains("data key epoch 3: 0 objects re-sealed"),
        "{said}"
    );
    let out = scratch.lifeline(&["key", "list"], &[]);
    assert!(
        succeeded(&out, "key list").contains("data key epoch 3"),
        "{}",
        text(&out)
    );
    let out = scratch.lifeline(&["key", "rotate", "--resume"], &[]);
    refused(&out, "--resume without --rewrite");

    // After a leak: a new master key drops every other slot, and the old passphrase opens
    // nothing; the one in use restores every row.
    let leaked = secret_file(&scratch, "leaked-passphrase", "a passphrase that leaked");
    let leaked_arg = leaked.to_string_lossy().into_owned();
    let out = scratch.lifeline(&["key", "add", "--new-passphrase-file", &leaked_arg], &[]);
    succeeded(&out, "key add");
    let out = scratch.lifeline(&["key", "rotate", "--new-master", "--rewrite"], &[]);
    let said = succeeded(&out, "key rotate --new-master --rewrite");
    assert!(
        said.contains("were dropped") && said.contains("data key epoch 4"),
        "{said}"
    );
    let out = scratch.lifeline(
        &["verify"],
        &[("LIFELINE_PASSPHRASE_FILE", leaked_arg.as_str())],
    );
    assert!(refused(&out, "the dropped passphrase").contains("wrong passphrase"));
    let restored = restore_full(&scratch, &ids[1], "second-new-master", &[]);
    assert_eq!(
        restored.snapshot(),
        second_rows,
        "the second backup under a new master key"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Drill and prune in an encrypted repository
// ---------------------------------------------------------------------------------------------

#[test]
fn a_drill_verifies_an_encrypted_backup() {
    let scratch = Scratch::new().encrypted(PASSPHRASE);
    let drills = postgres_dir(&scratch, "drills", 0o755);
    configure(&scratch, &format!("drill-dir = \"{}\"", drills.display()));
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    backup(&scratch, &pg);
    pg.psql("INSERT INTO orders (account, amount) SELECT 1, g FROM generate_series(1, 100) g");
    pg.switch_and_archive();
    let db_env = pg.db_env();
    let env = env_refs(&db_env);

    let out = scratch.lifeline(&["drill"], &env);
    let said = succeeded(&out, "drill");
    assert!(said.contains("VERIFIED"), "{said}");
    assert!(
        said.contains("[PASS] table public.orders: 20000 rows"),
        "{said}"
    );
    assert!(
        said.contains("[PASS] table public.accounts: 5000 rows"),
        "{said}"
    );
    let out = scratch.lifeline(&["list", "--json"], &[]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json");
    assert_eq!(listed[0]["restorability"], "VERIFIED", "{listed}");
    // The .metadata that records it is still sealed.
    let id = listed[0]["backup_id"].as_str().expect("id");
    let metadata = scratch.repo.join(format!("backups/{id}/{id}.metadata"));
    let bytes = std::fs::read(&metadata).expect("metadata");
    assert!(
        bytes.starts_with(b"LLOE"),
        "the drill wrote .metadata in clear"
    );
    assert_eq!(
        std::fs::read_dir(&drills).expect("ls").count(),
        0,
        "the drill left its scratch behind"
    );

    // Damage a pack: the drill fails and says so.
    let packs = files_under(&scratch.repo.join("packs"));
    let pack = packs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).expect("stat").len())
        .expect("a pack");
    let original = flip(pack, middle(pack));
    let out = scratch.lifeline(&["drill"], &env);
    let said = refused(&out, "drill of a damaged backup");
    assert!(said.contains("FAILED"), "{said}");
    std::fs::write(pack, original).expect("put back");
}

#[test]
fn prune_with_repacking_leaves_the_kept_encrypted_backup_restorable() {
    let scratch = Scratch::new().encrypted(PASSPHRASE);
    configure(
        &scratch,
        "keep-daily = 1\nkeep-weekly = 1\nkeep-monthly = 1\nwal-days = 0",
    );
    let env = [("LIFELINE_PRUNE_GRACE_SECONDS", "0")];
    let pg = Pg::running(&scratch, "primary");
    seed(&pg);
    pg.psql("CREATE TABLE bulk AS SELECT g AS id, md5(g::text) AS a, md5((g * 7)::text) AS b FROM generate_series(1, 150000) g");
    pg.switch_and_archive();
    backup(&scratch, &pg);
    // A new epoch between the backups: repacking reads epoch-1 packs and writes epoch-2 ones.
    let out = scratch.lifeline(&["key", "rotate"], &[]);
    succeeded(&out, "key rotate");
    pg.psql("VACUUM FULL bulk");
    pg.psql("UPDATE bulk SET a = md5(a)");
    pg.psql("VACUUM FULL bulk");
    pg.switch_and_archive();
    backup(&scratch, &pg);
    let expected = pg.snapshot();
    drop(pg);
    let ids = list_ids(&scratch);
    assert_eq!(ids.len(), 2, "{ids:?}");
    let packs_before: Vec<String> = files_under(&scratch.repo.join("packs"))
        .iter()
        .map(|p| key_of(&scratch.repo, p))
        .collect();

    let out = scratch.lifeline(&["prune"], &env);
    let said = succeeded(&out, "prune");
    assert!(said.contains("pruned: 1 backups"), "{said}");
    assert!(
        !said.contains(" 0 sparse packs repacked"),
        "nothing was repacked: {said}"
    );
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    succeeded(&out, "verify --read-data after repacking");
    let out = scratch.lifeline(&["prune"], &env);
    let said = succeeded(&out, "second prune");
    assert!(
        !said.contains(", 0 packs deleted"),
        "the old packs stayed: {said}"
    );
    assert_eq!(list_ids(&scratch), vec![ids[1].clone()]);

    // The repacked packs are sealed under the current epoch.
    let packs_after = files_under(&scratch.repo.join("packs"));
    let new: Vec<_> = packs_after
        .iter()
        .filter(|p| !packs_before.contains(&key_of(&scratch.repo, p)))
        .collect();
    assert!(!new.is_empty(), "no repacked pack: {packs_after:?}");
    for pack in &new {
        assert_eq!(
            epoch(pack),
            2,
            "{} was repacked under an old epoch",
            pack.display()
        );
    }
    let out = scratch.lifeline(&["verify", "--read-data"], &[]);
    succeeded(&out, "verify --read-data after the sweep");

    let restored = restore_full(&scratch, "latest", "restored", &[]);
    assert_eq!(
        restored.snapshot(),
        expected,
        "rows after an encrypted repack"
    );
}
