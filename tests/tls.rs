//! PostgreSQL over TLS: a server that refuses every connection without TLS, with a certificate
//! from its own CA. lifeline's own connections (backups, check, status) and the client programs
//! it runs (pg_dump) speak TLS as `db-sslmode` / `PGSSLMODE` say, check the certificate as
//! libpq would, and refuse a server whose certificate does not check out.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Pg, Scratch, code, env_refs, text};

const PASSWORD: &str = "tls-test-pw-4c1e";

/// `openssl ARGS` in `dir` (no argument holds a space).
fn openssl(dir: &Path, args: &str) {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
}

/// A CA (`NAME.crt`, `NAME.key`) in `dir`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &format!(
            "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
             -subj /CN={name} -addext basicConstraints=critical,CA:TRUE \
             -addext keyUsage=critical,keyCertSign,cRLSign -keyout {name}.key -out {name}.crt"
        ),
    );
    dir.join(format!("{name}.crt"))
}

/// `server.crt` and `server.key` for `localhost` only (no IP address in it), signed by `ca`,
/// put in the data directory where PostgreSQL looks for them.
fn make_server_certificate(dir: &Path, ca: &str, data: &Path) {
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write extensions");
    openssl(
        dir,
        "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost \
         -keyout server.key -out server.csr",
    );
    openssl(
        dir,
        &format!(
            "x509 -req -in server.csr -CA {ca}.crt -CAkey {ca}.key -CAcreateserial -days 2 \
             -extfile server.ext -out server.crt"
        ),
    );
    for name in ["server.crt", "server.key"] {
        let to = data.join(name);
        std::fs::copy(dir.join(name), &to).expect("copy certificate");
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        common::chown_postgres(&to);
    }
}

/// A running cluster that accepts TCP connections with TLS only: `app` (a superuser) with a
/// SCRAM password, the test's own psql as `postgres`.
fn tls_only_server(scratch: &Scratch, certs: &Path) -> Pg {
    let pg = Pg::init(scratch, "primary");
    make_server_certificate(certs, "ca", &pg.data);
    let conf = pg.data.join("postgresql.conf");
    let mut settings = std::fs::read_to_string(&conf).expect("read conf");
    settings.push_str("ssl = on\npassword_encryption = 'scram-sha-256'\n");
    std::fs::write(&conf, settings).expect("write conf");
    std::fs::write(
        pg.data.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl all postgres 127.0.0.1/32 trust\n\
         hostssl all app 127.0.0.1/32 scram-sha-256\n\
         hostnossl all all 0.0.0.0/0 reject\n",
    )
    .expect("write pg_hba.conf");
    pg.start();
    pg.psql(&format!(
        "CREATE ROLE app LOGIN SUPERUSER PASSWORD '{PASSWORD}'"
    ));
    pg
}

fn app_env(pg: &Pg, host: &str) -> Vec<(String, String)> {
    vec![
        ("DB_HOST".into(), host.into()),
        ("DB_PORT".into(), pg.port.to_string()),
        ("DB_USER".into(), "app".into()),
        ("DB_PASSWORD".into(), PASSWORD.into()),
        ("DB_NAME".into(), "postgres".into()),
    ]
}

fn with(mut env: Vec<(String, String)>, more: &[(&str, &str)]) -> Vec<(String, String)> {
    env.extend(more.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn backups(scratch: &Scratch) -> usize {
    let out = scratch.lifeline(&["list", "--json"], &[]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list --json");
    list.as_array().map_or(0, Vec::len)
}

#[test]
fn a_tls_only_server_is_backed_up_and_restored_and_a_wrong_certificate_is_refused() {
    let scratch = Scratch::new();
    let certs = scratch.path("certs");
    std::fs::create_dir(&certs).expect("certs dir");
    let ca = make_ca(&certs, "ca");
    let rogue_ca = make_ca(&certs, "rogue");
    for file in [&ca, &rogue_ca] {
        common::chown_postgres(file);
    }
    let pg = tls_only_server(&scratch, &certs);
    common::seed(&pg);
    let ca_text = ca.display().to_string();
    let verified = with(
        app_env(&pg, "localhost"),
        &[("DB_SSLMODE", "verify-full"), ("DB_SSLROOTCERT", &ca_text)],
    );

    // Without TLS the server refuses, and lifeline says so instead of backing up anything.
    let out = scratch.lifeline(
        &["backup", "postgres"],
        &env_refs(&with(
            app_env(&pg, "localhost"),
            &[("DB_SSLMODE", "disable")],
        )),
    );
    assert_ne!(
        code(&out),
        0,
        "a plain-text backup of a TLS-only server: {}",
        text(&out)
    );
    assert!(text(&out).contains("no encryption"), "{}", text(&out));

    // A certificate from another CA, and a name the certificate does not carry, are refused.
    let rogue = rogue_ca.display().to_string();
    let out = scratch.lifeline(
        &["backup", "postgres"],
        &env_refs(&with(
            app_env(&pg, "localhost"),
            &[("DB_SSLMODE", "verify-full"), ("DB_SSLROOTCERT", &rogue)],
        )),
    );
    assert_ne!(code(&out), 0, "another CA's trust accepted: {}", text(&out));
    assert!(
        text(&out).to_lowercase().contains("certificate"),
        "{}",
        text(&out)
    );
    let by_address = with(
        app_env(&pg, "127.0.0.1"),
        &[("DB_SSLMODE", "verify-full"), ("DB_SSLROOTCERT", &ca_text)],
    );
    let out = scratch.lifeline(&["backup", "postgres"], &env_refs(&by_address));
    assert_ne!(
        code(&out),
        0,
        "a name not in the certificate: {}",
        text(&out)
    );
    assert_eq!(
        backups(&scratch),
        0,
        "a refused connection still stored a backup"
    );

    // verify-ca checks the chain only; require without a root certificate trusts whoever
    // answers (HOME has no ~/.postgresql/root.crt), as libpq does.
    let chain_only = with(
        app_env(&pg, "127.0.0.1"),
        &[("DB_SSLMODE", "verify-ca"), ("DB_SSLROOTCERT", &ca_text)],
    );
    let out = scratch.lifeline(&["check"], &env_refs(&chain_only));
    assert!(text(&out).contains("[PASS] PostgreSQL"), "{}", text(&out));
    let home = scratch.dir.path().display().to_string();
    let out = scratch.lifeline(
        &["status", "--json"],
        &env_refs(&with(
            app_env(&pg, "127.0.0.1"),
            &[("DB_SSLMODE", "require"), ("HOME", &home)],
        )),
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    assert!(!text(&out).contains("Connection refused"), "{}", text(&out));
    assert_eq!(status["schema"], 1, "{}", text(&out));

    // The real thing: base backup and dump over verified TLS, and check passes.
    let out = scratch.lifeline(&["backup", "postgres"], &env_refs(&verified));
    assert_eq!(code(&out), 0, "backup over verify-full: {}", text(&out));
    let out = scratch.lifeline(
        &["backup", "postgres", "--kind", "dump"],
        &env_refs(&verified),
    );
    assert_eq!(code(&out), 0, "pg_dump over verify-full: {}", text(&out));
    let out = scratch.lifeline(&["check"], &env_refs(&verified));
    let said = text(&out);
    for line in [
        "[PASS] PostgreSQL reachable",
        "TLSv1.3 (db-sslmode verify-full)",
        "[PASS] WAL reaches the repository",
    ] {
        assert!(said.contains(line), "{line} missing in:\n{said}");
    }
    assert!(!said.contains(PASSWORD), "the password was printed: {said}");

    // libpq's own variables do the same when DB_SSLMODE is not set.
    let out = scratch.lifeline(
        &["backup", "postgres"],
        &env_refs(&with(
            app_env(&pg, "localhost"),
            &[("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", &ca_text)],
        )),
    );
    assert_eq!(code(&out), 0, "backup with PGSSLMODE: {}", text(&out));
    assert_eq!(backups(&scratch), 3);

    // What was backed up over TLS is what comes back, row for row.
    let before = pg.snapshot();
    let target = scratch.path("restored");
    let out = scratch.restore(&["--type", "full", "--from", "latest"], &target);
    assert_eq!(code(&out), 0, "restore: {}", text(&out));
    let restored = Pg::recover(&scratch, target);
    assert_eq!(restored.snapshot(), before);
}

#[test]
fn an_unknown_sslmode_is_refused_before_anything_runs() {
    let scratch = Scratch::new();
    let out = scratch.lifeline(&["status"], &[("DB_SSLMODE", "verify_full")]);
    assert_eq!(
        code(&out),
        2,
        "a setting's error is a usage error: {}",
        text(&out)
    );
    let said = text(&out);
    assert!(
        said.contains("verify_full") && said.contains("verify-full"),
        "{said}"
    );
}
